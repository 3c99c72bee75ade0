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

import json
import logging
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback, ExperimentAnalysis

from study.config import StudyError
from study.run.checkpoint import STATE_FILE, start_again_marker
from study.run.storage import ExperimentStorage, checkpoint_index

logger = logging.getLogger(__name__)


class _SavedState(ExperimentAnalysis):
    """Tune's reader of a saved experiment state, without downloading every trial's results
    (only the trials and their checkpoints are needed here)."""

    def _fetch_trial_dataframes(self) -> dict:
        return {}


def saved_trials(storage: ExperimentStorage) -> list[Any]:
    """Tune's trials as the experiment state saved in storage records them (none before the first save)."""
    fs, _ = storage.filesystem()
    try:
        return _SavedState(storage.experiment_path, storage_filesystem=fs).trials
    except (ValueError, OSError):
        return []


def unfinished_trials(storage: ExperimentStorage) -> list[str]:
    """Trials the saved state records as neither finished nor failed (pending, running,
    paused): what an interrupted ``Tuner.fit`` leaves. Read from the state's JSON alone
    (Tune's reader unpickles every trial: seconds at the end of every study)."""
    path = storage.newest_experiment_state()
    if path is None:
        return []
    try:
        trials = [json.loads(trial) for trial, _ in json.loads(storage.read_bytes(path))["trial_data"]]
    except (ValueError, KeyError, TypeError):
        return []  # cut off: refused by name when the study is resumed
    return [t["trial_id"] for t in trials if t.get("status") not in ("TERMINATED", "ERROR")]


def prune_checkpoints(storage: ExperimentStorage) -> int:
    """Deletes every checkpoint older than the one the saved state names for its trial;
    returns how many were deleted."""
    deleted = 0
    for trial in saved_trials(storage):
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
    for trial in saved_trials(storage):
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


@dataclass
class Repairs:
    """What ``repair_saved_state`` changed in Tune's saved state before a restore."""

    stale_decisions: dict[str, str] = field(default_factory=dict)  # trial id -> STOP, PAUSE, ...
    reopened: list[str] = field(default_factory=list)  # TERMINATED short of its epochs


def repair_saved_state(storage: ExperimentStorage, max_epochs: int) -> Repairs:
    """Edits the experiment state ``Tuner.restore`` reads so that no trial is lost to it.

    - Tune caches a decision for a trial whose checkpoint is being saved, and pickles that
      cache with its state (Ray 2.60, ``TuneController._schedule_trial_stop``): a worker that
      dies after a result with a checkpoint but before the save returned leaves a STOP that,
      restored, ends the rerun trial after one epoch, TERMINATED and short. The caches
      (``_cached_trial_decisions``, ``_queued_trial_decisions``) are emptied.
    - A trial already recorded as TERMINATED short of ``max_epochs`` (and not diverged) is
      marked unfinished, so Tune resumes it from its checkpoint instead of skipping it.

    A state that does not parse (cut off mid-write by a copy that was not ours) is a
    ``StudyError`` naming the file: Tune would otherwise start the whole experiment again.
    """
    path = storage.newest_experiment_state()
    if path is None:
        return Repairs()
    text = storage.read_bytes(path)
    try:
        state = json.loads(text)
        trials = [[json.loads(part) for part in pair] for pair in state["trial_data"]]
    except (ValueError, KeyError, TypeError) as exc:
        raise StudyError(
            f"Tune's experiment state {path} is cut off or damaged ({type(exc).__name__}: {exc}); "
            f"restore that file from a backup (Tune would start the study over without it)"
        ) from None
    repairs = Repairs()
    runner = state["runner_data"]
    for cache in ("_cached_trial_decisions", "_queued_trial_decisions"):
        repairs.stale_decisions |= {k: str(v) for k, v in (runner.get(cache) or {}).items()}
        runner[cache] = {}
    for (trial, metadata), pair in zip(trials, state["trial_data"], strict=True):
        last = metadata.get("last_result") or {}
        short = int(last.get("epoch", 0)) < max_epochs and last.get("diverged", 0.0) != 1.0
        if trial.get("status") == "TERMINATED" and short:
            trial["status"] = "PENDING"
            pair[0] = json.dumps(trial)
            repairs.reopened.append(str(trial["trial_id"]))
    if repairs.stale_decisions or repairs.reopened:
        storage.replace_file(path, json.dumps(state).encode())
    return repairs


class CheckpointPruner(Callback):
    """Prunes checkpoints (``prune_checkpoints``) on a thread of its own, after a trial saves:
    Tune's event loop never waits on it. At most one pass at a time, and at most every
    ``every_s`` seconds or 19 times the last pass's duration, whichever is longer (a pass
    reads the whole saved state and lists every trial's folder, which grows with the
    study: as Tune paces its own state saves, at most 5% of the time goes to it)."""

    def __init__(self, storage: ExperimentStorage, every_s: float = 20.0) -> None:
        self.storage = storage
        self.every_s = every_s
        self._last = time.monotonic()
        self._period = every_s
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint-pruner")
        self._pass: Future[None] | None = None

    def __reduce__(self) -> tuple[Any, ...]:
        # Tune pickles its callbacks into the experiment's saved state. Unpickled on resume,
        # this is the pruner of the run being driven then: a copied or moved run directory,
        # or one given new storage, prunes its own experiment, not the one pickled here.
        return (_pruner_of_driven_run, (self.every_s,))

    def on_trial_save(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        if time.monotonic() - self._last < self._period or (self._pass and not self._pass.done()):
            return
        self._last = time.monotonic()
        self._pass = self._pool.submit(self._prune)

    def on_experiment_end(self, trials: list[Any], **info: Any) -> None:
        self.wait()

    def wait(self) -> None:
        """Waits for the pass in flight, if any."""
        if self._pass is not None:
            self._pass.result()

    def _prune(self) -> None:
        started = time.monotonic()
        try:
            prune_checkpoints(self.storage)
        except OSError as exc:  # storage hiccup: try again next time, never stop the study
            logger.warning("pruning old checkpoints failed, will retry: %s", exc)
        self._period = max(self.every_s, 19 * (time.monotonic() - started))


def _pruner_of_driven_run(every_s: float) -> CheckpointPruner:
    from study.run.rundir import RunDir

    return CheckpointPruner(RunDir.driven().storage, every_s)
