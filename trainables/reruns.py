"""The recommended configuration rerun side by side on the cluster, to its horizon.

- with ``config.seed_reruns`` fresh seeds: how much of its figures was luck;
- the same seeds on another forget set of the cohort (``config.other_forget``), against that
  set's own retrain reference: whether the configuration carries over to other subjects;
- at its own seed under every other ``bn_mode``: BatchNorm statistics as a channel;
- the "safe to deploy" knee, where it is another trial, with the fresh seeds on the study's
  forget set: whether it passed the membership test by luck, and its per-subject epsilon.

One row per rerun and epoch, the figures of ``trials.parquet`` plus what was changed, go to
``seeds.parquet`` (column ``forget``: the forget set) and ``bn_modes.parquet``. A rerun
already in those tables (a resumed study) is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
import torch

from study.cohort import Cohort
from study.config import StudyConfig
from study.metrics import Reference
from study.run.cluster import remote
from study.run.console import Progress
from study.run.results import trial_config
from study.run.rundir import RunDir
from trainables.baseline import KINDS, reference_models
from trainables.settings import BN_MODES
from trainables.trial import FRESH_SEEDS, TrialSpec, run_trial
from trainables.tune_trainable import Handover

#: The table of each kind of rerun: ``seeds.parquet`` and ``bn_modes.parquet``.
COLUMNS = ("seed", "bn_mode")


@dataclass(frozen=True)
class Rerun:
    """One rerun: ``column`` (``"seed"`` or ``"bn_mode"``) set to ``value`` on forget set ``forget``."""

    column: str
    value: Any
    forget: str  # subject ids joined by ","

    @property
    def changes(self) -> dict[str, Any]:
        """What differs from the trial's own config."""
        if self.column == "seed":
            return {"trial_number": FRESH_SEEDS + self.value}
        return {"bn_mode": self.value}


def forget_label(cohort: Cohort) -> str:
    """How the tables name ``cohort``'s forget set: ``"070,148"``."""
    return ",".join(cohort.split.forget)


def planned_reruns(
    config: StudyConfig, bn_mode: str, own: str, other: str | None, bn_modes: bool = True
) -> list[Rerun]:
    """Every rerun ``config`` asks for, of a trial run with ``bn_mode`` on forget set ``own``
    (``bn_modes``: with the ``bn_mode`` reruns too, where ``config`` asks for them)."""
    seeds = range(config.seed_reruns)
    planned = [Rerun("seed", k, own) for k in seeds]
    if other is not None:
        planned += [Rerun("seed", k, other) for k in seeds]
    if config.bn_mode_reruns and bn_modes:
        planned += [Rerun("bn_mode", m, own) for m in BN_MODES if m != bn_mode]
    return planned


def done_reruns(run: RunDir, trial_id: str, own: str) -> dict[str, list[dict[str, Any]]]:
    """Per column (``"seed"``, ``"bn_mode"``): the rows of ``trial_id``'s reruns already in the
    run directory's tables."""
    rows: dict[str, list[dict[str, Any]]] = {column: [] for column in COLUMNS}
    for column, table in zip(COLUMNS, (run.read_seed_runs(), run.read_bn_mode_runs()), strict=True):
        if table is not None:
            table = table[table["trial_id"] == trial_id]
            if "forget" not in table:  # written before other forget sets were rerun
                table = table.assign(forget=own)
            rows[column] = table.to_dict("records")
    return rows


def pending_reruns(planned: list[Rerun], done: dict[str, list[dict[str, Any]]]) -> list[Rerun]:
    """The ``planned`` reruns without rows among ``done`` (``done_reruns``' answer)."""
    finished = {Rerun(column, row[column], row["forget"]) for column, rows in done.items() for row in rows}
    return [r for r in planned if r not in finished]


def _reports(
    spec: TrialSpec, cohort: Cohort, original: dict[str, torch.Tensor], reference: Reference
) -> list:
    """Every report of the trial ``spec``: what a rerun's task sends back (its model is not kept)."""
    return run_trial(spec, cohort, original, reference).reports


@dataclass(frozen=True)
class RerunOf:
    """A trial whose reruns are asked for: ``trial_id`` to ``epoch``; ``elsewhere``: its fresh
    seeds on the other forget set too; ``bn_modes``: under every other ``bn_mode`` too."""

    trial_id: str
    epoch: int
    elsewhere: bool = True
    bn_modes: bool = True


def rerun_recommendations(
    config: StudyConfig,
    run: RunDir,
    asked: list[RerunOf],
    handover: Handover,
    other: Cohort | None,
    start: dict[str, torch.Tensor],
    local: bool = False,
) -> None:
    """Runs the reruns of every trial ``asked`` that the tables do not hold yet, all side by
    side on the cluster, the longest (to the latest epoch) first (the recommendation's and the
    "safe to deploy" knee's are one batch: the phase takes as long as its longest rerun, not
    the sum of two batches).

    ``other``: the cohort with another forget set (``None``: none); its retrain reference is
    found in the cache (the baselines phase trains it) or trained from ``start`` first. It is
    measured in this process on a ``local`` Ray (a task would add only a worker's start-up).
    """
    import ray

    trials, own = run.read_trials(), ",".join(config.forget)
    elsewhere_label = forget_label(other) if other is not None else None
    params, rows, todo = {}, {}, []
    for a in asked:
        params[a.trial_id] = trial_config(trials, a.trial_id)
        rows[a.trial_id] = done_reruns(run, a.trial_id, own)
        planned = planned_reruns(
            config, params[a.trial_id]["bn_mode"], own, elsewhere_label if a.elsewhere else None, a.bn_modes
        )
        if mine := pending_reruns(planned, rows[a.trial_id]):
            print(
                f"rerunning trial {a.trial_id} to epoch {a.epoch}: "
                + ", ".join(f"{r.column} {r.value} on {r.forget}" for r in mine)
            )
            todo += [(a, r) for r in mine]
    if not todo:
        return
    task = remote(config, _reports)
    cohorts, references = {own: handover.cohort}, {own: handover.reference}
    if any(r.forget != own for _, r in todo):  # the other forget set's retrain reference, measured
        cohorts[elsewhere_label] = ray.put(other)
        known = {"original": ray.get(handover.original_state)}
        cores = 1 if local else None
        training = reference_models(
            config, other, start, known, cores=cores, cohort_ref=cohorts[elsewhere_label], names=KINDS
        )
        references[elsewhere_label] = training.result().reference
    names = ", ".join(dict.fromkeys(a.trial_id for a, _ in todo))
    progress = Progress(f"reruns of trial {names}", len(todo))  # from the first one's start
    pending = {}
    for a, r in sorted(todo, key=lambda rerun: -rerun[0].epoch):  # the longest first: a short tail
        strategy = handover.strategies[params[a.trial_id]["strategy"]]
        spec = TrialSpec.of(config, strategy, params[a.trial_id], a.epoch, **r.changes)
        reference = references[r.forget]
        pending[a, r] = (reference, task.remote(spec, cohorts[r.forget], handover.original_state, reference))
    reports: dict[tuple[RerunOf, Rerun], Any] = {}
    waiting = {ref: key for key, (_, ref) in pending.items()}
    while waiting:  # told as each finishes, side by side on the cluster
        (done, *_), _ = ray.wait(list(waiting))
        a, r = key = waiting.pop(done)
        reports[key] = ray.get(done)
        progress.step(f"{r.column} {r.value} on {r.forget}" + (f" of {a.trial_id}" if len(asked) > 1 else ""))
    for a, r in todo:  # the tables in the order the reruns were planned
        reference = pending[a, r][0]
        strategy = params[a.trial_id]["strategy"]
        base = {"strategy": strategy, "trial_id": a.trial_id, "forget": r.forget, r.column: r.value}
        base |= {"original_forget_dice": reference.original["forget_dice"]}
        base |= {"retrain_forget_dice": reference.retrain["forget_dice"]}
        rows[a.trial_id][r.column] += [base | report for report in reports[a, r]]
    tables = (run.read_seed_runs(), run.read_bn_mode_runs())
    writes = (run.write_seed_runs, run.write_bn_mode_runs)
    for column, table, write in zip(COLUMNS, tables, writes, strict=True):
        if any(r.column == column for _, r in todo):
            # Other trials' rows stay as they are; the rows of those asked now are written whole.
            others = [] if table is None else [table[~table["trial_id"].isin(list(rows))]]
            asked_rows = [pd.DataFrame(rows[t][column]) for t in rows if rows[t][column]]
            write(pd.concat([*others, *asked_rows], ignore_index=True))
