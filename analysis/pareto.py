"""The non-dominated set of trials on objectives that are all maximised."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.config import OBJECTIVES as VIEWS
from study.run.results import candidates, final_rows

#: The reference study's objectives, the default view of every front and knee.
OBJECTIVES = VIEWS["reference"]


def non_dominated_mask(points: np.ndarray) -> np.ndarray:
    """Boolean mask ``(N,)`` of the rows of ``points (N, K)`` that no other row dominates.

    Every objective is maximised. A row is dominated when another is at least as good in
    every objective and better in one; equal rows do not dominate each other, so duplicates
    of a front point all stay on it. Rows with a NaN are never on the front.
    """
    points = np.asarray(points, dtype=float)
    finite = np.isfinite(points).all(axis=1)
    mask = finite.copy()
    for i in np.flatnonzero(finite):
        others = points[finite]
        dominated = (others >= points[i]).all(axis=1) & (others > points[i]).any(axis=1)
        mask[i] = not dominated.any()
    return mask


def pareto_front(rows: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> pd.DataFrame:
    """The non-dominated rows of ``rows``, best first objective first."""
    mask = non_dominated_mask(rows[list(objectives)].to_numpy())
    return rows[mask].sort_values(list(objectives), ascending=False).reset_index(drop=True)


def front_table(trials: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> str:
    """The non-dominated trials (final epochs) on ``objectives`` as a short text table; diverged
    trials left out. Holdout Dice beside retain Dice: retain Dice is measured on training subjects."""
    finals = final_rows(trials)
    front = pareto_front(candidates(finals), objectives)
    figures = ["forget_dice", "retain_dice", "holdout_dice", "score"]
    columns = ["strategy", "trial_id", "epoch", *objectives, *(f for f in figures if f not in objectives)]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        table = front[columns].to_string(index=False)
    diverged = len(finals) - len(candidates(finals))
    left_out = f"; {diverged} diverged, left out" if diverged else ""
    return f"\nnon-dominated trials ({len(front)} of {len(finals)}{left_out}), final epoch:\n{table}"


def hypervolume(points: np.ndarray, reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area dominated by 2-objective ``points (N, 2)`` (both maximised) above ``reference``.

    Points are clipped to the reference first, so a point worse than it in either objective
    adds nothing; NaN rows are ignored.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    points = points[np.isfinite(points).all(axis=1)]
    points = np.maximum(points - np.asarray(reference), 0.0)
    front = points[non_dominated_mask(points)]
    area, covered_y = 0.0, 0.0
    for x, y in sorted(map(tuple, front), key=lambda p: (-p[0], p[1])):
        if y > covered_y:
            area += x * (y - covered_y)
            covered_y = y
    return float(area)


#: What the ideal point (1, 1) of each view means, objective by objective.
IDEALS = {
    "forget_drop": "forget_drop = 1 (everything forgotten)",
    "retrain_match": "retrain_match = 1 (exactly the retrain reference's forget Dice)",
    "retain_kept": "retain_kept = 1 (every retain Dice kept)",
}


def knee_rule(objectives: tuple[str, ...] = OBJECTIVES) -> str:
    """How the knee on ``objectives`` is chosen, in words."""
    ideal = ", ".join(IDEALS[o] for o in objectives)
    return (
        f"the knee is the front point closest (Euclidean distance) to the ideal point {ideal}; "
        "the objectives are ratios of the original model's Dice, so they share one scale"
    )


def knee_index(front: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> int:
    """Row position in ``front`` of its knee (``knee_rule``)."""
    points = front[list(objectives)].to_numpy(dtype=float)
    return int(np.argmin(np.linalg.norm(points - 1.0, axis=1)))
