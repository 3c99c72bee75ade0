"""The retrain reference on the fronts of both views (``study/config/objectives.py``), and over-forgetting.

The retrain reference (the original recipe on retain subjects only) is exact unlearning: its
point on each view's plane is where a good trial lands. A trial whose forget Dice lies well
below the retrain reference's forgets more than exact unlearning does: it over-forgets, and
a forget set segmented worse than unseen subjects is itself a sign of membership.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.summary import Recommendation, at_horizons, fronts
from study.config import OBJECTIVES
from study.metrics import Reference, derived_metrics
from study.metrics.evidence import ForgetReference, subject_column
from study.metrics.membership import two_sided
from study.run.results import candidates

#: Forget Dice this far (absolute) below the retrain reference's is over-forgetting. Two
#: trainings of a small 3D segmentation network that differ only in their seed differ by a
#: few hundredths of Dice on a handful of subjects; 0.05 is past that noise, and a tenth of a
#: typical forget Dice of 0.5-0.8, so a flag means a real difference, not chance.
OVERFORGET_TOLERANCE = 0.05
OVERFORGET_RULE = (
    f"A trial forgets past retraining (over-forgets) when its forget Dice lies more than "
    f"{OVERFORGET_TOLERANCE} (absolute) below the retrain reference's: it then forgets more than "
    "exact unlearning does. The tolerance is past the seed-to-seed spread of Dice expected on a "
    "handful of subjects; the fresh-seed section measures that spread for the recommendation."
)
#: The figures that each knee's row shows, holdout Dice beside retain Dice.
KNEE_FIGURES = (
    "forget_dice",
    "retain_dice",
    "holdout_dice",
    "forget_drop",
    "retain_kept",
    "retrain_match",
)


def retrain_point(baselines: dict[str, dict[str, float]]) -> pd.Series | None:
    """The retrain reference's figures with the objectives of both views (its ``retrain_match``
    is 1), computed as every trial's are; ``None`` until both baselines are recorded."""
    if not {"original", "retrain"} <= baselines.keys():
        return None
    original, retrain = baselines["original"], baselines["retrain"]
    return pd.Series(retrain | derived_metrics(retrain, Reference(original, retrain, ())))


def overforget_below(baselines: dict[str, dict[str, float]]) -> float:
    """The forget Dice under which a trial forgets past retraining by the asserted tolerance;
    -inf (never) while the retrain reference has no metrics."""
    if "retrain" not in baselines:
        return -math.inf
    return baselines["retrain"]["forget_dice"] - OVERFORGET_TOLERANCE


def measured_rule(reference: ForgetReference) -> str:
    """``OVERFORGET_RULE`` where the retrain seeds measured their spread (the membership test)."""
    spread, df = reference.dice_spread
    return (
        "A trial forgets past retraining (over-forgets) when the Dice of one of its forget subjects "
        f"lies below the retrain seeds' Dice on that subject at two-sided p below {reference.level / 2:g} "
        f"(half the privacy level), with the seeds' spread on subjects they never saw as measured: "
        f"{spread:.3f} Dice ({df} degrees of freedom). This is the membership test's Dice test in "
        f"the direction over; it replaces the asserted tolerance of {OVERFORGET_TOLERANCE}."
    )


def forgets_past_retrain(
    rows: pd.DataFrame, baselines: dict[str, dict[str, float]], reference: ForgetReference | None = None
) -> pd.Series:
    """Bool per row of ``rows``: with the retrain seeds' ``reference``, one of its forget
    subjects' Dice (``dice@<subject>``) below theirs by the Dice test (``measured_rule``);
    without it, or for a row without those columns, its forget Dice below ``overforget_below``."""
    asserted = rows["forget_dice"] < overforget_below(baselines)
    columns = {s: subject_column("dice", s) for s in reference.dice} if reference else {}
    if not columns or not set(columns.values()) <= set(rows.columns):
        return asserted
    dice = rows[list(columns.values())]

    def over(row: pd.Series) -> bool:
        tests = [two_sided(row[c], reference.dice[s], reference.dice_spread) for s, c in columns.items()]
        return any(t.direction == "over" and t.distinguishable(reference.level / 2) for t in tests)

    measured = dice.apply(over, axis=1).astype(bool) if len(rows) else asserted
    return measured.where(dice.notna().all(axis=1), asserted)


def past_retrain_text(
    forget_dice: float,
    baselines: dict[str, dict[str, float]],
    past: bool | None = None,
    measured: bool = False,
) -> str:
    """``yes (forget Dice 0.10 vs 0.70, ...)``: the verdict on a trial with ``forget_dice``
    (``past``: as ``forgets_past_retrain`` found it, by the retrain seeds' measured spread when
    ``measured``), or why there is none."""
    if "retrain" not in baselines:
        return "unknown: the retrain reference has no metrics yet"
    past = forget_dice < overforget_below(baselines) if past is None else past
    versus = f"forget Dice {forget_dice:.2f} vs {baselines['retrain']['forget_dice']:.2f}"
    how = (
        "a forget subject's Dice test against the retrain seeds"
        if measured
        else f"tolerance {OVERFORGET_TOLERANCE}"
    )
    return f"{'yes' if past else 'no'} ({versus} of the retrain reference, {how})"


def overforgetting_counts(
    rows: pd.DataFrame, baselines: dict[str, dict[str, float]], horizons: list[int]
) -> pd.DataFrame:
    """Per strategy and over all: trials read at ``horizons`` and how many of them forget past
    retraining at one of those horizons or more; diverged trials left out."""
    shown = candidates(at_horizons(rows, horizons))
    flags = (
        shown["forgets_past_retrain"]
        if "forgets_past_retrain" in shown
        else forgets_past_retrain(shown, baselines)
    )
    past = shown.assign(past=flags.astype(bool))
    per_trial = past.groupby(["strategy", "trial_id"])["past"].any().reset_index()
    table = per_trial.groupby("strategy")["past"].agg(trials="size", forgets_past_retraining="sum")
    table.loc["all strategies"] = [len(per_trial), int(per_trial["past"].sum())]
    return table.astype(int).reset_index(names="strategy")


def fronts_by_view(rows: pd.DataFrame) -> pd.DataFrame:
    """Every view's fronts per horizon in one table with a ``view`` column (``pareto.parquet``)."""
    return pd.concat([fronts(rows, o).assign(view=v) for v, o in OBJECTIVES.items()], ignore_index=True)


def knees_by_view(
    knees: dict[str, Recommendation | None], baselines: dict[str, dict[str, float]], searched: str
) -> pd.DataFrame:
    """One row per view, its knee (``searched``: the study's view), then the retrain
    reference's row: the point each view's knee should approach."""
    lines = []
    for view, objectives in OBJECTIVES.items():
        knee = knees[view]
        line = {"view": view + (" (searched; the recommendation)" if view == searched else "")}
        line["maximises"] = ", ".join(objectives)
        if knee is None:
            lines.append(line | {"trial": "none: no trial has these figures at a configured horizon"})
            continue
        line["trial"] = f"{knee.strategy} {knee.trial_id} @ {knee.epoch} epochs"
        line |= {f: knee.figures[f] for f in KNEE_FIGURES}
        lines.append(
            line | {"forgets past retraining": past_retrain_text(knee.figures["forget_dice"], baselines)}
        )
    retrain = retrain_point(baselines)
    if retrain is not None:
        figures = {f: retrain.get(f, math.nan) for f in KNEE_FIGURES}
        lines.append({"view": "retrain reference (target)", "trial": "exact unlearning"} | figures)
    return pd.DataFrame(lines)
