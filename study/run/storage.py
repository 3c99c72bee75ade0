"""Where Tune keeps a study's experiment (per-trial results and checkpoints), through ``pyarrow.fs``.

``RUN/ray_results`` by default, or a shared path or ``s3://``/``gs://`` URI that every node
of a cluster can reach; a folder is written through ``WholeFiles``, so that a kill never
leaves a file Tune wrote cut off. ``RunDir.storage`` (``study/run/rundir.py``) opens it; nothing else
composes these paths: a trial's folder, its id, its checkpoint folders.
"""

from __future__ import annotations

import functools
import io
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs

from study.config import StudyError

TRIAL_PREFIX = "trial_"
CHECKPOINT_PREFIX = "checkpoint_"  # inside each: a ``TrialCheckpoint`` (study/run/checkpoint.py)
EXPERIMENT_STATE_PREFIX = "experiment_state-"  # Tune's saved state, one file per session
OWNER_RECORD = "study-owner.json"  # which run directory the experiment belongs to (study/run/lock.py)


class _Whole(io.RawIOBase):
    """A file written under a temporary name beside ``path`` and renamed to it on close."""

    def __init__(self, path: str) -> None:
        self.path, self.partial = path, f"{path}.partial-{uuid.uuid4().hex}"
        self.file = open(self.partial, "wb")  # noqa: SIM115 (closed, then renamed, in close)

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        return self.file.write(data)

    def close(self) -> None:
        if not self.closed:
            self.file.close()
            os.replace(self.partial, self.path)
        super().close()


class WholeFiles(pyarrow.fs.FileSystemHandler):
    """The local file system, except that every file Tune writes lands whole.

    pyarrow's local copy writes into the destination file itself, so a driver killed while
    Tune uploads its experiment state would leave that file cut off, and Tune then starts
    the whole experiment again. Here each written file is renamed into place once complete
    (atomic on a local disk and on NFS): a kill leaves the previous version.
    """

    def __init__(self) -> None:
        self.local = pyarrow.fs.LocalFileSystem()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WholeFiles)

    def __ne__(self, other: object) -> bool:
        return not self == other

    def get_type_name(self) -> str:
        return "whole-files-local"

    def normalize_path(self, path: str) -> str:
        return self.local.normalize_path(path)

    def get_file_info(self, paths: list[str]) -> list[pyarrow.fs.FileInfo]:
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector: pyarrow.fs.FileSelector) -> list[pyarrow.fs.FileInfo]:
        return self.local.get_file_info(selector)

    def create_dir(self, path: str, recursive: bool) -> None:
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path: str) -> None:
        self.local.delete_dir(path)

    def delete_dir_contents(self, path: str, missing_dir_ok: bool = False) -> None:
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self) -> None:
        raise OSError("refusing to delete the contents of the root directory")

    def delete_file(self, path: str) -> None:
        self.local.delete_file(path)

    def move(self, src: str, dest: str) -> None:
        self.local.move(src, dest)

    def copy_file(self, src: str, dest: str) -> None:
        self.local.copy_file(src, dest)

    def open_input_stream(self, path: str) -> pyarrow.NativeFile:
        return self.local.open_input_stream(path)

    def open_input_file(self, path: str) -> pyarrow.NativeFile:
        return self.local.open_input_file(path)

    def open_output_stream(self, path: str, metadata: Any = None) -> pyarrow.NativeFile:
        return pyarrow.PythonFile(_Whole(path), mode="w")

    def open_append_stream(self, path: str, metadata: Any = None) -> pyarrow.NativeFile:
        return self.local.open_append_stream(path)


@functools.lru_cache(maxsize=8)
def _open_filesystem(root: str) -> tuple[pyarrow.fs.FileSystem, str]:
    if "://" not in root:
        return pyarrow.fs.PyFileSystem(WholeFiles()), str(Path(root).resolve())
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

    @property
    def owner_record_path(self) -> str:
        return f"{self.experiment_path}/{OWNER_RECORD}"

    def read_owner_record(self) -> bytes | None:
        """``study-owner.json``'s bytes, or ``None`` where the experiment has none."""
        fs, _ = self.filesystem()
        if fs.get_file_info(self.owner_record_path).type == pyarrow.fs.FileType.NotFound:
            return None
        return self.read_bytes(self.owner_record_path)

    def copy_experiment_to(self, other: ExperimentStorage) -> None:
        """Copies the whole experiment to ``other`` (which must not hold one of that name),
        for a copied run directory that resumes with its own storage."""
        if other.experiment_exists():
            raise StudyError(
                f"storage {other.root} already holds an experiment named {other.name}; choose another --storage"
            )
        source_fs, _ = self.filesystem()
        target_fs, _ = other.filesystem()
        target_fs.create_dir(other.experiment_path, recursive=True)
        pyarrow.fs.copy_files(
            self.experiment_path,
            other.experiment_path,
            source_filesystem=source_fs,
            destination_filesystem=target_fs,
        )

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

    def newest_experiment_state(self) -> str | None:
        """The path of the experiment state Tune restores from (the newest by name), if any."""
        fs, _ = self.filesystem()
        selector = pyarrow.fs.FileSelector(self.experiment_path, allow_not_found=True)
        names = [
            info.path
            for info in fs.get_file_info(selector)
            if info.base_name.startswith(EXPERIMENT_STATE_PREFIX) and info.base_name.endswith(".json")
        ]
        return max(names, key=lambda path: Path(path).name, default=None)

    def read_bytes(self, path: str) -> bytes:
        fs, _ = self.filesystem()
        with fs.open_input_stream(path) as stream:
            return stream.readall()

    def replace_file(self, path: str, data: bytes) -> None:
        """Writes ``data`` to ``path`` whole: a kill never leaves part of it (on a bucket one
        upload is atomic; a folder is opened through ``WholeFiles``)."""
        fs, _ = self.filesystem()
        with fs.open_output_stream(path) as stream:
            stream.write(data)

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
