"""Where Tune keeps a study's experiment (per-trial results and checkpoints), through ``pyarrow.fs``.

``RUN/ray_results`` by default, or a shared path or ``s3://``/``gs://`` URI that every node
of a cluster can reach. ``RunDir.storage`` (``study/run/rundir.py``) opens it; nothing else
composes these paths: a trial's folder, its id, its checkpoint folders.
"""

from __future__ import annotations

import functools
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs

from study.config import StudyError

TRIAL_PREFIX = "trial_"
CHECKPOINT_PREFIX = "checkpoint_"  # inside each: a ``TrialCheckpoint`` (study/run/checkpoint.py)


@functools.lru_cache(maxsize=8)
def _open_filesystem(root: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" not in root:
        return pyarrow.fs.LocalFileSystem(), str(Path(root).resolve())
    try:
        fs, path = pyarrow.fs.FileSystem.from_uri(root)
    except (pyarrow.ArrowException, ValueError, OSError) as exc:
        raise StudyError(f"storage {root!r} cannot be opened: {exc}") from None
    return fs, path.rstrip("/")


@dataclass(frozen=True)
class ExperimentStorage:
    """Where Tune keeps the study's experiment, opened through ``pyarrow.fs``.

    ``root``: a local (or mounted) folder, or a URI pyarrow understands, options included,
    e.g. ``s3://bucket/studies?endpoint_override=minio:9000&scheme=http``. ``name``: the
    experiment's folder under it (the run directory's name).
    """

    root: str
    name: str

    def filesystem(self) -> tuple[pyarrow.fs.FileSystem, str]:
        """``(pyarrow FileSystem, path of root on it)``; a bad URI is a ``StudyError``."""
        return _open_filesystem(self.root)

    @property
    def experiment_path(self) -> str:
        """The experiment folder's path on ``filesystem()``."""
        return f"{self.filesystem()[1]}/{self.name}"

    def experiment_exists(self) -> bool:
        fs, _ = self.filesystem()
        return fs.get_file_info(self.experiment_path).type != pyarrow.fs.FileType.NotFound

    def check_writable(self) -> None:
        """Writes and deletes a probe file under ``root``; a ``StudyError`` says why it cannot."""
        fs, root = self.filesystem()
        probe = f"{root}/.write-probe-{uuid.uuid4().hex}"
        try:
            fs.create_dir(root, recursive=True)
            with fs.open_output_stream(probe) as stream:
                stream.write(b"ok")
            fs.delete_file(probe)
        except OSError as exc:
            reason = str(exc).strip().splitlines()[0]
            raise StudyError(
                f"storage {self.root} is not writable ({reason}); pass --storage with a folder or "
                "bucket every node of the cluster can write"
            ) from None

    def trial_path(self, trial_id: str) -> str:
        return f"{self.experiment_path}/{trial_dirname(trial_id)}"

    def checkpoints(self, trial_path: str) -> list[tuple[int, str]]:
        """``(index, path)`` of every checkpoint folder under a trial's folder, oldest first."""
        fs, _ = self.filesystem()
        selector = pyarrow.fs.FileSelector(trial_path, allow_not_found=True)
        found = [
            (checkpoint_index(info.path), info.path)
            for info in fs.get_file_info(selector)
            if info.type == pyarrow.fs.FileType.Directory and info.base_name.startswith(CHECKPOINT_PREFIX)
        ]
        return sorted(found)

    def delete(self, path: str) -> None:
        fs, _ = self.filesystem()
        fs.delete_dir(path)

    def tune_checkpoint(self, path: str) -> Any:
        """A ``ray.tune.Checkpoint`` of the folder at ``path`` on this storage."""
        from ray import tune

        return tune.Checkpoint(path, filesystem=self.filesystem()[0])


def trial_dirname(trial_id: str) -> str:
    """A trial's folder in the experiment: its id alone (short paths, no hyperparameter soup)."""
    return f"{TRIAL_PREFIX}{trial_id}"


def trial_id_of(trial_path: str) -> str:
    """The trial id of a trial folder's path (``.../trial_1a2b3c4d`` -> ``1a2b3c4d``)."""
    return Path(trial_path).name.removeprefix(TRIAL_PREFIX)


def checkpoint_index(path: str) -> int:
    """The index Tune gave the checkpoint folder at ``path`` (``.../checkpoint_000006`` -> 6)."""
    return int(Path(path).name.removeprefix(CHECKPOINT_PREFIX))
