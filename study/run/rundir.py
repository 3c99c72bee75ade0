"""The run directory: every path and format of what a study writes.

``RunDir`` is the one owner of the run directory's layout (configuration, baselines,
results tables, report, recommended model, Optuna storage, deletion requests) and opens
the experiment storage (``study/run/storage.py``) where Tune keeps per-trial results and
checkpoints: ``RUN/ray_results`` by default, or a shared path or bucket. Launch, report,
replay, forget and resume open a run through it; nothing else composes its paths.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from study.config import StudyConfig, StudyError, config_from_toml, config_to_toml, first_line
from study.run.checkpoint import TrialCheckpoint
from study.run.columns import description
from study.run.lock import DriverLock, Heartbeat, Holder, OwnerRecord
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


_driven: RunDir | None = None  # set by RunDir.driving


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
        """An existing run directory and its saved configuration (``run_dir`` set to ``path``,
        wherever the directory was copied or moved to)."""
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
    def identity_file(self) -> Path:
        """``{"study_id", "experiment", "finished"}``: which study this is and the name of its
        Tune experiment, fixed when it starts (a copied or renamed run directory keeps both),
        and when it finished."""
        return self.path / "study.json"

    @property
    def lock_file(self) -> Path:
        """Held (``flock``) by the driver running the study; names it (``study/run/lock.py``)."""
        return self.path / "driver.lock"

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
    def official_scores_file(self) -> Path:
        """MRBrainS18's scoring on the native grid: a row per (model, subject, label)."""
        return self.path / "official_scores.parquet"

    @property
    def predictions_dir(self) -> Path:
        """``<model>/<subject>/result.nii.gz``: segmentations on the native grid."""
        return self.path / "predictions"

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
    def optuna_journal(self) -> Path:
        """The Optuna storage (one study per strategy), Optuna's journal file, for the searcher
        and ``optuna-dashboard``; resolved from where the run directory is now."""
        return (self.path / "optuna.journal").resolve()

    def refuse_older_optuna_storage(self) -> None:
        """A ``StudyError`` for a run directory whose searches are in ``optuna.db`` (SQLite, as
        versions before the journal kept them): this version cannot resume them."""
        if (self.path / "optuna.db").is_file() and not self.optuna_journal.is_file():
            raise StudyError(
                f"run directory {self.path} keeps its searches in optuna.db, as earlier versions of "
                "this tool did: finish it with the version that started it, or start a new study"
            )

    @property
    def storage(self) -> ExperimentStorage:
        """Tune's experiment: under the run directory as it is now, unless ``--storage`` put it
        elsewhere; named as when the study started."""
        root = self.storage_root or str(self.path.resolve() / "ray_results")
        return ExperimentStorage(root, self.identity().get("experiment") or self._older_experiment_name())

    def _older_experiment_name(self) -> str:
        """A run directory from before ``study.json``: its experiment is named after it, or is
        the one folder in its own ``ray_results`` (renamed since)."""
        own = [p.name for p in (self.path / "ray_results").glob("*") if p.is_dir()]
        return own[0] if not self.storage_root and len(own) == 1 else self.path.resolve().name

    @property
    def storage_is_outside(self) -> bool:
        """Whether Tune's experiment lies outside the run directory (a bucket, a shared folder),
        where a copy of the run directory would reach the original's experiment."""
        return bool(self.storage_root)

    def deletion(self, subjects: list[str], folder: Path | None = None) -> DeletionOutputs:
        """Where a request to forget ``subjects`` is written: ``folder``, by default
        ``forget/<ids joined by ->``."""
        return DeletionOutputs(Path(folder) if folder else self.path / "forget" / "-".join(subjects))

    # Lifecycle -----------------------------------------------------------------------
    def refuse_existing(self) -> None:
        """A ``StudyError`` where a new study cannot take this folder: a file, or a directory
        holding anything but a lock (a study, or files of the user's); one whose driver is
        still at work (it may have set up a moment ago) is refused naming that driver."""
        if self.path.exists() and not self.path.is_dir():
            raise StudyError(f"run directory {self.path} is a file; choose another --run-dir")
        if self.path.is_dir() and any(p != self.lock_file for p in self.path.iterdir()):
            DriverLock(self.lock_file).refuse_if_held(f"run directory {self.path}")  # its driver, named
            raise StudyError(
                f"run directory {self.path} already exists; pass --resume {self.path} to finish "
                "that study, or choose another --run-dir"
            )

    @contextmanager
    def driving(self, resuming: bool) -> Iterator[Callable[[], None]]:
        """Holds the run directory's lock for the ``with`` block: the one driver of the study.

        A new study's directory is created here; until the block calls the callable it
        yields (setup is done), a failure removes it again. An existing, non-empty directory
        is refused unless ``resuming``; one that cannot be created, or that another driver
        holds (named), is a ``StudyError``.
        """
        created = False
        if not resuming:
            self.refuse_existing()
            try:
                self.path.mkdir(parents=True)
                created = True
            except FileExistsError:
                pass
            except OSError as exc:
                raise StudyError(
                    f"run directory {self.path} cannot be created ({exc.strerror}); choose another --run-dir"
                ) from None
        global _driven
        lock = DriverLock(self.lock_file)
        left = lock.acquire(f"run directory {self.path}")  # a live holder: StudyError, nothing removed
        setting_up = not resuming
        _driven = self
        try:
            if not resuming and any(p != self.lock_file for p in self.path.iterdir()):
                setting_up = created = False  # not ours to remove
                self.refuse_existing()
            if left is not None:
                print(f"the run directory's lock was left by a driver that is gone ({left}): taking it over")

            def done() -> None:
                nonlocal setting_up
                setting_up = False

            yield done
        except BaseException:
            if setting_up and created:
                shutil.rmtree(self.path, ignore_errors=True)
            raise
        finally:
            _driven = None
            lock.release()

    @staticmethod
    def driven() -> RunDir:
        """The run directory this process drives now (inside ``driving``): what objects Tune
        pickled into its saved state (the searcher's storage, callbacks) work on when a study
        resumes, wherever its run directory was when they were pickled."""
        if _driven is None:
            raise RuntimeError("no run directory is being driven: RunDir.driving() comes first")
        return _driven

    def check_experiment_owner(self, claim: bool = False) -> str:
        """Whether this run directory may work on its experiment outside it (``study-owner.json``):
        a note to print (``""``: none), or a ``StudyError``.

        Refused: a live driver of another run directory on it; an experiment of another
        study; a copy of a run directory that still exists on this host (it would share its
        original's experiment: give it its own ``--storage``); a run directory of another
        host, unless ``claim`` (``--storage`` given as saved: it moved here). A run directory
        moved on this host takes its experiment over, saying so.
        """
        if not self.storage_is_outside:
            return ""
        storage = self.storage
        study_id, here = self.identity().get("study_id", ""), str(self.path.resolve())
        host, where = socket.gethostname(), f"storage {storage.root} (experiment {storage.name})"
        saved = storage.read_owner_record()
        record = OwnerRecord.from_bytes(saved) if saved else None
        if record is None:
            return ""
        if record.driver_alive():
            raise StudyError(
                f"{where} is in use by another driver ({record.driver}, run directory "
                f"{record.host}:{record.run_dir}); wait for it to end, or stop it first"
            )
        if study_id and record.study_id and record.study_id != study_id:
            raise StudyError(
                f"{where} holds another study's experiment; resume this one with its own --storage"
            )
        if (record.host, record.run_dir) == (host, here) or claim:
            return ""
        if record.host != host:
            raise StudyError(
                f"{where} belongs to the run directory {record.host}:{record.run_dir}; if this one is a "
                f"copy of it, resume it with its own --storage (the experiment is copied there); if it "
                f"moved here, pass --storage {storage.root} to take the experiment over"
            )
        if RunDir(Path(record.run_dir)).identity().get("study_id") == record.study_id:
            raise StudyError(
                f"this run directory is a copy of {record.run_dir}, whose experiment in {storage.root} "
                "it would share; resume the copy with its own --storage (the experiment is copied "
                "there), or resume the original"
            )
        return f"the run directory moved here from {record.run_dir}: it takes its experiment over"

    @contextmanager
    def owning_experiment(self, claim: bool = False) -> Iterator[None]:
        """For the ``with`` block, records in an experiment outside the run directory that this
        run directory and driver work on it (``study-owner.json``, with a heartbeat), after
        ``check_experiment_owner`` (whose ``StudyError`` it raises, whose note it prints)."""
        if not self.storage_is_outside:
            yield
            return
        if note := self.check_experiment_owner(claim):
            print(note)
        storage, me = self.storage, Holder.me()
        study_id = self.identity().get("study_id", "")

        def write(driver: Holder | None) -> None:
            mine = OwnerRecord(study_id, me.host, str(self.path.resolve()), driver, time.time())
            storage.replace_file(storage.owner_record_path, mine.to_bytes())

        storage.filesystem()[0].create_dir(storage.experiment_path, recursive=True)
        write(me)
        heartbeat = Heartbeat(lambda: write(me))
        try:
            yield
        finally:
            heartbeat.stop()
            with contextlib.suppress(
                OSError
            ):  # storage unreachable: the stale heartbeat says the driver is gone
                write(None)

    def write_config(self, config: StudyConfig) -> None:
        """``config.toml`` without ``run_dir``: the run directory is wherever it is now."""
        saved = dataclasses.replace(config, run_dir="")
        atomic_write(self.config_file, lambda path: path.write_text(config_to_toml(saved)))

    def identity(self) -> dict[str, Any]:
        """``study.json`` (``{}`` for a run directory started before it existed)."""
        try:
            return json.loads(self.identity_file.read_text())
        except (OSError, ValueError):
            return {}

    def write_identity(self) -> None:
        """A new study's ``study.json``: a fresh id, and the experiment named after the directory."""
        identity = {"study_id": uuid.uuid4().hex, "experiment": self.path.resolve().name}
        atomic_write(self.identity_file, lambda p: p.write_text(json.dumps(identity, indent=1)))

    def mark_finished(self, when: str) -> None:
        """Records that the study ran to its end with every trial complete."""
        identity = self.identity() | {"finished": when}
        atomic_write(self.identity_file, lambda p: p.write_text(json.dumps(identity, indent=1)))

    @property
    def finished(self) -> str:
        """When the study finished (ISO time), or ``""``."""
        return str(self.identity().get("finished", ""))

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
        if not path.is_file():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises many types for a cut-off or corrupt file
            raise StudyError(
                f"{path} is damaged ({type(exc).__name__}); --resume the study to train it again"
            ) from None

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

    def write_official_scores(self, table: pd.DataFrame) -> None:
        _write_table(self.official_scores_file, table)

    def read_official_scores(self) -> pd.DataFrame | None:
        return _read_table(self.official_scores_file)

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
    """``table`` as Parquet, each field's meaning in its schema (``description`` metadata)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrow = pa.Table.from_pandas(table, preserve_index=False)
    fields = [
        f.with_metadata({"description": text}) if (text := description(f.name)) else f for f in arrow.schema
    ]
    arrow = arrow.cast(pa.schema(fields, metadata=arrow.schema.metadata))
    atomic_write(path, lambda p: pq.write_table(arrow, p))


def _read_table(path: Path) -> pd.DataFrame | None:
    """The table at ``path``, ``None`` where there is none; a ``StudyError`` for one that
    cannot be read (cut off, or not Parquet)."""
    import pyarrow

    if not path.is_file():
        return None
    try:
        return pd.read_parquet(path)
    except (pyarrow.ArrowException, OSError) as exc:
        raise StudyError(
            f"{path} cannot be read ({first_line(exc)}): the file is damaged; --resume the study to write it again"
        ) from None
