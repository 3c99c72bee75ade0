"""The non-dominated set on (forget_drop, retain_kept), both maximised, and the choices made
from it: a diverged trial is never one."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.pareto import front_table, hypervolume, knee_index, non_dominated_mask, pareto_front
from analysis.summary import (
    FINAL,
    at_horizon,
    at_horizons,
    best_trials,
    by_horizon,
    diverged_label,
    fronts,
    horizon_label,
    horizon_rows,
    hypervolumes,
    paper_table,
    recommend,
)
from study.config import OBJECTIVES
from study.run.results import combine, trial_rows


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


def test_hypervolume_on_cases_computed_by_hand():
    assert hypervolume(np.array([[0.5, 0.5]])) == pytest.approx(0.25)
    # Two staircase steps: 0.8 x 0.2 + 0.2 x (0.8 - 0.2)
    assert hypervolume(np.array([[0.8, 0.2], [0.2, 0.8]])) == pytest.approx(0.28)
    # Dominated points, duplicates and NaN rows add nothing.
    more = np.array([[0.8, 0.2], [0.2, 0.8], [0.1, 0.1], [0.8, 0.2], [math.nan, 5.0]])
    assert hypervolume(more) == pytest.approx(0.28)
    # Below the reference point (0, 0) in one objective: clipped to zero area.
    assert hypervolume(np.array([[-0.3, 0.9]])) == 0.0
    assert hypervolume(np.array([[0.5, 1.0]]), reference=(0.5, 0.0)) == 0.0


def test_knee_is_the_front_point_closest_to_perfect_unlearning():
    front = pd.DataFrame(
        {"forget_drop": [0.95, 0.8, 0.1], "retain_kept": [0.3, 0.85, 1.0], "score": [0, 0, 0]}
    )
    # distances to (1, 1): 0.70, 0.25, 0.90
    assert knee_index(front) == 1


def _trial(strategy: str, trial_id: str, figures: list[tuple[float, float]], status: str) -> pd.DataFrame:
    """A trial's rows, one per epoch: ``figures`` = [(forget_drop, retain_kept), ...]; score their mean."""
    history = [
        {"epoch": epoch, "forget_drop": drop, "retain_kept": kept, "score": (drop + kept) / 2}
        for epoch, (drop, kept) in enumerate(figures, start=1)
    ]
    return trial_rows(strategy, trial_id, {"trial_number": 0, "lr": 1e-3}, history, status)


def _with_diverged_trials() -> pd.DataFrame:
    """Two finished trials, and two diverged ones whose last figures would dominate everything:
    ``blew`` diverged at epoch 1 (figures of a perfect unlearner), ``late`` at epoch 3."""
    return combine(
        [
            _trial("noisy_label", "good", [(0.2, 0.9), (0.4, 0.8), (0.5, 0.8), (0.6, 0.7)], "terminated"),
            _trial("noisy_label", "blew", [(1.0, 1.0)], "diverged"),
            _trial("max_loss", "late", [(0.8, 0.95), (0.9, 0.95), (1.0, 1.0)], "diverged"),
            _trial("max_loss", "ok", [(0.1, 0.9), (0.3, 0.85), (0.4, 0.8), (0.5, 0.75)], "terminated"),
        ]
    )


def test_a_trial_is_read_at_a_horizon_only_when_it_ran_to_it():
    half = _trial("max_loss", "half", [(0.1, 0.9), (0.2, 0.9), (0.3, 0.9)], "running")
    rows = horizon_rows(combine([_with_diverged_trials(), half]), [2, 4])
    assert sorted(at_horizon(rows, 4)["trial_id"]) == [
        "good",
        "ok",
    ]  # neither diverged trial nor half ran to 4
    assert sorted(at_horizon(rows, 2)["trial_id"]) == ["good", "half", "late", "ok"]  # late's epoch 2 is real
    late = at_horizon(rows, 2).set_index("trial_id").loc["late"]
    assert late["epoch"] == 2 and late["diverged_at"] == 3
    finals = at_horizon(rows, FINAL).set_index("trial_id")
    assert len(finals) == 5 and [horizon_label(h) for h in (FINAL, 2)] == ["final", "2"]
    assert finals.loc["blew", "epoch"] == 1 and finals.loc["blew", "status"] == "diverged"
    assert finals.loc["late", "epoch"] == 3 and math.isnan(finals.loc["good", "diverged_at"])
    assert diverged_label(finals.loc["blew", "diverged_at"]) == "diverged at epoch 1"
    assert [h for h, _ in by_horizon(rows)] == [FINAL, 2, 4]


def test_diverged_trials_are_never_a_choice():
    trials = _with_diverged_trials()
    rows = horizon_rows(trials, [2, 4])
    assert recommend(rows, [2, 4]).trial_id == "good"  # (0.6, 0.7) at epoch 4
    # Even read at a horizon as if it ran to it, a diverged row is no candidate.
    finals = at_horizon(rows, FINAL)
    pretended = pd.concat(
        [rows, finals.assign(horizon=pd.array([4] * len(finals), dtype="Int64"))], ignore_index=True
    )
    assert recommend(pretended, [2, 4]).trial_id == "good"
    for table in (rows, pretended):
        best = best_trials(table)
        chosen = {
            (s, horizon_label(h)): t
            for s, h, t in best[["strategy", "horizon", "trial_id"]].itertuples(index=False)
        }
        assert chosen == {
            ("noisy_label", "final"): "good",
            ("max_loss", "final"): "ok",
            ("noisy_label", "2"): "good",
            ("max_loss", "2"): "ok",
            ("noisy_label", "4"): "good",
            ("max_loss", "4"): "ok",
        }
        assert best_trials(at_horizons(table, [2, 4]), per_horizon=False)["trial_id"].tolist() == [
            "good",
            "ok",
        ]
        assert set(fronts(table)["trial_id"]) == {"good", "ok"} and "diverged_at" not in fronts(table)
        # max_loss's area at horizon 2 is ok's alone: 0.3 x 0.85
        assert hypervolumes(table).loc["max_loss", "horizon 2"] == pytest.approx(0.255)
    table = paper_table(pretended, {}, [2, 4])
    assert set(table["trial_id"].dropna()) == {"good", "ok"}
    assert "noisy_label @ 4 epochs" in set(table["row"])
    assert "diverged, left out" in front_table(trials) and "blew" not in front_table(trials)


def test_each_view_has_its_own_front_and_knee_and_tables_show_holdout_dice():
    """deep forgets everything; match forgets as much as the retrain reference (retrain_match 1)."""
    figures = {
        "deep": {"forget_drop": 0.95, "retrain_match": 0.4, "retain_kept": 0.9, "holdout_dice": 0.5},
        "match": {"forget_drop": 0.4, "retrain_match": 1.0, "retain_kept": 0.95, "holdout_dice": 0.55},
        "worse": {"forget_drop": 0.3, "retrain_match": 0.9, "retain_kept": 0.85, "holdout_dice": 0.6},
    }
    trials = combine(
        trial_rows(
            "noisy_label",
            t,
            {"trial_number": 0},
            [{"epoch": 1, "score": f["forget_drop"], **f}],
            "terminated",
        )
        for t, f in figures.items()
    )
    rows = horizon_rows(trials, [1])
    assert recommend(rows, [1], "reference").trial_id == "deep"
    knee = recommend(rows, [1], "retrain-match")
    assert (knee.trial_id, knee.epoch, knee.view, knee.figures["retrain_match"]) == (
        "match",
        1,
        "retrain-match",
        1.0,
    )
    at_1 = at_horizon(fronts(rows, OBJECTIVES["retrain-match"]), 1)
    assert at_1["trial_id"].tolist() == ["match"]  # deep's retrain_match 0.4 is dominated

    original = {
        "retain_dice": 0.8,
        "holdout_dice": 0.62,
        "forget_dice": 0.8,
        "retain_mae": 0.1,
        "forget_mae": 0.1,
    }
    table = paper_table(rows, {"original": original}, [1])
    assert table.columns[1:4].tolist() == ["retain_dice", "holdout_dice", "forget_dice"]
    assert table.set_index("row")["holdout_dice"].iloc[:2].tolist() == [0.62, 0.5]  # original, deep
    assert "holdout_dice" in front_table(trials) and "retrain_match" in front_table(
        trials, OBJECTIVES["retrain-match"]
    )
