"""``python -m study.bench overhead``: where a study's wall time goes, on a local Ray.

A study of the chosen preset runs as ``python -m study.launch`` runs it, in a fresh cache
(cohort written, every model of the original recipe trained: a first run on a new machine),
the recommendation's reruns and the native-grid scores included. Its phases are timed on the
driver; each trial's parts come from what every report carries into Tune's results
(``seconds_train``, ``seconds_eval``, ``seconds_snapshot``, ``seconds_setup``,
``seconds_report``, ``seconds_write``, ``entered_at``, ``reported_at``, ``peak_rss_mb``; see
``trainables/tune_trainable.py``), read back with Tune's ``ExperimentAnalysis``.

Then every model the run trained is trained again bare (no Ray, in this process, one
thread, one after another): the models of the original recipe (the other forget set's
retrain reference too), every trial, every rerun of the recommendation and any replay of
it. The ideal run is the sum of those times / slots: what the machine's slots would take if
nothing but training ran, each model on one of them.
"""

from __future__ import annotations

import inspect
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

#: The parts of a trial's span, as its reports name them.
PARTS = ("seconds_setup", "seconds_train", "seconds_eval", "seconds_snapshot", "seconds_report")
#: The driver's functions (of ``study.launch``) whose calls are timed as the study's phases.
PHASES = (
    "open_cohort",
    "connect",
    "train_or_load_baselines",
    "run_experiment",
    "save_recommended_model",
    "rerun_recommendations",
    "score_on_native_grid",
    "build_report",
)
#: What the bare work's names start with, and how the table names each kind.
KINDS = {
    "model": "models of the original recipe",
    "trial": "trials",
    "rerun": "reruns of the recommendation",
    "replay": "replays of the recommendation",
}


def _timed(module: Any, name: str, phases: dict[str, float], calls: list | None = None) -> None:
    """Wraps ``module.name`` so that each call's wall time adds to ``phases[name]`` (and,
    given ``calls``, each call's ``(arguments by name, result)`` is appended to it)."""
    function = getattr(module, name)
    signature = inspect.signature(function)

    def timed(*args: Any, **kwargs: Any) -> Any:
        phases[f"{name} started at"] = time.time()
        started, cpu = time.perf_counter(), time.process_time()
        try:
            result = function(*args, **kwargs)
            if calls is not None:
                bound = signature.bind(*args, **kwargs)
                bound.apply_defaults()
                calls.append((bound.arguments, result))
            return result
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - started
            phases[f"{name} driver CPU"] = phases.get(f"{name} driver CPU", 0.0) + time.process_time() - cpu

    setattr(module, name, timed)


def run(
    preset: str, strategies: list[str] | None, num_samples: int | None, config_file: Path | None = None
) -> list[dict[str, Any]]:
    """The study's phases, its trials' parts summed, slot use and the ratio to the ideal
    (``config_file``: a study TOML over the preset, as ``--config`` of ``study.launch``)."""
    import ray

    from search_spaces import check_config
    from study import launch
    from study.config import load_config

    work = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    overrides = {"run_dir": str(work / "run"), "cache_dir": str(work / "cache")}
    overrides |= {"strategies": strategies, "num_samples": num_samples}
    config = check_config(
        load_config(
            preset, config_file=config_file, overrides={k: v for k, v in overrides.items() if v is not None}
        )
    )
    phases: dict[str, float] = {}
    reruns: list = []  # rerun_recommendations' calls
    replays: list = []  # missing_recommended_model's answers
    slots: list[int] = []  # trials at once on the study's Ray, read as its search starts
    experiment = launch.run_experiment

    def run_experiment(config: Any, run: Any, handover: Any, capacity: Any, *rest: Any) -> Any:
        slots.append(capacity.slots())
        return experiment(config, run, handover, capacity, *rest)

    launch.run_experiment = run_experiment
    for name in PHASES:
        _timed(launch, name, phases, reruns if name == "rerun_recommendations" else None)
    _timed(launch, "missing_recommended_model", {}, replays)
    started = time.perf_counter()
    try:
        launch.run_study(config)
        total = time.perf_counter() - started
        ray.shutdown()
        time.sleep(5)  # Ray's processes take a few seconds to exit; the bare work runs alone
        trials = trial_parts(work / "run")
        planned = [
            (t.trial_id, t.epoch, call["other"] if t.elsewhere else None, t.bn_modes)
            for call, _ in reruns
            for t in call["asked"]
        ]
        missing = [(m.trial_id, m.epoch) for _, m in replays if m is not None]
        bare = bare_work(work / "run", planned, missing, progress=print)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return overhead_rows(trials, phases, total, slots[0], bare)


def trial_parts(run_dir: Path) -> pd.DataFrame:
    """Per trial: each part summed over its reports, its span and its worker's peak RSS."""
    from ray.tune import ExperimentAnalysis

    from study.run.results import unpacked
    from study.run.rundir import RunDir

    storage = RunDir.open(run_dir)[0].storage
    fs, _ = storage.filesystem()
    analysis = ExperimentAnalysis(storage.experiment_path, storage_filesystem=fs)
    rows = []
    for trial_id, packed_frame in analysis.trial_dataframes.items():
        frame = pd.DataFrame([unpacked(r) for r in packed_frame.to_dict("records")])
        if frame.empty or "seconds_train" not in frame:
            continue
        parts = {part: float(frame[part].fillna(0).sum()) for part in (*PARTS, "seconds_write")}
        # The last report is told to nobody; the trial waits for all of its write.
        last_write = parts["seconds_write"] / max(1, len(frame) - 1)
        parts["seconds_report"] += last_write
        parts["seconds_write"] += last_write
        entered, ended = float(frame["entered_at"].min()), float(frame["reported_at"].max()) + last_write
        rows.append(
            {"trial_id": trial_id, "pid": int(frame["pid"].iloc[0]), "entered_at": entered, "ended_at": ended}
            | parts
            | {
                "span": ended - entered,
                "peak_rss_mb": float(frame["peak_rss_mb"].max()),
                "reports": len(frame),
            }
        )
    return pd.DataFrame(rows)


def bare_work(
    run_dir: Path,
    reruns: list[tuple[str, int, Any, bool]],
    replays: list[tuple[str, int]],
    progress: Callable[[str], None] = lambda line: None,
) -> dict[str, float]:
    """Wall seconds of every model the study in ``run_dir`` trained, trained again here,
    without Ray, one thread, one after another; named ``kind:what`` (``KINDS``).

    ``reruns``: the trials ``rerun_recommendations`` was asked to rerun, ``(trial id, epoch,
    other forget set's cohort or None, bn_modes)``; ``replays``: ``(trial id, epoch)`` of each replay of the
    recommendation to its horizon. Trials differ in cost (strategies train on different
    subjects, ``bn_mode`` recalibrate adds a pass), so each is timed, not one for all.
    """
    from search_spaces import STRATEGIES
    from study.cohort import open_cohort
    from study.model import initial_state
    from study.run.results import trial_config
    from study.run.rundir import RunDir
    from trainables.baseline import measure, train_model
    from trainables.recipes import KINDS as BASELINES
    from trainables.recipes import cache_key, recipes
    from trainables.reruns import forget_label, planned_reruns
    from trainables.settings import Compute
    from trainables.trial import TrialSpec, run_trial

    run, config = RunDir.open(run_dir)
    trials = run.read_trials()
    cohort = open_cohort(config)
    compute = Compute.of(config, threads=1)
    start, _ = initial_state(config, cohort.n_classes)
    seconds: dict[str, float] = {}

    def timed(name: str, work: Callable[..., Any], *args: Any) -> Any:
        began = time.perf_counter()
        result = work(*args)
        seconds[name] = time.perf_counter() - began
        progress(f"bare: {name} {seconds[name]:.1f} s")
        return result

    by_key = {}  # cache key -> state: a model the run trained once serves every role
    for name, recipe in recipes(config, cohort).items():
        trained = timed(f"model:{name}", train_model, name, recipe, config, cohort, start, compute, False)
        by_key[cache_key(config, cohort, recipe)] = trained[0]
    states = {kind: run.load_baseline(kind) for kind in BASELINES}
    reference, _ = measure(config, cohort, states, compute)
    others = {}  # forget set -> (its cohort, its Reference): the other forget set's reruns
    for _, _, other, _ in reruns:
        if other is None or (label := forget_label(other)) in others:
            continue
        recipe = recipes(config, other)["retrain"]
        if (key := cache_key(config, other, recipe)) not in by_key:  # the run trained it too
            args = ("retrain", recipe, config, other, start, compute, False)
            by_key[key] = timed(f"model:retrain without {label}", train_model, *args)[0]
        other_states = {"original": states["original"], "retrain": by_key[key]}
        others[label] = (other, measure(config, other, other_states, compute)[0])

    def strategy(params: dict[str, Any]) -> Any:
        return STRATEGIES[params["strategy"]].strategy

    for trial_id in trials["trial_id"].unique():
        params = trial_config(trials, trial_id)
        spec = TrialSpec.of(config, strategy(params), params)
        timed(f"trial:{trial_id}", run_trial, spec, cohort, states["original"], reference)
    for trial_id, epoch in replays:
        params = trial_config(trials, trial_id)
        spec = TrialSpec.of(config, strategy(params), params, epoch)
        timed(f"replay:{trial_id}", run_trial, spec, cohort, states["original"], reference)
    mine = forget_label(cohort)
    for trial_id, epoch, other, bn_modes in reruns:
        params = trial_config(trials, trial_id)
        elsewhere = forget_label(other) if other is not None else None
        for r in planned_reruns(config, params["bn_mode"], mine, elsewhere, bn_modes):
            spec = TrialSpec.of(config, strategy(params), params, epoch, **r.changes)
            on, against = (cohort, reference) if r.forget == mine else others[r.forget]
            name = f"rerun:{trial_id} {r.column} {r.value} on {r.forget}"
            timed(name, run_trial, spec, on, states["original"], against)
    return seconds


def overhead_rows(
    trials: pd.DataFrame, phases: dict[str, float], total: float, slots: int, bare: dict[str, float]
) -> list[dict]:
    """The table: the phases, each trial part's share of slot time, slot use, compute share,
    the bare work of each kind (``bare``: ``bare_work``'s answer) and the ratio to the ideal."""
    search = phases["run_experiment"]
    slot_time = slots * search
    first_entry = trials.groupby("pid")["entered_at"].min()
    # A worker's gaps: from a trial's end to its next trial's entry on the same process.
    gaps = sum(
        (group["entered_at"].iloc[1:].to_numpy() - group["ended_at"].iloc[:-1].to_numpy()).clip(0).sum()
        for _, group in trials.sort_values("entered_at").groupby("pid")
    )
    worker_start = float((first_entry - phases["run_experiment started at"]).sum())
    rows = [
        {"part": "whole run (cohort, baselines, search, reruns, scores, report)", "seconds": total},
        {"part": "cohort written (first run) and read", "seconds": phases.get("open_cohort", 0.0)},
        {"part": "Ray started (or joined)", "seconds": phases.get("connect", 0.0)},
        {"part": "baselines (trained, measured)", "seconds": phases.get("train_or_load_baselines", 0.0)},
        {"part": f"search phase (Tune experiment, {slots} slots)", "seconds": search},
        {
            "part": "search phase: the driver's CPU (Tune's controller)",
            "seconds": phases["run_experiment driver CPU"],
        },
        {"part": "recommended model replayed", "seconds": phases.get("save_recommended_model", 0.0)},
        {"part": "reruns of the recommendation", "seconds": phases.get("rerun_recommendations", 0.0)},
        {"part": "scores on the native grid", "seconds": phases.get("score_on_native_grid", 0.0)},
        {"part": "report", "seconds": phases.get("build_report", 0.0)},
    ]
    parts = [
        {"part": f"trials: {p.removeprefix('seconds_')}", "seconds": float(trials[p].sum())} for p in PARTS
    ]
    parts += [
        {
            "part": "trials: checkpoint write and report, in the background",
            "seconds": float(trials["seconds_write"].sum()),
        },
        {"part": "trials: gaps between trials on a worker", "seconds": float(gaps)},
        {"part": "workers: from the experiment's start to their first trial", "seconds": worker_start},
    ]
    rows += [row | {"share of slot time": row["seconds"] / slot_time} for row in parts]
    compute = float((trials["seconds_train"] + trials["seconds_eval"]).sum())
    rows += [
        {"part": "trial compute share (train + eval) / span", "ratio": compute / float(trials["span"].sum())},
        {
            "part": "slot use: sum of trial spans / (slots x search phase)",
            "ratio": float(trials["span"].sum()) / slot_time,
        },
    ]
    for kind, what in KINDS.items():
        mine = [v for k, v in bare.items() if k.partition(":")[0] == kind]
        if mine:
            rows.append({"part": f"bare (no Ray, 1 thread): {len(mine)} {what}", "seconds": sum(mine)})
    trial_bare = sum(v for k, v in bare.items() if k.startswith("trial:"))
    trial_ideal, ideal = trial_bare / slots, sum(bare.values()) / slots
    rows += [
        {
            # Above 1: the trials' training and evaluation alone ran slower side by side on the
            # machine's cores than one at a time (shared caches and memory bandwidth).
            "part": "trials' train + eval in the study / their bare seconds",
            "ratio": compute / trial_bare,
        },
        {"part": f"ideal: every model's bare seconds / {slots} slots", "seconds": ideal},
        {"part": "whole run / ideal", "ratio": total / ideal},
        {
            "part": "search phase / its ideal (the trials' bare seconds / slots)",
            "ratio": search / trial_ideal,
        },
        {"part": "peak RSS of a trial worker (MB)", "ratio": float(trials["peak_rss_mb"].max())},
    ]
    return rows
