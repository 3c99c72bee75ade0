"""``python -m study.bench scale``: the study's bookkeeping per trial against Tune's own.

For each N, a study of N tiny trials (the smoke preset, one epoch; a network that trains in
well under a second) runs through the study's whole machinery, ``study.launch.run_study``:
the searcher with one Optuna study per strategy, the trainable with its background reports
and checkpoints, the checkpoint pruner, what Tune keeps of a finished trial, the trial
lines, the results reader (the cohort and the baselines come from the cache, as a second
``study.launch`` finds them; only the search phase is timed). Ray is local, with S logical
CPUs (a slot each), so S trials share this machine's cores. Then a bare Tune run of N
function trials, each sleeping the study's mean trial compute (train + eval, as the
trials measured it) and reporting as often, with the same S slots; with ``--bare busy``,
also (or instead) one whose trials spin a core that long: where the slots outnumber the
cores, the study's trials load the machine that the driver shares, and sleeping ones do not.

Overhead per trial is the slot-seconds a trial holds beyond its compute, S x wall / N -
compute; Ray's own benchmark of Tune (10,000 one-second trials on 16 CPUs in 715 s against
625 s) is 0.14 s by this measure. The minimum ratio is the wall time over N x compute / S.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

#: The tiny study: the smoke preset, one epoch, one checkpoint a trial.
OVERRIDES: dict[str, Any] = {
    "strategies": ["noisy_label", "max_loss"],
    "max_epochs": 1,
    "horizons": [1],
    "checkpoint_every": 1,
    "seed_reruns": 0,
    "bn_mode_reruns": False,
    "native_scores": False,
    "dashboard": False,
    "cpus_per_trial": 1,
}


#: How a bare trial passes its compute time (``--bare``): asleep, or spinning a core.
BARE = ("sleep", "busy")


def run(sizes: list[int], slots: int, sampler: str, bare: Sequence[str] = ("sleep",)) -> list[dict[str, Any]]:
    """A study row and a bare-Tune row per N in ``sizes`` and way in ``bare`` (``BARE``),
    then the extrapolation to 10,000."""
    import ray

    from study.config import StudyError

    own = not ray.is_initialized()  # a Ray already up (a test's) is used as it is
    if own:
        ray.init(
            num_cpus=slots,
            include_dashboard=False,
            _temp_dir=tempfile.mkdtemp(prefix="ray-"),  # short: Ray's sockets live there
            log_to_driver=False,
        )
    elif (cpus := int(ray.cluster_resources().get("CPU", 0))) != slots:
        raise StudyError(f"--slots {slots}: the Ray this process is connected to has {cpus} CPUs")
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    rows: list[dict[str, Any]] = []
    try:
        for n in sizes:
            print(f"study of {n} trials on {slots} slots ...", flush=True)
            study = _study(work, n, slots, sampler)
            rows.append(study)
            for way in bare:
                print(f"  {study['wall_s']:.0f} s; bare Tune run of {n} trials ({way}) ...", flush=True)
                rows.append(
                    _bare_tune(work, n, slots, study["compute_s_per_trial"], study["reports_per_trial"], way)
                )
    finally:
        if own:
            ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    return [*rows, _at_ten_thousand(rows)]


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """The headline figures at the largest N: the study's overhead per trial over each bare
    run's (``overhead_ratio``: the sleeping one's, ``overhead_ratio_busy``: the busy one's),
    the study's wall over its minimum, the state bytes per trial."""
    largest = max(r["trials"] for r in rows if r["run"] != "extrapolated")
    at_largest = {r["run"]: r for r in rows if r["trials"] == largest}
    study = at_largest["study"]
    figures: dict[str, float] = {}
    for way, key in (("sleep", "overhead_ratio"), ("busy", "overhead_ratio_busy")):
        if (bare := at_largest.get(_bare_kind(way))) is not None:
            figures[key] = study["overhead_s_per_trial"] / max(bare["overhead_s_per_trial"], 1e-9)
    return figures | {
        "minimum_ratio": study["minimum_ratio"],
        "state_bytes_per_trial": study["state_bytes_per_trial"],
        "trials": largest,
    }


def _bare_kind(way: str) -> str:
    return "bare Tune" if way == "sleep" else f"bare Tune ({way})"


def _study(work: Path, n: int, slots: int, sampler: str) -> dict[str, Any]:
    """One study of ``n`` trials: its search phase timed on the driver, with Tune's state saves."""
    from study import launch
    from study.bench import overhead
    from study.config import load_config
    from study.run.rundir import RunDir

    strategies = OVERRIDES["strategies"]
    overrides = OVERRIDES | {
        "run_dir": str(work / f"study-{n}"),
        "num_samples": -(-n // len(strategies)),
        "sampler": sampler,
    }
    config = load_config("smoke", overrides=overrides)
    search: dict[str, float] = {}
    log = work / f"study-{n}.log"
    with _timed_search(launch, search), _saves_counted() as saves, _to_file(log):
        launch.run_study(config)
    run = RunDir.open(config.run_dir)[0]
    started = time.perf_counter()
    trials = run.read_trials()  # the results reader, as the report reads them
    read_s = time.perf_counter() - started
    parts = overhead.trial_parts(run.path)  # each trial's own account of its time
    compute = float((parts["seconds_train"] + parts["seconds_eval"]).mean())
    n_done, reports = len(trials["trial_id"].unique()), round(float(parts["reports"].mean()))
    row = _row("study", n_done, slots, search["wall_s"], compute, reports, _state_bytes(run.storage), saves)
    return row | {
        # Where a trial's slot-seconds beyond its compute go: inside the trial (its set-up,
        # waiting on its reports) or between trials (Tune's scheduling, the searcher).
        "trial_setup_s": float(parts["seconds_setup"].mean()),
        "trial_report_wait_s": float(parts["seconds_report"].mean()),
        "trial_span_s": float(parts["span"].mean()),
        "between_trials_s": slots * search["wall_s"] / n_done - float(parts["span"].mean()),
        "driver_cpu_s": search["cpu_s"],
        "driver_peak_rss_mb": search["peak_rss_mb"],
        "results_read_s": read_s,
    }


def _bare_tune(work: Path, n: int, slots: int, compute: float, reports: int, way: str) -> dict[str, Any]:
    """``n`` Tune trials that pass ``compute`` seconds in ``reports`` reports (``way``: asleep
    or spinning a core), ``slots`` at once."""
    from ray import tune

    from study.run.storage import ExperimentStorage
    from trainables.tune_trainable import PeakMemory

    folder = work / f"bare-{way}-{n}"
    tuner = tune.Tuner(
        tune.with_resources(_bare_trial, {"CPU": 1}),
        param_space={"seconds": compute / reports, "reports": reports, "busy": way == "busy"},
        tune_config=tune.TuneConfig(num_samples=n, reuse_actors=True),
        run_config=tune.RunConfig(name="bare", storage_path=str(folder), verbose=0),
    )
    memory, started, cpu = PeakMemory(), time.perf_counter(), time.process_time()
    with _saves_counted() as saves:
        grid = tuner.fit()
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    state = _state_bytes(ExperimentStorage(str(folder), "bare"))
    return _row(_bare_kind(way), len(grid), slots, wall, compute, reports, state, saves) | {
        "driver_cpu_s": cpu,
        "driver_peak_rss_mb": memory.peak_mb(),
    }


def _bare_trial(config: dict[str, Any]) -> None:
    from ray import tune

    for epoch in range(1, config["reports"] + 1):
        if config["busy"]:
            end = time.perf_counter() + config["seconds"]
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(config["seconds"])
        tune.report({"epoch": epoch})


def _row(
    kind: str,
    n: int,
    slots: int,
    wall: float,
    compute: float,
    reports: int,
    state: int,
    saves: dict[str, float],
) -> dict[str, Any]:
    minimum = n * compute / slots
    return {
        "run": kind,
        "trials": n,
        "slots": slots,
        "compute_s_per_trial": compute,
        "reports_per_trial": reports,
        "wall_s": wall,
        "minimum_s": minimum,
        "minimum_ratio": wall / minimum,
        "overhead_s_per_trial": slots * wall / n - compute,
        "state_bytes": state,
        "state_bytes_per_trial": state / n,
        "state_saves": int(saves["count"]),
        "state_save_s": saves["seconds"],
    }


def _at_ten_thousand(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The study at 10,000 trials: its wall time on the line through the two largest Ns
    (a fixed start and a cost per trial; the state saved at each save grows with N, which
    this under-counts), the state per trial as at the largest N."""
    study = sorted((r for r in rows if r["run"] == "study"), key=lambda r: r["trials"])[-2:]
    if len(study) < 2:
        return {"run": "extrapolated", "trials": 10_000}
    (a, b), n = study, 10_000
    per_trial = (b["wall_s"] - a["wall_s"]) / (b["trials"] - a["trials"])
    wall = b["wall_s"] + per_trial * (n - b["trials"])
    compute, slots = b["compute_s_per_trial"], b["slots"]
    return {
        "run": "extrapolated",
        "trials": n,
        "slots": slots,
        "compute_s_per_trial": compute,
        "wall_s": wall,
        "minimum_s": n * compute / slots,
        "minimum_ratio": wall / (n * compute / slots),
        "overhead_s_per_trial": slots * wall / n - compute,
        "state_bytes": b["state_bytes_per_trial"] * n,
        "state_bytes_per_trial": b["state_bytes_per_trial"],
    }


def _state_bytes(storage: Any) -> int:
    """The size of the experiment's newest saved state file."""
    path = storage.newest_experiment_state()
    return len(storage.read_bytes(path)) if path else 0


@contextlib.contextmanager
def _timed_search(launch: Any, into: dict[str, float]) -> Iterator[None]:
    """``launch.run_experiment`` timed: its wall and driver CPU seconds, and the driver's
    peak RSS while it ran, into ``into``."""
    from trainables.tune_trainable import PeakMemory

    original = launch.run_experiment

    def timed(*args: Any, **kwargs: Any) -> Any:
        memory, started, cpu = PeakMemory(), time.perf_counter(), time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            into["wall_s"], into["cpu_s"] = time.perf_counter() - started, time.process_time() - cpu
            into["peak_rss_mb"] = memory.peak_mb()

    launch.run_experiment = timed
    try:
        yield
    finally:
        launch.run_experiment = original


@contextlib.contextmanager
def _saves_counted() -> Iterator[dict[str, float]]:
    """Tune's experiment-state saves on this driver (``TuneController.save_to_dir``): how
    many, and their seconds."""
    from ray.tune.execution.tune_controller import TuneController

    saves = {"count": 0.0, "seconds": 0.0}
    original = TuneController.save_to_dir

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            saves["count"] += 1
            saves["seconds"] += time.perf_counter() - started

    TuneController.save_to_dir = counted
    try:
        yield saves
    finally:
        TuneController.save_to_dir = original


@contextlib.contextmanager
def _to_file(path: Path) -> Iterator[None]:
    """The study's console (two lines a trial) into ``path``: the bench prints its own."""
    with path.open("w") as stream, contextlib.redirect_stdout(stream):
        yield
