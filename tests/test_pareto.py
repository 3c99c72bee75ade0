"""The non-dominated set on (forget_drop, retain_kept), both maximised."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.pareto import non_dominated_mask, pareto_front


def test_dominated_points_leave_the_front_and_duplicates_stay():
    points = np.array(
        [
            [0.9, 0.5],  # front
            [0.5, 0.9],  # front
            [0.5, 0.5],  # dominated by both
            [0.9, 0.5],  # duplicate of a front point: stays
            [0.7, 0.7],  # front
            [0.7, 0.6],  # dominated by (0.7, 0.7): a tie in one objective
        ]
    )
    assert non_dominated_mask(points).tolist() == [True, True, False, True, True, False]


def test_nan_rows_are_never_on_the_front_and_never_dominate():
    points = np.array([[math.nan, 1.0], [0.2, 0.2], [1.0, math.nan]])
    assert non_dominated_mask(points).tolist() == [False, True, False]


def test_pareto_front_of_a_table_is_sorted_by_forget_drop():
    rows = pd.DataFrame(
        {"trial_id": ["a", "b", "c"], "forget_drop": [0.2, 0.8, 0.1], "retain_kept": [0.9, 0.7, 0.8]}
    )
    front = pareto_front(rows)
    assert front["trial_id"].tolist() == ["b", "a"]
