"""What Tune's experiment state keeps of a finished trial.

Tune saves every trial's state at every experiment save, and uploads the whole file to the
run's storage, so its size grows with the finished trials: at 1000 trials, each KB a trial
keeps is a MB more per save. While a trial runs, Tune needs its running statistics; once it
has ended, its status, config, last epoch and checkpoints are what a restore, the study's
results reader and the checkpoint pruner read: every report's figures are in the trial's
``result.json`` (``ResultGrid``'s ``metrics_dataframe``) and in ``trials.parquet``.
``CompactFinishedTrials`` drops the rest as each trial ends.
"""

from __future__ import annotations

from typing import Any

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
