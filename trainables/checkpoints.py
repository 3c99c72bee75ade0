"""Checkpoint retention that survives any kill: delete only what no saved state can name.

Tune's own retention (``CheckpointConfig(num_to_keep=k)``) deletes a trial's oldest
checkpoint the moment a newer one is registered, before the experiment state that names
the newer one is saved (Ray 2.60, ``_ExperimentCheckpointManager``). A driver killed in
between leaves a saved state that points at a deleted checkpoint: the trial can never be
restored and its epochs are lost. So Tune keeps every checkpoint, and ``CheckpointPruner``
deletes a checkpoint only once the experiment state *as saved in storage* names a newer
one of the same trial: every state that ``--resume`` can ever read then finds its
checkpoints.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from ray.tune import Callback, ExperimentAnalysis

from study.run.checkpoint import STATE_FILE, start_again_marker
from study.run.storage import ExperimentStorage, checkpoint_index

logger = logging.getLogger(__name__)


class _SavedState(ExperimentAnalysis):
    """Tune's reader of a saved experiment state, without downloading every trial's results
    (only the trials and their checkpoints are needed here)."""

    def _fetch_trial_dataframes(self) -> dict:
        return {}


def _saved_trials(storage: ExperimentStorage) -> list[Any]:
    """Tune's trials as the experiment state saved in storage records them (none before the first save)."""
    fs, _ = storage.filesystem()
    try:
        return _SavedState(storage.experiment_path, storage_filesystem=fs).trials
    except (ValueError, OSError):
        return []


def prune_checkpoints(storage: ExperimentStorage) -> int:
    """Deletes every checkpoint older than the one the saved state names for its trial;
    returns how many were deleted."""
    deleted = 0
    for trial in _saved_trials(storage):
        if trial.checkpoint is None:
            continue
        keep_from = checkpoint_index(trial.checkpoint.path)
        for index, path in storage.checkpoints(trial.path):
            if index < keep_from:
                storage.delete(path)
                deleted += 1
    return deleted


def replace_lost_checkpoints(storage: ExperimentStorage) -> list[str]:
    """Puts a "start again" checkpoint where an unfinished trial's named checkpoint is gone
    (deleted by hand, a bucket lifecycle rule); returns those trials' ids.

    Tune would fail restoring such a trial; with the marker in place it restores, and the
    trainable (``TrialCheckpoint.load`` finds the marker) reruns it from epoch 1, its rows replacing
    the earlier ones. Older checkpoints are pruned and newer ones may hold epochs the saved
    results lack, so starting over is the one way to lose nothing.
    """
    fs, _ = storage.filesystem()
    replaced = []
    for trial in _saved_trials(storage):
        if trial.status == "TERMINATED" or trial.checkpoint is None:
            continue
        named = checkpoint_index(trial.checkpoint.path)
        if named in {index for index, _ in storage.checkpoints(trial.path)}:
            continue
        folder = f"{trial.path}/{Path(trial.checkpoint.path).name}"
        fs.create_dir(folder)
        with fs.open_output_stream(f"{folder}/{STATE_FILE}") as stream:
            stream.write(start_again_marker())
        replaced.append(trial.trial_id)
    return replaced


class CheckpointPruner(Callback):
    """Prunes checkpoints (``prune_checkpoints``) at most every ``every_s`` seconds, after a trial saves."""

    def __init__(self, storage: ExperimentStorage, every_s: float = 20.0) -> None:
        self.storage = storage
        self.every_s = every_s
        self._last = time.monotonic()

    def on_trial_save(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if time.monotonic() - self._last < self.every_s:
            return
        self._last = time.monotonic()
        try:
            prune_checkpoints(self.storage)
        except OSError as exc:  # storage hiccup: try again next time, never stop the study
            logger.warning("pruning old checkpoints failed, will retry: %s", exc)
