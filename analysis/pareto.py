"""The non-dominated set of trials on objectives that are all maximised."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.results import final_rows

OBJECTIVES = ("forget_drop", "retain_kept")


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


def front_table(trials: pd.DataFrame) -> str:
    """The non-dominated trials (final epochs) as a short text table."""
    finals = final_rows(trials)
    front = pareto_front(finals)
    columns = ["strategy", "trial_id", "epoch", *OBJECTIVES, "forget_dice", "retain_dice", "score"]
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.precision", 3):
        table = front[columns].to_string(index=False)
    return f"\nnon-dominated trials ({len(front)} of {len(finals)}), final epoch:\n{table}"


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


KNEE_RULE = (
    "the knee is the front point farthest from the straight line joining the front's two "
    "extreme points, with both objectives rescaled to [0, 1] over the front; on a front of "
    "one or two points, the point with the higher score"
)


def knee_index(front: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> int:
    """Row position in ``front`` of its knee (``KNEE_RULE``)."""
    if len(front) < 3:
        return int(np.argmax(front["score"].to_numpy()))
    points = front[list(objectives)].to_numpy(dtype=float)
    span = points.max(axis=0) - points.min(axis=0)
    scaled = (points - points.min(axis=0)) / np.where(span > 0, span, 1.0)
    a, b = scaled[np.argmax(scaled[:, 0])], scaled[np.argmax(scaled[:, 1])]
    chord = b - a
    norm = np.hypot(*chord)
    if norm == 0:
        return int(np.argmax(front["score"].to_numpy()))
    distance = np.abs(chord[0] * (scaled[:, 1] - a[1]) - chord[1] * (scaled[:, 0] - a[0])) / norm
    return int(np.argmax(distance))
