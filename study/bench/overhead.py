"""``python -m study.bench overhead``: where a study's wall time goes, on a local Ray.

A study of the chosen preset runs as ``python -m study.launch`` runs it, in a fresh cache
(cohort written, baselines trained: a first run on a new machine), with the reruns of the
recommendation left out. Its phases are timed on the driver; each trial's parts come from
what every report carries into Tune's results (``seconds_train``, ``seconds_eval``,
``seconds_snapshot``, ``seconds_setup``, ``seconds_report``, ``seconds_write``, ``entered_at``,
``reported_at``, ``peak_rss_mb``; see ``trainables/tune_trainable.py``), read back with Tune's
``ExperimentAnalysis``. Then every trial runs again bare (no Ray, in this process, one thread): the ideal study
is the sum of those times / slots.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

#: The parts of a trial's span, as its reports name them.
PARTS = ("seconds_setup", "seconds_train", "seconds_eval", "seconds_snapshot", "seconds_report")


def _timed(module: Any, name: str, phases: dict[str, float]) -> None:
    """Wraps ``module.name`` so that each call's wall time adds to ``phases[name]``."""
    function = getattr(module, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        phases[f"{name} started at"] = time.time()
        started, cpu = time.perf_counter(), time.process_time()
        try:
            return function(*args, **kwargs)
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
    overrides = {"run_dir": str(work / "run"), "cache_dir": str(work / "cache"), "seed_reruns": 0}
    overrides |= {"bn_mode_reruns": False, "strategies": strategies, "num_samples": num_samples}
    config = check_config(
        load_config(
            preset, config_file=config_file, overrides={k: v for k, v in overrides.items() if v is not None}
        )
    )
    phases: dict[str, float] = {}
    for name in ("open_cohort", "connect", "train_or_load_baselines", "run_experiment", "build_report"):
        _timed(launch, name, phases)
    started = time.perf_counter()
    try:
        launch.run_study(config)
        total = time.perf_counter() - started
        slots = int(ray.cluster_resources().get("CPU", 1)) // config.cpus_per_trial
        ray.shutdown()
        time.sleep(5)  # Ray's processes take a few seconds to exit; the bare trials run alone
        trials = trial_parts(work / "run")
        bare = _bare_trial_seconds(work / "run")
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return overhead_rows(trials, phases, total, slots, bare)


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


def _bare_trial_seconds(run_dir: Path) -> dict[str, float]:
    """Per trial: the wall seconds of the same trial run again in this process, without Ray,
    one thread (trials differ in cost: strategies train on different subjects, and
    ``bn_mode`` recalibrate adds a pass)."""
    from search_spaces import STRATEGIES
    from study.cohort import open_cohort
    from study.run.results import trial_config
    from study.run.rundir import RunDir
    from trainables.baseline import KINDS, measure
    from trainables.settings import Compute
    from trainables.trial import TrialSpec, run_trial

    run, config = RunDir.open(run_dir)
    trials = run.read_trials()
    cohort = open_cohort(config)
    states = {kind: run.load_baseline(kind) for kind in KINDS}
    reference, _ = measure(config, cohort, states, Compute.of(config))
    seconds = {}
    for trial_id in trials["trial_id"].unique():
        params = trial_config(trials, trial_id)
        spec = TrialSpec.of(config, STRATEGIES[params["strategy"]].strategy, params)
        started = time.perf_counter()
        run_trial(spec, cohort, states["original"], reference)
        seconds[str(trial_id)] = time.perf_counter() - started
    return seconds


def overhead_rows(
    trials: pd.DataFrame, phases: dict[str, float], total: float, slots: int, bare: dict[str, float]
) -> list[dict]:
    """The table: the phases, each trial part's share, slot use, compute share, the ideal ratio."""
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
        {"part": "whole run (cohort, baselines, search, report)", "seconds": total},
        {"part": "cohort written (first run) and read", "seconds": phases.get("open_cohort", 0.0)},
        {"part": "Ray started (or joined)", "seconds": phases.get("connect", 0.0)},
        {"part": "baselines (trained, measured)", "seconds": phases.get("train_or_load_baselines", 0.0)},
        {"part": f"search phase (Tune experiment, {slots} slots)", "seconds": search},
        {
            "part": "search phase: the driver's CPU (Tune's controller)",
            "seconds": phases["run_experiment driver CPU"],
        },
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
    ideal = sum(bare.values()) / slots
    rows += [
        {"part": "trial compute share (train + eval) / span", "ratio": compute / float(trials["span"].sum())},
        {
            "part": "slot use: sum of trial spans / (slots x search phase)",
            "ratio": float(trials["span"].sum()) / slot_time,
        },
        {"part": "bare trial (no Ray, 1 thread), mean", "seconds": sum(bare.values()) / len(bare)},
        {"part": f"ideal: {len(bare)} bare trials / {slots} slots", "seconds": ideal},
        {"part": "whole run / ideal", "ratio": total / ideal},
        {"part": "search phase / ideal", "ratio": search / ideal},
        {"part": "peak RSS of a trial worker (MB)", "ratio": float(trials["peak_rss_mb"].max())},
    ]
    return rows
