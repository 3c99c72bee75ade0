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

from analysis.pareto import OBJECTIVES, front_table
from analysis.report import RECOMMENDED_MODEL, build_report, missing_recommended_model
from search_spaces import DefineByRun, numeric_bounds, starting_point
from study.cli import config_from_args, run_cli
from study.cluster import connect
from study.config import StudyConfig
from study.data import Cohort, open_cohort
from study.errors import StudyError, StudyInterrupted
from study.model import load_medicalnet_weights
from study.results import TRIALS_FILE, atomic_write, combine, rows_from_results, write_table
from trainables import STRATEGIES
from trainables.baseline import (
    BASELINES,
    baseline_key,
    build_model,
    load_cached,
    record_baseline,
    store_cached,
    train_baseline,
)
from trainables.replay import replayed_weights
from trainables.tune_trainable import trial_dirname, unlearning_trial


def run_study(config: StudyConfig, resuming: bool = False) -> Path:
    """Runs (or resumes) the study ``config`` describes; returns its run directory."""
    config.validate(tuple(STRATEGIES), numeric_bounds())
    cohort = open_cohort(config)
    if config.weights:  # refuse a bad weights file before any compute is spent
        load_medicalnet_weights(build_model(config, cohort.n_classes), Path(config.weights))
    run_dir = prepare_run_dir(config, resuming)
    split = cohort.split
    print(f"cohort: forget {list(split.forget)}, retain {list(split.retain)}, holdout {list(split.holdout)}")

    dashboard, local = connect(config, run_dir)
    if dashboard:
        print(f"Ray dashboard: {dashboard}")
    baselines = train_baselines(config, cohort, run_dir, local)
    for name, (_, metrics) in baselines.items():
        print(f"{name} model: " + "  ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    original_state, original_metrics = baselines["original"]

    tables = [
        run_experiment(strategy, config, cohort, original_state, original_metrics, run_dir, resuming)
        for strategy in config.strategies
    ]
    trials = combine(tables)
    write_table(trials, run_dir / TRIALS_FILE)
    print(front_table(trials))

    save_recommended_model(config, run_dir)
    print("\n" + build_report(run_dir).text)
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
    atomic_write(run_dir / "config.toml", lambda path: path.write_text(config.to_toml()))
    return run_dir


def train_baselines(
    config: StudyConfig, cohort: Cohort, run_dir: Path, local: bool
) -> dict[str, tuple[dict[str, torch.Tensor], dict[str, float]]]:
    """Every baseline's weights and metrics: from the cache, else trained side by side on Ray."""
    import ray

    keys = {name: baseline_key(config, cohort, name) for name in BASELINES}
    found = {name: load_cached(config.cache_path, key) for name, key in keys.items()}
    missing = [name for name, cached in found.items() if cached is None]
    for name in found.keys() - set(missing):
        print(f"{name} model: cached ({config.cache_path / 'models' / keys[name]})")
    if missing:
        print(f"training {', '.join(missing)} ({config.baseline_epochs} epochs each)")
        # A local Ray is ours alone: the baselines may share every core.
        total = int(ray.cluster_resources().get("CPU", 1))
        cpus = max(1, total // len(missing)) if local else config.cpus_per_trial
        train = ray.remote(num_cpus=cpus, num_gpus=config.gpus_per_trial)(train_baseline)
        pending = {name: train.remote(name, config, cohort, cpus) for name in missing}
        for name, ref in pending.items():
            found[name] = ray.get(ref)
            store_cached(config.cache_path, keys[name], *found[name])
    for name, (state, metrics) in found.items():
        record_baseline(run_dir, name, state, metrics)
    return found


def save_recommended_model(config: StudyConfig, run_dir: Path) -> None:
    """Replays the recommended trial to its horizon when Tune kept no checkpoint of that epoch."""
    import ray

    missing = missing_recommended_model(run_dir)
    if missing is None:
        return
    trial_id, epoch = missing
    print(f"replaying trial {trial_id} to epoch {epoch} for the report's overlays")
    replay = ray.remote(num_cpus=config.cpus_per_trial, num_gpus=config.gpus_per_trial)(replayed_weights)
    payload = ray.get(replay.remote(run_dir.resolve(), trial_id, epoch, config.cpus_per_trial))
    atomic_write(run_dir / RECOMMENDED_MODEL, lambda path: torch.save(payload, path))


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
        space=DefineByRun(strategy, tuple((k, *v) for k, v in config.search_bounds.items())),
        metric=list(OBJECTIVES),
        mode=["max", "max"],
        sampler=samplers[config.sampler](seed=config.seed),
        study_name=strategy,
        storage=optuna.storages.RDBStorage(f"sqlite:///{(run_dir / 'optuna.db').resolve()}"),
        seed=config.seed,
        points_to_evaluate=[starting_point(strategy, config.search_bounds)] if config.warm_start else None,
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
                search_alg=searcher, num_samples=config.num_samples, trial_dirname_creator=trial_dirname
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
    rows = rows_from_results(strategy, grid, config.max_epochs)
    # Tune returns normally when Ctrl-C stops it; the study must stop too, not go on.
    if len(grid) < config.num_samples or (rows["status"] == "running").any():
        raise StudyInterrupted(f"resume with: python -m study.launch --resume {run_dir}")
    return rows


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    return run_cli(lambda: run_study(*config_from_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
