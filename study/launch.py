"""``python -m study.launch``: config -> cohort -> cluster -> original model -> Tune experiment -> report.

The story of a study, each step a call into the module that owns it. This is the only
module of ``study/`` that imports ``trainables/``, ``search_spaces/`` and ``analysis/``.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Any

import torch

from analysis.pareto import front_table
from analysis.report import build_report
from analysis.study_state import (
    Recommendation,
    Study,
    load_study,
    missing_recommended_model,
    recommendation_of,
)
from study.cli import config_from_args, run_cli
from study.cluster import check_cluster, connect, task_options, trial_device, trial_request
from study.config import StudyConfig
from study.data import Cohort, open_cohort
from study.errors import StudyIncomplete, StudyInterrupted
from study.forget_sets import with_other_forget
from study.objectives import OBJECTIVES
from study.results import incomplete_trials, rows_from_results
from study.run import RunDir
from study.storage import trial_id_of
from trainables.baseline import initial_state, train_or_load_baselines
from trainables.registry import check_config, classes_of, spaces_of
from trainables.replay import replayed_state, trial_params
from trainables.reruns import rerun_recommendation
from trainables.tune_trainable import Handover


def run_study(config: StudyConfig, resuming: bool = False) -> Path:
    """Runs (or resumes) the study ``config`` describes; returns its run directory."""
    import ray

    check_config(config)  # every strategy named has a class and a search space
    run = RunDir.of(config)
    cohort = open_cohort(config)
    start, start_note = initial_state(config, cohort.n_classes)  # a bad weights file fails here
    other = with_other_forget(cohort, config.other_forget)  # a bad subject id fails here
    split = cohort.split
    print(f"cohort: forget {list(split.forget)}, retain {list(split.retain)}, holdout {list(split.holdout)}")
    if other is not None and config.seed_reruns > 0:
        print(f"the recommendation's fresh seeds are rerun on forget set {list(other.split.forget)} too")
    print(f"original model starts from: {start_note}")

    with run.creating(resuming):  # nothing stays behind if the cluster cannot run the study
        connection = connect(config, run.path)
        slots = check_cluster(config, run.storage, connection, resuming)
        if not resuming:
            run.write_config(config)
    if connection.dashboard:
        print(f"Ray dashboard: {connection.dashboard}")
    elif connection.local:
        print("Ray dashboard: off (`dashboard = true` in a --config file turns it on)")
    print(f"cluster: {slots} trials at a time; Tune results and checkpoints in {run.storage.root}")

    # The cohort goes into the object store once per study; every task gets the reference.
    handover = Handover(study=config, strategies=classes_of(config.strategies), cohort=ray.put(cohort))
    states, reference = train_or_load_baselines(config, cohort, handover.cohort, start, run, connection.local)
    handover = dataclasses.replace(handover, original_state=ray.put(states["original"]), reference=reference)

    grid = run_experiment(config, run, handover, slots, resuming)
    trials = rows_from_results(grid, config.max_epochs)
    resume = f"python -m study.launch --resume {run.path}"
    # Tune returns normally after Ctrl-C, with trials unfinished or never started.
    if len(grid) < len(config.strategies) * config.num_samples or (trials["status"] == "running").any():
        raise StudyInterrupted(f"resume with: {resume}")
    problems = never_reported(grid) | incomplete_trials(trials, config.reported_epochs())
    run.write_trials(trials)
    if not trials.empty:
        print(front_table(trials, OBJECTIVES[config.objective]))
        study = load_study(run.path)
        recommendation = recommendation_of(study)
        save_recommended_model(config, study, recommendation, handover)
        if recommendation is not None:
            trial_id, epoch = recommendation["trial_id"], int(recommendation["epoch"])
            rerun_recommendation(config, run, trial_id, epoch, handover, other, start)
        print("\n" + build_report(study, recommendation, cohort=cohort).text)
    print(f"\nrun directory: {run.path}")
    if problems:
        listed = "; ".join(f"trial {t} ({what})" for t, what in problems.items())
        raise StudyIncomplete(f"{len(problems)} trial(s) did not finish: {listed}. Resume with: {resume}")
    return run.path


def never_reported(grid: Any) -> dict[str, str]:
    """Trials of Tune's ``ResultGrid`` that errored before their first report (Tune's result
    for such a trial holds its ``trial_id`` alone), so no row of theirs says they failed."""
    return {
        trial_id_of(r.path): "failed before its first epoch"
        for r in grid
        if r.error and "epoch" not in (r.metrics or {})
    }


def run_experiment(config: StudyConfig, run: RunDir, handover: Handover, slots: int, resuming: bool) -> Any:
    """The study's one Tune experiment (every strategy's trials side by side); its ``ResultGrid``."""
    from ray import tune

    from search_spaces.searcher import build_searcher
    from trainables.checkpoints import CheckpointPruner, prune_checkpoints, replace_lost_checkpoints
    from trainables.tune_trainable import trial_folder, trial_name, unlearning_trial

    storage = run.storage
    fs, root = storage.filesystem()
    trainable = tune.with_resources(
        tune.with_parameters(unlearning_trial, handover=handover), trial_request(config)
    )
    total = len(config.strategies) * config.num_samples
    if resuming and tune.Tuner.can_restore(storage.experiment_path, storage_filesystem=fs):
        # Unfinished and failed trials continue from their last checkpoint, or from epoch 1
        # when that checkpoint is gone from storage.
        if lost := replace_lost_checkpoints(storage):
            print(f"the checkpoints of trial(s) {', '.join(lost)} are gone: they start again from epoch 1")
        tuner = tune.Tuner.restore(
            storage.experiment_path, trainable, resume_errored=True, storage_filesystem=fs
        )
    else:
        cap = config.concurrent_per_strategy or max(
            math.ceil(config.num_samples / 4), math.ceil(slots / len(config.strategies))
        )
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(config, spaces_of(config.strategies), run.optuna_url, cap),
                num_samples=total,
                # Also how many trials Tune starts at once: a custom searcher otherwise gets one.
                max_concurrent_trials=slots,
                reuse_actors=True,  # a finished trial's worker takes the next one: no new process, no re-import
                trial_dirname_creator=trial_folder,
                trial_name_creator=trial_name,
            ),
            run_config=tune.RunConfig(
                name=storage.name,
                storage_path=root,
                storage_filesystem=fs,
                # Tune keeps every checkpoint; the pruner deletes only what no saved state names.
                checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                callbacks=[CheckpointPruner(storage)],
                verbose=1,  # status tables and trial summaries, not every epoch's result
            ),
        )
    print(f"\n=== {total} trials ({', '.join(config.strategies)}) x {config.max_epochs} epochs ===")
    grid = tuner.fit()
    prune_checkpoints(storage)
    return grid


def save_recommended_model(
    config: StudyConfig, study: Study, recommendation: Recommendation | None, handover: Handover
) -> None:
    """Replays the ``recommendation`` to its horizon (on the cluster) when no checkpoint of that
    epoch was kept, so the report can show it."""
    import ray

    missing = missing_recommended_model(study, recommendation)
    if missing is None:
        return
    trial_id, epoch = missing
    print(f"replaying trial {trial_id} to epoch {epoch} for the report's overlays")
    params = trial_params(study.trials, trial_id)

    def replay(cohort: Cohort, original_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        strategy = handover.strategies[params["strategy"]]
        model, _ = replayed_state(
            strategy, params, epoch, config, cohort, original_state, handover.reference, trial_device(config)
        )
        return {k: v.detach().cpu() for k, v in model.state_dict().items()}

    task = ray.remote(**task_options(config, config.cpus_per_trial))(replay)
    state = ray.get(task.remote(handover.cohort, handover.original_state))
    study.run.save_recommended(trial_id, epoch, state)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    return run_cli(lambda: run_study(*config_from_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
