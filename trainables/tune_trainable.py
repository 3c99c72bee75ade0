"""The Ray Tune function trainable: a thin wrapper that runs the epoch loop for one trial.

Ray is imported here only; the loop itself runs without it. What a trial needs from the
driver arrives as a ``Handover`` of Ray object references, put once per study: no trial
opens a file of the driver's.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from study.config import StudyConfig
from study.metrics import Reference
from study.run.checkpoint import TrialCheckpoint
from study.run.results import packed
from study.run.storage import trial_dirname
from trainables.strategy import Strategy
from trainables.trial import TrialSpec, run_trial


@dataclass(frozen=True)
class Handover:
    """What every trial gets from the driver.

    ``cohort``: a reference to the preprocessed ``Cohort``; ``original_state``: a reference to
    the original model's state dict; ``reference``: the original and retrain models' figures
    that every trial is measured against; ``study``: the configuration; ``strategies``: the
    classes of the study's strategies (so a worker builds exactly what the driver checked).
    """

    study: StudyConfig
    strategies: dict[str, type[Strategy]]
    cohort: Any  # ray.ObjectRef[Cohort]
    original_state: Any  # ray.ObjectRef[dict[str, torch.Tensor]]
    reference: Reference


def unlearning_trial(params: dict[str, Any], *, handover: Handover) -> None:
    """Runs one trial (strategy ``params["strategy"]``) from the original model, resuming from
    Tune's checkpoint when it has one."""
    import ray
    from ray import tune

    entered = time.time()
    # One line per checkpoint from Ray Train ("Checkpoint successfully created at ...") says
    # nothing a person needs: the study tells each trial's start and end.
    logging.getLogger("ray.train._internal.storage").setLevel(logging.WARNING)
    spec = TrialSpec.of(handover.study, handover.strategies[params["strategy"]], params)
    cohort, original_state = ray.get([handover.cohort, handover.original_state])
    resume = None
    if (checkpoint := tune.get_checkpoint()) is not None:
        with checkpoint.as_directory() as folder:
            resume = TrialCheckpoint.load(Path(folder))  # None: a lost checkpoint, start again
    node = ray.get_runtime_context().get_node_id()  # which node ran it, in Tune's result files
    reports = BackgroundReports(entered, {"node_id": node}, PeakMemory())
    try:
        run_trial(spec, cohort, original_state, handover.reference, reports.submit, resume)
    finally:
        reports.close()  # the last report (and its checkpoint) reaches Tune before the trial ends


class BackgroundReports:
    """A trial's reports to Tune, each written and handed over on a background thread so that
    the next epochs train meanwhile (a paper-size checkpoint is about 560 MB).

    One report at a time, in order: ``submit`` first waits for the previous one, and raises
    its error. Each report carries where the trial's time went (``python -m study.bench
    overhead``): its set-up before the first epoch (told with the first report),
    ``seconds_report``, how long the loop waited here for the previous report, and
    ``seconds_write``, how long that one took in the background (checkpoint file, upload to
    storage and Tune's acknowledgement). Tune is handed each report ``packed``
    (``study.run.results``): the epoch, divergence and objectives as numbers, the other
    figures in one JSON string.
    """

    def __init__(self, entered: float, extra: dict[str, Any], memory: PeakMemory | None = None) -> None:
        self._entered = entered
        self._extra = extra
        self._memory = memory or PeakMemory()
        self._timing = {"entered_at": entered, "seconds_report": 0.0, "seconds_write": 0.0}
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tune-report")
        self._pending: Future[float] | None = None

    def submit(self, metrics: dict[str, float], checkpoint: TrialCheckpoint | None) -> None:
        """Hands ``metrics`` (and the ``checkpoint``, a copy the loop no longer changes) to the
        background thread."""
        started = time.time()
        if "seconds_setup" not in self._timing:
            epoch = sum(metrics.get(k, 0.0) for k in ("seconds_train", "seconds_eval", "seconds_snapshot"))
            self._timing["seconds_setup"] = started - self._entered - epoch
        written = self.wait()
        peak_rss_mb = self._memory.peak_mb()
        self._timing.update(seconds_report=time.time() - started, seconds_write=written)
        metrics = {
            **metrics,
            **self._timing,
            **self._extra,
            "reported_at": started,
            "peak_rss_mb": peak_rss_mb,
        }
        self._timing["seconds_setup"] = 0.0
        self._pending = self._pool.submit(_report, packed(metrics), checkpoint)

    def wait(self) -> float:
        """Waits for the report in flight; returns its seconds (0 when none was)."""
        pending, self._pending = self._pending, None
        return pending.result() if pending is not None else 0.0

    def close(self) -> None:
        """Waits for the report in flight and ends the background thread."""
        try:
            self.wait()
        finally:
            self._pool.shutdown()


class PeakMemory:
    """The peak resident memory of this process since this trial started: Tune reuses a
    worker for the next trial, so the process's lifetime peak (``ru_maxrss``) would carry
    an earlier trial's. On Linux the kernel's high-water mark (``VmHWM``) is reset as the
    trial starts (``/proc/self/clear_refs``); elsewhere, or where that is refused, the
    figure is the process's lifetime peak (``per_trial`` says which)."""

    def __init__(self) -> None:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS to the current RSS
            self.per_trial = self._high_water_kb() is not None
        except OSError:
            self.per_trial = False

    def peak_mb(self) -> float:
        """Megabytes (MiB) at most resident since the trial started (see the class)."""
        kb = self._high_water_kb() if self.per_trial else None
        return (kb if kb is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024

    @staticmethod
    def _high_water_kb() -> int | None:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
        except (OSError, ValueError, IndexError):
            pass
        return None


def _report(metrics: dict[str, float], checkpoint: TrialCheckpoint | None) -> float:
    """One report to Tune, with its ``checkpoint`` when given; returns its seconds."""
    from ray import tune

    started = time.perf_counter()
    if checkpoint is None:
        tune.report(metrics)
    else:
        with tempfile.TemporaryDirectory() as folder:
            checkpoint.save(Path(folder))
            saved = tune.Checkpoint.from_directory(folder)
            saved.set_metadata({"epoch": checkpoint.epoch})
            tune.report(metrics, checkpoint=saved)
    return time.perf_counter() - started


def trial_folder(trial: Any) -> str:
    """``trial_dirname_creator`` for Tune: the run directory's name for a trial's folder."""
    return trial_dirname(trial.trial_id)


def trial_name(trial: Any) -> str:
    """``trial_name_creator`` for Tune: its strategy and id, as Tune's progress table shows it."""
    return f"{trial.config.get('strategy', 'trial')}_{trial.trial_id}"
