"""What Tune's experiment state keeps of a finished trial.

Tune saves every trial's state at every experiment save, and uploads the whole file to the
run's storage, so its size grows with the finished trials: at 1000 trials, each KB a trial
keeps is a MB more per save. While a trial runs, Tune needs its running statistics; once it
has ended, its status, config, last epoch and checkpoints are what a restore, the study's
results reader and the checkpoint pruner read: every report's figures are in the trial's
``result.json`` (``ResultGrid``'s ``metrics_dataframe``) and in ``trials.parquet``.
``CompactFinishedTrials`` drops the rest as each trial ends.

Tune also uploads its whole staging folder on the driver at every save, the files its JSON
logger writes for every trial (``result.json``, ``params.json``, ``params.pkl``) among them,
so every finished trial's files were uploaded again at every save. ``FinishedTrialFiles``
takes a finished trial's files out of that folder once they are on the storage.
"""

from __future__ import annotations

import logging
import shutil
import threading
from pathlib import Path
from typing import Any

import pyarrow
import pyarrow.fs
from ray.tune import Callback

from study.run.results import FIGURES

#: Entries of a checkpoint's result that Tune's state drops once the trial has ended: the
#: figures and copies of the trial's own config.
CHECKPOINT_RESULT_DROPS = frozenset({FIGURES, "config", "experiment_tag"})


class CompactFinishedTrials(Callback):
    """As a trial ends (TERMINATED, not ERROR: an errored trial is resumed), takes out of
    its saved state:

    - Tune's running statistics of every number it reported (``metric_analysis``: max, min,
      mean, last-5 and last-10 means; ``metric_n_steps``: the last 10 values of each), about
      half of a finished trial's state. Tune starts both again from the next result, should
      the trial run again (a trial reopened on ``--resume``, ``repair_saved_state``).
      ``ResultGrid.get_best_result`` therefore does not see finished trials; the study's
      tables (``trials.parquet``) hold every epoch's figures.
    - The figures (``FIGURES``, the one string every number but the objectives is packed
      in) from its last result, and ``CHECKPOINT_RESULT_DROPS`` from the result saved with
      each checkpoint (Tune keeps that whole, pickled): what stays is the epoch, the
      objectives, ``diverged``, Tune's counters and, in the last result, the config.

    Tune tells its search algorithm of the trial's end before its callbacks, so the searcher
    is told the whole last result; give this callback last, after any that reads figures.
    """

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        compact(trial)


def compact(trial: Any) -> None:
    """Drops from ``trial`` (a ``ray.tune.experiment.Trial``) what ``CompactFinishedTrials``
    says, in place."""
    metadata = trial.run_metadata
    metadata.last_result = {k: v for k, v in metadata.last_result.items() if k != FIGURES}
    metadata.metric_analysis = {}
    metadata.metric_n_steps = {}
    manager = metadata.checkpoint_manager
    if manager is not None:
        results = [*manager.best_checkpoint_results, manager.latest_checkpoint_result]
        for result in {id(r): r for r in results if r is not None}.values():
            result.metrics = {k: v for k, v in result.metrics.items() if k not in CHECKPOINT_RESULT_DROPS}
    metadata.invalidate_cache()
    trial.invalidate_json_state()


class FinishedTrialFiles(Callback):
    """Uploads a finished trial's own files from Tune's staging folder on the driver to the
    trial's folder on the experiment's storage, once, and removes them from the staging folder.

    Tune's experiment saves upload the whole staging folder (Ray 2.60: no exclusions), so
    without this each save uploaded every finished trial's files again: O(trials x saves)
    uploads (25,018 files in 17 saves of a 1,000-trial study here, 3,196 with this),
    thousands of requests per save to a bucket. The files of trials that ended are moved at the start of a step of Tune's loop
    in which no save is uploading (a save meanwhile would list the folder as it changes); a
    failed upload leaves them to Tune's next save. Only TERMINATED trials are moved: an
    errored one is retried and its logger appends to its files again.
    """

    def __init__(self) -> None:
        self._finished: list[Any] = []

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._finished.append(trial)

    def on_step_begin(self, iteration: int, trials: list[Any], **info: Any) -> None:
        # At a step's start: Tune saves (and starts an upload) near its end, so a save that
        # started then has most often ended by the next step's start.
        if not self._finished or uploading():
            return
        finished, self._finished = self._finished, []
        for trial in finished:
            move_to_storage(trial)


def uploading() -> bool:
    """Whether Tune's syncer is uploading a save of the experiment from this process now.

    Each trial's storage context holds a copy of the syncer, not the experiment's, so the
    question goes to the threads: Ray 2.60's syncer uploads in a thread running its
    ``_BackgroundProcess``'s ``entrypoint``, the only such thread on the driver.
    """
    for thread in threading.enumerate():
        target = getattr(thread, "_target", None)  # set while the thread runs
        if "_BackgroundProcess" in getattr(target, "__qualname__", ""):
            return True
    return False


def move_to_storage(trial: Any) -> None:
    """``trial``'s staging folder on the driver uploaded to its folder on the storage, then
    removed; left as it is if the upload fails (Tune's next save uploads it)."""
    staging, storage = Path(trial.local_path), trial.storage
    if not staging.is_dir():
        return
    try:
        pyarrow.fs.copy_files(
            str(staging),
            storage.trial_fs_path,
            source_filesystem=pyarrow.fs.LocalFileSystem(),
            destination_filesystem=storage.storage_filesystem,
        )
    except (OSError, pyarrow.ArrowException) as exc:
        logging.getLogger(__name__).warning("trial %s: its files stay for Tune to upload: %s", trial, exc)
        return
    shutil.rmtree(staging, ignore_errors=True)
