"""``python -m study.launch``: config -> cohort -> cluster -> original model -> Tune experiment -> report.

The story of a study, each step a call into the module that owns it.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import warnings

from study.cli import NOTHING_KEPT, before_loading, quit_while_loading

if __name__ == "__main__":
    # Loading torch and Ray below takes seconds: the command line is answered (--help,
    # --version) and checked first, and Ctrl-C or SIGTERM meanwhile ends the command at once
    # (nothing is written yet); ``main`` puts the study's handlers in.
    before_loading("study.launch")
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from analysis.evaluate import score_models, segment_native
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
from study.config.flags import RESUMABLE, overrides, parser
from study.config.sources import storage_setting
from study.model import initial_state
from study.run.cluster import Capacity, Connection, check_cluster, connect, remote, trial_request
from study.run.results import incomplete_trials, never_reported, rows_from_results, trial_config
from study.run.rundir import RunDir
from study.run.storage import ExperimentStorage
from trainables.baseline import References, record, record_trial_tests, reference_models
from trainables.checkpoints import unfinished_trials
from trainables.reruns import RerunOf, rerun_recommendations
from trainables.trial import TrialSpec, run_trial
from trainables.tune_trainable import Handover


@dataclass(frozen=True)
class Resume:
    """How ``--resume`` continues a study. ``copy_from``: the experiment's storage before
    ``--storage`` gave the run directory its own (the experiment is copied from there);
    ``claim``: ``--storage`` was given as saved, so this run directory takes over an
    experiment last run from another host (it was moved here)."""

    copy_from: ExperimentStorage | None = None
    claim: bool = False


def run_study(config: StudyConfig, resume: Resume | None = None, verbose: bool = False) -> Path:
    """Runs (or, given ``resume``, resumes) the study ``config`` describes; returns its run
    directory. ``verbose``: Tune's own tables and Optuna's log lines as well as the study's.

    Ctrl-C (and SIGTERM, under ``main``) in any phase stops it with ``StudyInterrupted``
    naming the command that resumes it; a resume redoes the phase that was cut.
    """
    run = RunDir.of(config)
    if resume is not None and run.finished:
        print(
            f"the study in {run.path} finished at {run.finished}: nothing to resume; report: {run.report_html}"
        )
        return run.path
    try:
        return _run(config, run, resume, verbose)
    except KeyboardInterrupt:
        if run.config_file.is_file():
            raise StudyInterrupted(f"resume with: python -m study.launch --resume {run.path}") from None
        raise StudyInterrupted(NOTHING_KEPT) from None


def _run(config: StudyConfig, run: RunDir, resume: Resume | None, verbose: bool) -> Path:
    resuming = resume is not None
    quiet_libraries(verbose)
    check_config(config)  # every strategy named has a class and a search space
    phase("cohort", "the subjects, the original model's start, the forget sets")
    cohort = open_cohort(config)
    start, start_note = initial_state(config, cohort.n_classes)  # a bad weights file fails here
    other = with_other_forget(cohort, config.other_forget)  # a bad subject id fails here
    tune_callbacks(config)  # a callback that does not import fails here
    _tell_cohort(config, cohort, other, start_note)
    # One driver per run directory, holding its lock to the end; a new run directory is
    # removed again if the cluster cannot run the study.
    phase("cluster", "Ray, the run directory, the experiment's storage")
    with run.driving(resuming) as set_up, _own_ray():
        if not resuming:
            run.write_identity()
        if resume is not None and resume.copy_from is not None:
            print(f"copying the experiment from {resume.copy_from.root} to {config.storage} ...", flush=True)
            resume.copy_from.copy_experiment_to(run.storage)
            run.write_config(config)  # the copy's own storage from now on
        # A copied experiment names the run directory it was copied from: this one takes it.
        claim = resume is not None and (resume.claim or resume.copy_from is not None)
        run.check_experiment_owner(claim)  # a copy sharing its original's storage: refused here
        connection = connect(config, run.path)
        _catch_sigterm()  # ray.init puts in a SIGTERM handler of its own, which aborts
        check_cluster(config, run.storage, connection, resuming)
        if not resuming:
            run.write_config(config)
        set_up()
        capacity = Capacity.of(config, connection)  # read again as the study runs: it follows the cluster
        _tell_cluster(connection, capacity, run)
        with run.owning_experiment(claim=claim):
            problems = _search_and_report(
                config, run, cohort, other, start, connection, capacity, resuming, verbose
            )
        print(f"\nrun directory: {run.path}")
        if problems:
            listed = "; ".join(f"trial {t} ({what})" for t, what in problems.items())
            raise StudyIncomplete(
                f"{len(problems)} trial(s) did not finish: {listed}. "
                f"Resume with: python -m study.launch --resume {run.path}"
            )
        run.mark_finished(datetime.now(UTC).isoformat(timespec="seconds"))
    return run.path


@contextmanager
def _own_ray() -> Iterator[None]:
    """Shuts down the Ray the ``with`` block starts (none already running), however the
    block ends, so that what Ray's workers print as they stop comes before the study's last
    line, and while the driver still holds the run directory."""
    import ray

    ours = not ray.is_initialized()
    try:
        yield
    finally:
        if ours and ray.is_initialized():
            ray.shutdown()


def _search_and_report(
    config: StudyConfig,
    run: RunDir,
    cohort: Cohort,
    other: Cohort | None,
    start: dict[str, Any],
    connection: Connection,
    capacity: Capacity,
    resuming: bool,
    verbose: bool,
) -> dict[str, str]:
    """Baselines, the Tune experiment, the recommendation's reruns and the report; returns
    the trials that did not finish (``{trial id: what}``)."""
    import ray

    phase("baselines", "the original model and the models retrained without the forget subjects")
    # The cohort and the original model go into the object store once per study.
    cohort_ref = ray.put(cohort)
    references = train_or_load_baselines(config, run, cohort, cohort_ref, start, connection.local, other)
    original = ray.put(references.states["original"])
    handover = Handover(config, classes_of(config.strategies), cohort_ref, original, references.reference)

    grid = run_experiment(config, run, handover, capacity, resuming, verbose)
    trials = rows_from_results(grid, config.max_epochs)
    # Tune returns normally after Ctrl-C or SIGTERM, with trials unfinished or never started.
    # (A trial Tune ended short of its epochs is not interrupted: it is incomplete below.)
    if len(grid) < len(config.strategies) * config.num_samples or unfinished_trials(run.storage):
        raise KeyboardInterrupt
    problems = never_reported(grid) | incomplete_trials(trials, EpochSchedule.of(config).reported_epochs())
    run.write_trials(trials)
    record_trial_tests(run, references.evidence, trials, cohort.split, config.privacy_level)
    if not trials.empty:
        print(front_table(trials, OBJECTIVES[config.objective]))
        study = load_study(run.path)
        phase("reruns", "the recommendation with fresh seeds, on another forget set, under each bn_mode")
        save_recommended_model(config, study, handover)
        asked = []
        if (recommended := study.recommendation) is not None:
            asked.append(RerunOf(recommended.trial_id, recommended.epoch))
        if (safe := study.safe_recommendation) is not None and safe.trial_id != getattr(
            recommended, "trial_id", ""
        ):  # the "safe to deploy" knee: its fresh seeds on the study's forget set
            asked.append(RerunOf(safe.trial_id, safe.epoch, elsewhere=False, bn_modes=False))
        rerun_recommendations(config, run, asked, handover, other, start, connection.local)
        if config.native_scores:
            phase("scores", "MRBrainS18's Dice, HD95 and volume similarity per label, on the native grid")
            score_on_native_grid(config, run, study, cohort, handover, references.states, connection.local)
        phase("report", f"figures and tables in {run.report_html}")
        print("\n" + build_report(study, cohort=cohort).text)
        _tell_next(config, run)
    return problems


@contextmanager
def _stop_signals() -> Iterator[None]:
    """SIGTERM (Kubernetes deleting the pod, ``kill``) stops the study as Ctrl-C does, from
    the first step on: in Tune's loop, Tune saves its state and returns; elsewhere it is a
    ``KeyboardInterrupt``. Python's own handlers are put back at the end."""
    global _catching_sigterm
    if threading.current_thread() is not threading.main_thread():
        yield  # signals reach the main thread only
        return
    sigint, sigterm = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    _catching_sigterm = True
    _catch_sigterm()
    try:
        yield
    finally:
        _catching_sigterm = False
        loading = quit_while_loading
        signal.signal(signal.SIGINT, signal.default_int_handler if sigint is loading else sigint)
        signal.signal(signal.SIGTERM, signal.SIG_DFL if sigterm is loading else sigterm)


_catching_sigterm = False  # inside ``_stop_signals``


def _catch_sigterm() -> None:
    """Puts in ``_stop_signals``' SIGTERM handler (again: ``ray.init`` installs one of its own)."""
    if _catching_sigterm:
        signal.signal(signal.SIGTERM, _stop_as_ctrl_c)


def _stop_as_ctrl_c(signum: int, frame: object) -> None:
    signal.raise_signal(signal.SIGINT)


def phase(name: str, what: str) -> None:
    """Announces a phase of the study (``cohort``, ``cluster``, ``baselines``, ``search``,
    ``reruns``, ``report``): one line, ``== name: what``."""
    print(f"\n== {name}: {what}", flush=True)


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


def _tell_next(config: StudyConfig, run: RunDir) -> None:
    """The commands a user runs next on a finished study."""
    subjects = ",".join(config.forget)
    print(
        "\nnext:\n"
        f"  honour a deletion request:  python -m study.forget {run.path} --subjects {subjects}\n"
        f"  score a model as MRBrainS18 does:  python -m analysis.evaluate {run.path} --model recommended\n"
        f"  the search in Optuna's dashboard:  optuna-dashboard {run.optuna_journal}  (pip install optuna-dashboard)"
    )


def train_or_load_baselines(
    config: StudyConfig,
    run: RunDir,
    cohort: Cohort,
    cohort_ref: Any,
    start: dict,
    local: bool,
    other: Cohort | None = None,
) -> References:
    """The original model and the retrain reference, from the cache or trained side by side on
    the cluster (a local Ray's cores shared between them), recorded in the run directory.

    ``other``: the cohort with the other forget set, on which the recommendation's fresh seeds
    are rerun: its retrain reference trains (into the cache) beside them, so that those
    reruns start with the others rather than after it, and fills a slot the last models leave.
    """
    import ray

    ours = int(ray.cluster_resources().get("CPU", 1)) if local else None
    training = reference_models(config, cohort, start, cores=ours, cohort_ref=cohort_ref)
    beside = None
    if other is not None and config.seed_reruns > 0:  # measured where its reruns are
        beside = reference_models(config, other, start, names=("retrain",), tell_epochs=False)
    references = training.result()
    if beside is not None:
        beside.trained()
    record(run, references, cohort.split, config.privacy_level)
    return references


def run_experiment(
    config: StudyConfig, run: RunDir, handover: Handover, capacity: Capacity, resuming: bool, verbose: bool
) -> Any:
    """The study's one Tune experiment (every strategy's trials side by side, as many in
    flight as ``capacity`` says while the cluster grows or shrinks); its ``ResultGrid``.
    Each trial's start and end is one line (``TrialLines``); ``verbose``: Tune's tables too."""
    from ray import tune
    from ray.tune.logger import JsonLoggerCallback

    from search_spaces.searcher import build_searcher, search_algorithm
    from trainables.checkpoints import (
        CheckpointPruner,
        prune_checkpoints,
        repair_saved_state,
        replace_lost_checkpoints,
    )
    from trainables.trial_lines import TrialLines
    from trainables.tune_state import CompactFinishedTrials, FinishedTrialFiles
    from trainables.tune_trainable import trial_folder, trial_name, unlearning_trial

    storage = run.storage
    fs, root = storage.filesystem()
    trainable = tune.with_resources(
        tune.with_parameters(unlearning_trial, handover=handover), trial_request(config)
    )
    total = len(config.strategies) * config.num_samples
    if resuming and tune.Tuner.can_restore(storage.experiment_path, storage_filesystem=fs):
        run.refuse_older_optuna_storage()
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
        sampler_line = ""
    else:
        searcher = build_searcher(config, spaces_of(config.strategies), run.optuna_journal, capacity)
        sampler_line = "sampler: {} ({})".format(*searcher.sampler)
        tuner = tune.Tuner(
            trainable,
            tune_config=tune.TuneConfig(
                # Up to ``total`` trials pending (a custom searcher otherwise gets one): any the
                # searcher hands out, which keeps to ``capacity``.
                search_alg=search_algorithm(searcher, total),
                num_samples=total,
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
                callbacks=[
                    JsonLoggerCallback(),
                    CheckpointPruner(storage),
                    TrialLines(config),
                    *tune_callbacks(config),
                    CompactFinishedTrials(),  # last: what a finished trial keeps in Tune's state
                    FinishedTrialFiles(),  # its files uploaded once, not at every save
                ],
                verbose=1 if verbose else 0,  # 1: Tune's status tables and trial boxes
            ),
        )
    phase("search", f"{total} trials ({', '.join(config.strategies)}) x {config.max_epochs} epochs")
    if sampler_line:
        print(sampler_line)
    sigint = signal.getsignal(signal.SIGINT)
    try:
        with _only_json_results():
            grid = tuner.fit()
    finally:  # Tune leaves its own Ctrl-C handler in place when no signal came: later ones would be lost
        signal.signal(signal.SIGINT, sigint)
    prune_checkpoints(storage)
    return grid


@contextmanager
def _only_json_results() -> Iterator[None]:
    """Tune's CSV and TensorBoard loggers off for the ``with`` block (read as ``fit`` starts):
    they write every result again beside ``result.json``, which is what the study reads. A
    user's ``TUNE_DISABLE_AUTO_CALLBACK_LOGGERS=0`` brings them back."""
    name = "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS"
    before = os.environ.get(name)
    os.environ[name] = before or "1"
    try:
        yield
    finally:
        if before is None:
            del os.environ[name]


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


def score_on_native_grid(
    config: StudyConfig,
    run: RunDir,
    study: Study,
    cohort: Cohort,
    handover: Handover,
    baselines: dict[str, Any],
    local: bool,
) -> None:
    """The original model, the retrain reference and the recommended model segment every
    subject (Ray tasks side by side on a cluster; in this process on a ``local`` Ray) and are
    scored on the native grid, as
    MRBrainS18 scores (``analysis/evaluate.py``): ``official_scores.parquet`` and
    ``predictions/<model>/<subject>/result.nii.gz``."""
    models = {name: baselines[name] for name in ("original", "retrain")}
    if (recommended := study.recommendation) is not None:
        state = run.load_model_of(recommended.trial_id, recommended.epoch)
        if state is not None:
            models["recommended"] = state
    segment = None  # on a local Ray, in this process: a task would add only a worker's start-up
    if not local:
        task = remote(config, segment_on_worker)
        segment = lambda name, state, shapes: task.remote(config, state, handover.cohort, shapes)  # noqa: E731
    run.write_official_scores(score_models(config, run, cohort, models, segment))


def segment_on_worker(
    config: StudyConfig, state: dict[str, Any], cohort: Cohort, shapes: dict[str, tuple[int, int, int]]
) -> dict[str, Any]:
    """``segment_native`` in a Ray task: on the device and with the threads a trial's request gave it."""
    from trainables.settings import Compute

    compute = Compute.of(config)
    compute.use_threads()
    return segment_native(config, state, cohort, shapes, compute.torch_device())


def quiet_libraries(verbose: bool) -> None:
    """Without ``verbose``, Optuna and Tune say only what goes wrong (the study tells the
    rest); when the output is not a terminal, Ray writes its workers' lines without colour."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.INFO if verbose else optuna.logging.WARNING)
    logging.getLogger("ray.tune").setLevel(logging.INFO if verbose else logging.WARNING)
    # Quiet: Tune's older output, which verbose=0 silences whole (the newer prints a box anyway).
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    if not verbose:  # the searcher's suggestion (GP's takes about a second), not the trial's work
        warnings.filterwarnings("ignore", "Define-by-run function passed in the `space` argument took")
    if not sys.stdout.isatty():
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # read by the driver as it prints them


def config_from_args(argv: list[str] | None = None) -> tuple[StudyConfig, Resume | None]:
    """``(config, how it resumes or None)`` from the command line; flags override preset and
    ``--config``.

    ``--resume DIR`` takes the settings saved in ``DIR``; only ``--address`` (another
    cluster) and ``--storage`` (as saved: take over an experiment last run from another
    host; another: copy the experiment there, e.g. for a copied run directory) may be given
    with it. ``--resume-or-start`` resumes the study in ``--run-dir`` when its
    ``config.toml`` exists and holds the settings given (else a ``StudyError`` naming those
    that differ), and starts it otherwise: a retried job continues instead of refusing its
    own run directory.
    """
    args = parser().parse_args(argv)
    if args.resume is not None:
        run, config = RunDir.open(args.resume)
        if extra := sorted(set(overrides(args)) - RESUMABLE) + (["config"] if args.config else []):
            raise StudyError(
                f"--resume takes its settings from {args.resume}/config.toml; only "
                f"{' and '.join('--' + r for r in sorted(RESUMABLE))} may be given with it, not "
                f"{', '.join('--' + e.replace('_', '-') for e in extra)}"
            )
        config.address = args.address or config.address  # the same study on another cluster
        if args.storage is None:
            return config, Resume()
        given = storage_setting(args.storage)
        if given == config.storage:
            return config, Resume(claim=True)
        copy_from = run.storage
        config.storage = given
        return config, Resume(copy_from=copy_from)
    given = load_config(args.preset, args.config, overrides(args))
    if not args.resume_or_start:
        return given, None
    if args.run_dir is None:
        raise StudyError("--resume-or-start needs --run-dir: the folder to resume, or to start the study in")
    if not RunDir(Path(given.run_dir)).config_file.is_file():
        return given, None
    saved = RunDir.open(Path(given.run_dir))[1]
    if changed := differing_settings(saved, given):
        raise StudyError(
            f"--resume-or-start: the study in {given.run_dir} has other settings ({'; '.join(changed)}); "
            "give the same ones, or choose another --run-dir"
        )
    print(f"resuming the study in {given.run_dir}")
    saved.address = given.address  # where it runs now, not a setting of the study
    return saved, Resume()


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    with _stop_signals():
        verbose = parser().parse_args(argv).verbose
        return run_cli(lambda: run_study(*config_from_args(argv), verbose=verbose))


if __name__ == "__main__":
    sys.exit(main())
