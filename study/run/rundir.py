"""The run directory: every path and format of what a study writes.

``RunDir`` is the one owner of the run directory's layout (configuration, baselines,
results tables, report, recommended model, Optuna storage, deletion requests) and opens
the experiment storage (``study/run/storage.py``) where Tune keeps per-trial results and
checkpoints: ``RUN/ray_results`` by default, or a shared path or bucket. Launch, report,
replay, forget and resume open a run through it; nothing else composes its paths.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study.config import StudyConfig, StudyError, config_from_toml, config_to_toml
from study.run.checkpoint import TrialCheckpoint
from study.run.storage import ExperimentStorage


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Calls ``write(temporary_path)``, then renames it to ``path``: a crash never leaves a
    truncated ``path``, and a failed write leaves the previous file as it was."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


@dataclass(frozen=True)
class DeletionOutputs:
    """What ``python -m study.forget`` writes for one request: the audit record (JSON and a
    page) and, when the verdict lets it, the unlearned model in MedicalNet's format."""

    folder: Path

    @property
    def audit_json(self) -> Path:
        return self.folder / "audit.json"

    @property
    def audit_html(self) -> Path:
        return self.folder / "audit.html"

    @property
    def model(self) -> Path:
        return self.folder / "unlearned.pt"

    @staticmethod
    def model_bytes(state: dict[str, Any]) -> bytes:
        """``unlearned.pt``'s bytes: MedicalNet's ``{"state_dict": ...}`` layout."""
        import torch

        buffer = io.BytesIO()
        torch.save({"state_dict": state}, buffer)
        return buffer.getvalue()

    def write(self, record: dict[str, Any], page: str, model: bytes | None) -> None:
        """The record and its page and, when given, the model's bytes; each file atomically.
        Without a model, an earlier run's is removed: it is not this request's answer."""
        self.folder.mkdir(parents=True, exist_ok=True)
        if model is None:
            self.model.unlink(missing_ok=True)
        else:
            atomic_write(self.model, lambda p: Path(p).write_bytes(model))
        atomic_write(self.audit_json, lambda p: Path(p).write_text(json.dumps(record, indent=1, default=str)))
        atomic_write(self.audit_html, lambda p: Path(p).write_text(page))


@dataclass(frozen=True)
class RunDir:
    """A study's run directory: paths and formats of everything the study writes."""

    path: Path
    storage_root: str = ""  # empty: <path>/ray_results

    @classmethod
    def of(cls, config: StudyConfig) -> RunDir:
        return cls(Path(config.run_dir), config.storage)

    @classmethod
    def open(cls, path: Path) -> tuple[RunDir, StudyConfig]:
        """An existing run directory and its saved configuration (``run_dir`` set to ``path``)."""
        config_file = cls(Path(path)).config_file
        if not config_file.is_file():
            raise StudyError(f"{path} is not a study run directory (no config.toml)")
        config = config_from_toml(config_file)
        config.run_dir = str(path)
        return cls.of(config), config

    # Paths ---------------------------------------------------------------------------
    @property
    def config_file(self) -> Path:
        return self.path / "config.toml"

    @property
    def trials_file(self) -> Path:
        return self.path / "trials.parquet"

    @property
    def seeds_file(self) -> Path:
        """The recommended configuration rerun with fresh seeds: one row per (seed, epoch)."""
        return self.path / "seeds.parquet"

    @property
    def bn_modes_file(self) -> Path:
        """The recommended configuration rerun at its seed under every other ``bn_mode``."""
        return self.path / "bn_modes.parquet"

    @property
    def pareto_file(self) -> Path:
        return self.path / "pareto.parquet"

    @property
    def privacy_file(self) -> Path:  # the membership test's figures, a row per (model, subject)
        return self.path / "privacy.parquet"

    @property
    def report_html(self) -> Path:
        return self.path / "report.html"

    @property
    def report_markdown(self) -> Path:
        return self.path / "report.md"

    @property
    def report_files(self) -> Path:
        """Figures of ``report.md``; the Markdown links them by this folder's name."""
        return self.path / "report_files"

    @property
    def recommended_model(self) -> Path:
        """``{"trial_id", "epoch", "model": state_dict}``: the recommended trial's weights."""
        return self.path / "recommended.pt"

    @property
    def baseline_dir(self) -> Path:
        return self.path / "baseline"

    def baseline_model(self, name: str) -> Path:
        return self.baseline_dir / f"{name}.pt"

    @property
    def baseline_metrics_file(self) -> Path:
        return self.baseline_dir / "metrics.json"

    @property
    def optuna_url(self) -> str:
        """The Optuna storage (one study per strategy), for the searcher and ``optuna-dashboard``."""
        return f"sqlite:///{(self.path / 'optuna.db').resolve()}"

    @property
    def storage(self) -> ExperimentStorage:
        root = self.storage_root or str(self.path.resolve() / "ray_results")
        return ExperimentStorage(root, self.path.resolve().name)

    def deletion(self, subjects: list[str], folder: Path | None = None) -> DeletionOutputs:
        """Where a request to forget ``subjects`` is written: ``folder``, by default
        ``forget/<ids joined by ->``."""
        return DeletionOutputs(Path(folder) if folder else self.path / "forget" / "-".join(subjects))

    # Lifecycle -----------------------------------------------------------------------
    @contextmanager
    def creating(self, resuming: bool) -> Iterator[None]:
        """Creates the directory for a new study; removes it again if setup fails inside.

        An existing, non-empty directory is refused unless ``resuming``; one that cannot be
        created (a read-only or impossible path) is a ``StudyError``.
        """
        if resuming:
            yield
            return
        if self.path.exists() and (not self.path.is_dir() or any(self.path.iterdir())):
            raise StudyError(
                f"run directory {self.path} already exists; pass --resume {self.path} to finish "
                "that study, or choose another --run-dir"
            )
        existed = self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StudyError(
                f"run directory {self.path} cannot be created ({exc.strerror}); choose another --run-dir"
            ) from None
        try:
            yield
        except BaseException:
            if not existed:
                shutil.rmtree(self.path, ignore_errors=True)
            raise

    def write_config(self, config: StudyConfig) -> None:
        atomic_write(self.config_file, lambda path: path.write_text(config_to_toml(config)))

    # Baselines ---------------------------------------------------------------------------
    def record_baseline(self, name: str, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Writes ``baseline/<name>.pt`` and adds ``name``'s metrics to ``baseline/metrics.json``."""
        import torch

        self.baseline_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.baseline_model(name), lambda p: torch.save(state, p))
        table = self.baseline_metrics()
        table[name] = metrics
        atomic_write(self.baseline_metrics_file, lambda p: p.write_text(json.dumps(table, indent=1)))

    def add_baseline_fact(self, key: str, value: dict[str, Any]) -> None:
        """Adds ``key`` (the attack's power, where each model trained) to ``baseline/metrics.json``."""
        table = self.baseline_metrics() | {key: value}
        atomic_write(self.baseline_metrics_file, lambda p: p.write_text(json.dumps(table, indent=1)))

    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        """``{"original": {...}, "retrain": {...}, "attack_power": {...}}`` as far as written."""
        path = self.baseline_metrics_file
        return json.loads(path.read_text()) if path.is_file() else {}

    def load_baseline(self, name: str) -> dict[str, Any] | None:
        """The state dict of baseline ``name``, or ``None`` when not saved yet."""
        import torch

        path = self.baseline_model(name)
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    # Results tables ------------------------------------------------------------------------
    def write_trials(self, table: pd.DataFrame) -> None:
        _write_table(self.trials_file, table)

    def read_trials(self) -> pd.DataFrame | None:
        return _read_table(self.trials_file)

    def write_seed_runs(self, table: pd.DataFrame) -> None:
        _write_table(self.seeds_file, table)

    def read_seed_runs(self) -> pd.DataFrame | None:
        return _read_table(self.seeds_file)

    def write_bn_mode_runs(self, table: pd.DataFrame) -> None:
        _write_table(self.bn_modes_file, table)

    def read_bn_mode_runs(self) -> pd.DataFrame | None:
        return _read_table(self.bn_modes_file)

    def write_pareto(self, table: pd.DataFrame) -> None:
        _write_table(self.pareto_file, table)

    def write_privacy(self, table: pd.DataFrame) -> None:
        _write_table(self.privacy_file, table)

    def read_privacy(self) -> pd.DataFrame | None:
        return _read_table(self.privacy_file)

    # Trained models ------------------------------------------------------------------------
    def save_recommended(
        self, trial_id: str, epoch: int, state: dict[str, Any], to: Path | None = None
    ) -> Path:
        """Writes ``{"trial_id", "epoch", "model"}`` to ``recommended.pt`` (or ``to``); returns the path."""
        import torch

        payload = {"trial_id": trial_id, "epoch": int(epoch), "model": state}
        return atomic_write(to or self.recommended_model, lambda p: torch.save(payload, p))

    def load_model_of(self, trial_id: str, epoch: int) -> dict[str, Any] | None:
        """Weights of ``trial_id`` after ``epoch``: from ``recommended.pt`` or a kept checkpoint."""
        import torch

        if self.recommended_model.is_file():
            saved = torch.load(self.recommended_model, map_location="cpu", weights_only=True)
            if saved.get("trial_id") == trial_id and int(saved.get("epoch", -1)) == epoch:
                return saved["model"]
        storage = self.storage
        try:
            checkpoints = storage.checkpoints(storage.trial_path(trial_id))
        except OSError:
            return None
        for _, path in reversed(checkpoints):
            checkpoint = storage.tune_checkpoint(path)
            if checkpoint.get_metadata().get("epoch") == epoch:
                with checkpoint.as_directory() as folder:
                    saved = TrialCheckpoint.load(Path(folder))
                return None if saved is None else saved.model
        return None


def _write_table(path: Path, table: pd.DataFrame) -> None:
    atomic_write(path, lambda p: table.to_parquet(p, index=False))


def _read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_parquet(path) if path.is_file() else None
