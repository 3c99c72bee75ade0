"""The run directory: every path and format of what the driver writes.

``RunDir`` is the one owner of the run directory's layout (configuration, baselines,
results table, report, recommended model, Optuna storage) and opens the experiment
storage (``study/storage.py``) where Tune keeps per-trial results and checkpoints:
``RUN/ray_results`` by default, or a shared path or bucket. Launch, report, replay and
resume open a run through it; nothing else composes its paths.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study.config import StudyConfig, config_from_toml
from study.errors import StudyError
from study.results import atomic_write
from study.storage import STATE_FILE, ExperimentStorage


@dataclass(frozen=True)
class RunDir:
    """A study's run directory: paths and formats of everything the driver writes."""

    path: Path
    storage_root: str = ""  # empty: <path>/ray_results

    @classmethod
    def of(cls, config: StudyConfig) -> RunDir:
        return cls(Path(config.run_dir), config.storage)

    @classmethod
    def open(cls, path: Path) -> tuple[RunDir, StudyConfig]:
        """An existing run directory and its saved configuration (``run_dir`` set to ``path``)."""
        config_file = Path(path) / "config.toml"
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
    def ray_temp_dir(self) -> Path:
        return self.path.resolve() / "ray"

    @property
    def storage(self) -> ExperimentStorage:
        root = self.storage_root or str(self.path.resolve() / "ray_results")
        return ExperimentStorage(root, self.path.resolve().name)

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
        atomic_write(self.config_file, lambda path: path.write_text(config.to_toml()))

    # Baselines ---------------------------------------------------------------------------
    def record_baseline(self, name: str, state: dict[str, Any], metrics: dict[str, float]) -> None:
        """Writes ``baseline/<name>.pt`` and adds ``name``'s metrics to ``baseline/metrics.json``."""
        import torch

        self.baseline_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(self.baseline_model(name), lambda p: torch.save(state, p))
        table = self.baseline_metrics()
        table[name] = metrics
        atomic_write(self.baseline_metrics_file, lambda p: p.write_text(json.dumps(table, indent=1)))

    def baseline_metrics(self) -> dict[str, dict[str, float]]:
        """``{"original": {...}, "retrain": {...}}`` as far as written."""
        path = self.baseline_metrics_file
        return json.loads(path.read_text()) if path.is_file() else {}

    def load_baseline(self, name: str) -> dict[str, Any] | None:
        """The state dict of baseline ``name``, or ``None`` when not saved yet."""
        import torch

        path = self.baseline_model(name)
        return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None

    # Results -----------------------------------------------------------------------------
    def write_trials(self, table: pd.DataFrame) -> None:
        atomic_write(self.trials_file, lambda p: table.to_parquet(p, index=False))

    def read_trials(self) -> pd.DataFrame | None:
        return pd.read_parquet(self.trials_file) if self.trials_file.is_file() else None

    def write_seed_runs(self, table: pd.DataFrame) -> None:
        atomic_write(self.seeds_file, lambda p: table.to_parquet(p, index=False))

    def read_seed_runs(self) -> pd.DataFrame | None:
        return pd.read_parquet(self.seeds_file) if self.seeds_file.is_file() else None

    def write_bn_mode_runs(self, table: pd.DataFrame) -> None:
        atomic_write(self.bn_modes_file, lambda p: table.to_parquet(p, index=False))

    def read_bn_mode_runs(self) -> pd.DataFrame | None:
        return pd.read_parquet(self.bn_modes_file) if self.bn_modes_file.is_file() else None

    def write_pareto(self, table: pd.DataFrame) -> None:
        atomic_write(self.pareto_file, lambda p: table.to_parquet(p, index=False))

    # The recommended model ---------------------------------------------------------------------
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
                    return torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)[
                        "model"
                    ]
        return None
