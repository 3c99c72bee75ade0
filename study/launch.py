"""``python -m study.launch``: config -> cohort -> cluster -> original model -> Tune experiment -> report.

The story of a study, each step a call into the module that owns it.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from analysis.pareto import front_table
from analysis.report import build_report
from analysis.study_state import Study, load_study, missing_recommended_model
from search_spaces import check_config, classes_of, spaces_of
from study.cohort import Cohort, open_cohort, with_other_forget
from study.config import (
    OBJECTIVES,
    EpochSchedule,
    StudyConfig,
    StudyError,
    StudyIncomplete,
    StudyInterrupted,
    differing_settings,
    load_config,
    run_cli,
)
from study.config.flags import overrides, parser
from study.model import initial_state
from study.run.cluster import Capacity, Connection, check_cluster, connect, remote, trial_request
from study.run.results import incomplete_trials, never_reported, rows_from_results, trial_config
from study.run.rundir import RunDir
from trainables.baseline import References, record, record_trial_tests, reference_models
from trainables.checkpoints import unfinished_trials
from trainables.reruns import rerun_recommendation
from trainables.trial import TrialSpec, run_trial
from trainables.tune_trainable import Handover


def run_study(config: StudyConfig, resuming: bool = False) -> Path:
    """Runs (or resumes) the study ``config`` describes; returns its run directory."""
    import ray

    check_config(config)  # every strategy named has a class and a search space
    run = RunDir.of(config)
    cohort = open_cohort(config)
    start, start_note = initial_state(config, cohort.n_classes)  # a bad weights file fails here
    other = with_other_forget(cohort, config.other_forget)  # a bad subject id fails here
    tune_callbacks(config)  # a callback that does not import fails here
    _tell_cohort(config, cohort, other, start_note)
    with run.creating(resuming):  # nothing stays behind if the cluster cannot run the study
        connection = connect(config, run.path)
        check_cluster(config, run.storage, connection, resuming)
        if not resuming:
            run.write_config(config)
    capacity = Capacity.of(config, connection)  # read again as the study runs: it follows the cluster
    _tell_cluster(connection, capacity, run)
    resume = f"python -m study.launch --resume {run.path}"
    with _resumable(resume):  # Ctrl-C or SIGTERM from here on: exit 130 naming the resume command
        # The cohort and the original model go into the object store once per study.
        cohort_ref = ray.put(cohort)
        references = train_or_load_baselines(config, run, cohort, cohort_ref, start, connection.local)
        original = ray.put(references.states["original"])
        handover = Handover(config, classes_of(config.strategies), cohort_ref, original, references.reference)

        grid = run_experiment(config, run, handover, capacity, resuming)
        trials = rows_from_results(grid, config.max_epochs)
        # Tune returns normally after Ctrl-C or SIGTERM, with trials unfinished or never started.
        # (A trial Tune ended short of its epochs is not interrupted: it is incomplete below.)
        if len(grid) < len(config.strategies) * config.num_samples or unfinished_trials(run.storage):
            raise StudyInterrupted(f"resume with: {resume}")
        problems = never_reported(grid) | incomplete_trials(
            trials, EpochSchedule.of(config).reported_epochs()
        )
        run.write_trials(trials)
        record_trial_tests(run, references.evidence, trials, cohort.split, config.privacy_level)
        if not trials.empty:
            print(front_table(trials, OBJECTIVES[config.objective]))
            study = load_study(run.path)
            save_recommended_model(config, study, handover)
            if (recommended := study.recommendation) is not None:
                rerun_recommendation(
                    config, run, recommended.trial_id, recommended.epoch, handover, other, start
                )
            if (safe := study.safe_recommendation) is not None and safe.trial_id != getattr(
                recommended, "trial_id", ""
            ):
                rerun_recommendation(
                    config, run, safe.trial_id, safe.epoch, handover, None, start, bn_modes=False
                )
            print("\n" + build_report(study, cohort=cohort).text)
    print(f"\nrun directory: {run.path}")
    if problems:
        listed = "; ".join(f"trial {t} ({what})" for t, what in problems.items())
        raise StudyIncomplete(f"{len(problems)} trial(s) did not finish: {listed}. Resume with: {resume}")
    return run.path


@contextmanager
def _resumable(resume: str) -> Iterator[None]:
    """SIGTERM (Kubernetes deleting the pod, ``kill``) stops the study as Ctrl-C does: in
    Tune's loop, Tune saves its state and returns (the study then exits 130); elsewhere a
    ``KeyboardInterrupt`` becomes ``StudyInterrupted`` naming the ``resume`` command.

    Installed once Ray runs: ``ray.init`` puts in a SIGTERM handler of its own that aborts."""
    previous = signal.signal(signal.SIGTERM, _stop_as_ctrl_c)
    try:
        yield
    except KeyboardInterrupt:
        raise StudyInterrupted(f"resume with: {resume}") from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _stop_as_ctrl_c(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def _tell_cohort(config: StudyConfig, cohort: Cohort, other: Cohort | None, start_note: str) -> None:
    split = cohort.split
    print(f"cohort: forget {list(split.forget)}, retain {list(split.retain)}, holdout {list(split.holdout)}")
    if other is not None and config.seed_reruns > 0:
        print(f"the recommendation's fresh seeds are rerun on forget set {list(other.split.forget)} too")
    print(f"original model starts from: {start_note}")


def _tell_cluster(connection: Connection, capacity: Capacity, run: RunDir) -> None:
    if connection.dashboard:
        print(f"Ray dashboard: {connection.dashboard}")
    elif connection.local:
        print("Ray dashboard: off (`dashboard = true` in a --config file turns it on)")
    in_flight, why = capacity.explain()
    print(
        f"cluster: {capacity.slots()} trials at a time now, {in_flight} in flight ({why}); "
        f"Tune results and checkpoints in {run.storage.root}"
    )


def train_or_load_baselines(
    config: StudyConfig, run: RunDir, cohort: Cohort, cohort_ref: Any, start: dict, local: bool
) -> References:
    """The original model and the retrain reference, from the cache or trained side by side on
    the cluster (a local Ray's cores shared between them), recorded in the run directory."""
    import ray

    ours = int(ray.cluster_resources().get("CPU", 1)) if local else None
    references = reference_models(config, cohort, start, cores=ours, cohort_ref=cohort_ref).result()
    record(run, references, cohort.split, config.privacy_level)
    return references


def run_experiment(
    config: StudyConfig, run: RunDir, handover: Handover, capacity: Capacity, resuming: bool
) -> Any:
    """The study's one Tune experiment (every strategy's trials side by side, as many in
    flight as ``capacity`` says while the cluster grows or shrinks); its ``ResultGrid``."""
    from ray import tune

    from search_spaces.searcher import build_searcher
    from trainables.checkpoints import (
        CheckpointPruner,
        prune_checkpoints,
        repair_saved_state,
        replace_lost_checkpoints,
    )
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
        repairs = repair_saved_state(storage, config.max_epochs)  # a damaged state: StudyError
        if repairs.stale_decisions:
            listed = ", ".join(f"{t} ({d})" for t, d in repairs.stale_decisions.items())
            print(f"dropped Tune's saved decisions for trial(s) {listed}: they resume from their checkpoints")
        if repairs.reopened:
            print(f"trial(s) {', '.join(repairs.reopened)} ended short of their epochs: they resume too")
        tuner = tune.Tuner.restore(
            storage.experiment_path, trainable, resume_errored=True, storage_filesystem=fs
        )
    else:
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                search_alg=build_searcher(config, spaces_of(config.strategies), run.optuna_url, capacity),
                num_samples=total,
                # How many trials Tune keeps pending (a custom searcher otherwise gets one): any
                # the searcher hands out, which keeps to ``capacity``.
                max_concurrent_trials=total,
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
                callbacks=[CheckpointPruner(storage), *tune_callbacks(config)],
                verbose=1,  # status tables and trial summaries, not every epoch's result
            ),
        )
    print(f"\n=== {total} trials ({', '.join(config.strategies)}) x {config.max_epochs} epochs ===")
    grid = tuner.fit()
    prune_checkpoints(storage)
    return grid


def tune_callbacks(config: StudyConfig) -> list[Any]:
    """The ``tune_callbacks`` a user named, built; a name that does not import is a ``StudyError``."""
    import importlib

    built = []
    for name in config.tune_callbacks:
        module, _, attribute = name.partition(":")
        try:
            built.append(getattr(importlib.import_module(module), attribute)())
        except (ImportError, AttributeError, TypeError, ValueError) as exc:
            raise StudyError(f"tune_callbacks: {name!r} cannot be built ({exc}); give module:Class") from None
    return built


def save_recommended_model(config: StudyConfig, study: Study, handover: Handover) -> None:
    """Replays the recommendation to its horizon (on the cluster) when no checkpoint of that
    epoch was kept, so the report can show it."""
    import ray

    if (missing := missing_recommended_model(study)) is None:
        return
    print(f"replaying trial {missing.trial_id} to epoch {missing.epoch} for the report's overlays")
    params = trial_config(study.trials, missing.trial_id)
    spec = TrialSpec.of(config, handover.strategies[params["strategy"]], params, missing.epoch)
    task = remote(config, run_trial).remote(
        spec, handover.cohort, handover.original_state, handover.reference
    )
    study.run.save_recommended(missing.trial_id, missing.epoch, ray.get(task).state)


def config_from_args(argv: list[str] | None = None) -> tuple[StudyConfig, bool]:
    """``(config, resuming)`` from the command line; flags override preset and ``--config``.

    ``--resume-or-start`` resumes the study in ``--run-dir`` when its ``config.toml`` exists
    and holds the settings given (else a ``StudyError`` naming those that differ), and
    starts it otherwise: a retried job continues instead of refusing its own run directory.
    """
    args = parser().parse_args(argv)
    if args.resume is not None:
        config = RunDir.open(args.resume)[1]
        if extra := sorted(set(overrides(args)) - {"address"}) + (["config"] if args.config else []):
            raise StudyError(
                f"--resume takes its settings from {args.resume}/config.toml; only --address (a new "
                f"cluster) may be given with it, not {', '.join('--' + e.replace('_', '-') for e in extra)}"
            )
        config.address = args.address or config.address  # the same study on another cluster
        return config, True
    given = load_config(args.preset, args.config, overrides(args))
    if not args.resume_or_start:
        return given, False
    if args.run_dir is None:
        raise StudyError("--resume-or-start needs --run-dir: the folder to resume, or to start the study in")
    if not RunDir(Path(given.run_dir)).config_file.is_file():
        return given, False
    saved = RunDir.open(Path(given.run_dir))[1]
    if changed := differing_settings(saved, given):
        raise StudyError(
            f"--resume-or-start: the study in {given.run_dir} has other settings ({'; '.join(changed)}); "
            "give the same ones, or choose another --run-dir"
        )
    print(f"resuming the study in {given.run_dir}")
    saved.address = given.address  # where it runs now, not a setting of the study
    return saved, True


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    return run_cli(lambda: run_study(*config_from_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
