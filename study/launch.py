"""``python -m study.launch``: config -> cohort -> original model -> Tune experiments -> results.

The story of a study, each step a call into the module that owns it. This is the only
module of ``study/`` that imports ``trainables/``, ``search_spaces/`` and ``analysis/``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pandas as pd
import torch

from analysis.pareto import OBJECTIVES, pareto_front
from search_spaces import DefineByRun, starting_point
from study.cli import config_from_args, run_cli
from study.cluster import connect
from study.config import StudyConfig
from study.data import Cohort, open_cohort
from study.errors import StudyError
from study.model import load_medicalnet_weights
from study.results import TRIALS_FILE, combine, final_rows, trial_rows, write_table
from trainables import STRATEGIES
from trainables.baseline import (
    baseline_key,
    build_model,
    load_cached,
    record_baseline,
    store_cached,
    train_original,
)
from trainables.tune_trainable import unlearning_trial


def run_study(config: StudyConfig, resuming: bool = False) -> Path:
    """Runs (or resumes) the study ``config`` describes; returns its run directory."""
    config.validate(tuple(STRATEGIES))
    cohort = open_cohort(config)
    if config.weights:  # refuse a bad weights file before any compute is spent
        load_medicalnet_weights(build_model(config, cohort.n_classes), Path(config.weights))
    run_dir = prepare_run_dir(config, resuming)
    split = cohort.split
    print(f"cohort: forget {list(split.forget)}, retain {list(split.retain)}, holdout {list(split.holdout)}")

    dashboard, local = connect(config, run_dir)
    if dashboard:
        print(f"Ray dashboard: {dashboard}")
    original_state, original_metrics = original_model(config, cohort, run_dir, local)
    print("original model: " + "  ".join(f"{k} {v:.3f}" for k, v in original_metrics.items()))

    tables = [
        run_experiment(strategy, config, cohort, original_state, original_metrics, run_dir, resuming)
        for strategy in config.strategies
    ]
    trials = combine(tables)
    write_table(trials, run_dir / TRIALS_FILE)
    print_front(trials)
    print(f"\nrun directory: {run_dir}")
    return run_dir


def prepare_run_dir(config: StudyConfig, resuming: bool) -> Path:
    """Creates the run directory and writes ``config.toml``; an existing one needs ``--resume``."""
    run_dir = config.run_path
    if resuming:
        return run_dir
    if run_dir.exists() and any(run_dir.iterdir()):
        raise StudyError(
            f"run directory {run_dir} already exists; pass --resume {run_dir} to finish "
            "that study, or choose another --run-dir"
        )
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.toml").write_text(config.to_toml())
    return run_dir


def original_model(
    config: StudyConfig, cohort: Cohort, run_dir: Path, local: bool
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The original model's weights and metrics: from the cache, else trained on Ray."""
    import ray

    key = baseline_key(config, cohort)
    cached = load_cached(config.cache_path, key)
    if cached is None:
        print(f"training the original model ({config.baseline_epochs} epochs on retain + forget)")
        # A local Ray is ours alone: the one serial step may use every core.
        cpus = int(ray.cluster_resources().get("CPU", 1)) if local else config.cpus_per_trial
        train = ray.remote(num_cpus=cpus, num_gpus=config.gpus_per_trial)(train_original)
        cached = ray.get(train.remote(config, cohort, cpus))
        store_cached(config.cache_path, key, *cached)
    else:
        print(f"original model: cached ({config.cache_path / 'models' / key})")
    record_baseline(run_dir, "original", *cached)
    return cached


def run_experiment(
    strategy: str,
    config: StudyConfig,
    cohort: Cohort,
    original_state: dict[str, torch.Tensor],
    original_metrics: dict[str, float],
    run_dir: Path,
    resuming: bool,
) -> pd.DataFrame:
    """One Tune experiment: ``num_samples`` Optuna-suggested trials of ``strategy``; returns its rows."""
    import optuna
    from ray import tune

    # Keeping only the last checkpoint forces an experiment snapshot at every checkpoint;
    # for small trials that is cheap, so Tune's warning about it is noise here.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    from ray.tune.search.optuna import OptunaSearch

    samplers = {"tpe": optuna.samplers.TPESampler, "nsga2": optuna.samplers.NSGAIISampler}
    searcher = OptunaSearch(
        space=DefineByRun(strategy),
        metric=list(OBJECTIVES),
        mode=["max", "max"],
        sampler=samplers[config.sampler](seed=config.seed),
        study_name=strategy,
        storage=optuna.storages.RDBStorage(f"sqlite:///{(run_dir / 'optuna.db').resolve()}"),
        seed=config.seed,
        points_to_evaluate=[starting_point(strategy)] if config.warm_start else None,
    )
    trainable = tune.with_resources(
        tune.with_parameters(
            unlearning_trial,
            strategy_name=strategy,
            study=config,
            cohort=cohort,
            original_state=original_state,
            original_metrics=original_metrics,
        ),
        {"cpu": config.cpus_per_trial, "gpu": config.gpus_per_trial},
    )
    storage = run_dir.resolve() / "ray_results"
    if resuming and tune.Tuner.can_restore(storage / strategy):
        tuner = tune.Tuner.restore(str(storage / strategy), trainable, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=searcher, num_samples=config.num_samples, trial_dirname_creator=_trial_dirname
            ),
            run_config=tune.RunConfig(
                name=strategy,
                storage_path=str(storage),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                failure_config=tune.FailureConfig(max_failures=config.max_failures),
                verbose=1,  # status tables and trial summaries, not every epoch's result
            ),
        )
    print(f"\n=== {strategy}: {config.num_samples} trials x {config.max_epochs} epochs ===")
    grid = tuner.fit()

    tables = []
    for result in grid:
        history = [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        last = result.metrics or {}
        status = "error" if result.error else "diverged" if last.get("diverged") else "terminated"
        params = {k: v for k, v in result.config.items() if k != "trial_number"}
        trial_id = last.get("trial_id") or Path(result.path).name
        tables.append(trial_rows(strategy, trial_id, params, history, status))
    return combine(tables)


def _trial_dirname(trial) -> str:
    """A trial's folder is named by its id alone: short paths, no hyperparameter soup."""
    return f"trial_{trial.trial_id}"


def print_front(trials: pd.DataFrame) -> None:
    """Prints the non-dominated trials (final epochs) on (forget_drop, retain_kept)."""
    finals = final_rows(trials)
    front = pareto_front(finals)
    print(f"\nnon-dominated trials ({len(front)} of {len(finals)}), final epoch:")
    columns = ["strategy", "trial_id", "epoch", *OBJECTIVES, "forget_dice", "retain_dice", "score"]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        print(front[columns].to_string(index=False))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    return run_cli(lambda: run_study(*config_from_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
