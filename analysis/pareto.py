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
