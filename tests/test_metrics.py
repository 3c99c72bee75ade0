"""Dice, MAE and the derived objectives against values computed by hand."""

from __future__ import annotations

import math

import pytest
import torch

from study.cohort import IGNORE_LABEL
from study.metrics import Reference, derived_metrics, dice_per_subject, mae_per_subject

X = IGNORE_LABEL  # an ignored voxel, one letter wide in the grids below


def test_dice_is_the_foreground_mean_over_classes():
    # One subject, 1 x 2 x 3 voxels, 3 classes.
    target = torch.tensor([[[[0, 1, 1], [2, 2, 2]]]])
    pred = torch.tensor([[[[1, 1, 0], [2, 2, 0]]]])
    # class 1: |T|=2, |P|=2, overlap 1 -> 0.5; class 2: |T|=3, |P|=2, overlap 2 -> 0.8
    dice = dice_per_subject(pred, target, n_classes=3)
    assert dice.shape == (1,)
    assert dice.item() == pytest.approx((0.5 + 0.8) / 2)


def test_dice_scores_a_class_predicted_but_absent_from_the_ground_truth_zero():
    target = torch.tensor([[[[0, 1], [1, 1]]]])
    pred = torch.tensor([[[[2, 1], [1, 0]]]])  # class 2 predicted but absent in truth
    # class 1: |T|=3, |P|=2, overlap 2 -> 0.8; class 2: a false positive only -> 0 (MRBrainS18)
    assert dice_per_subject(pred, target, n_classes=3).item() == pytest.approx(0.4)


def test_dice_leaves_out_a_class_in_neither_map_and_a_subject_with_no_foreground():
    target = torch.tensor([[[[0, 1], [1, 1]]], [[[0, 0], [0, X]]]])  # two subjects
    pred = torch.tensor([[[[0, 1], [1, 0]]], [[[0, 0], [0, 2]]]])
    dice = dice_per_subject(pred, target, n_classes=3)
    # subject 0: class 1 -> 0.8, class 2 in neither map (not a perfect 1.0): left out
    assert dice[0].item() == pytest.approx(0.8)
    # subject 1: no foreground anywhere (class 2 only on an unscored voxel): undefined
    assert math.isnan(dice[1].item())


def test_mae_is_the_mean_absolute_error_over_classes_and_voxels():
    target = torch.tensor([[[[0, 1]]]])  # (B=1, D=1, H=1, W=2)
    probabilities = torch.tensor([[0.9, 0.4], [0.1, 0.6]]).reshape(1, 2, 1, 1, 2)
    # voxel 0: |0.9-1| + |0.1-0| = 0.2 ; voxel 1: |0.4-0| + |0.6-1| = 0.8 -> (0.2+0.8)/4
    assert mae_per_subject(probabilities, target).item() == pytest.approx(0.25)


def test_dice_ignores_predictions_on_ignored_voxels():
    target = torch.tensor([[[[0, 1, 1, X], [2, 2, X, X]]]])  # (B=1, D=1, H=2, W=4)
    ignored = target == X
    # Scored voxels: class 1 |T|=2, |P|=2, overlap 1 -> 0.5; class 2 |T|=2, |P|=2, overlap 2 -> 1.
    for on_ignored in (0, 1, 2):
        pred = torch.where(ignored, on_ignored, torch.tensor([[[[1, 1, 0, 0], [2, 2, 0, 0]]]]))
        assert dice_per_subject(pred, target, n_classes=3).item() == pytest.approx(0.75)
    # Read as background, the three class-1 predictions there would be false positives:
    # class 1 |T|=2, |P|=5, overlap 1 -> 2/7; class 2 -> 1.
    pred = torch.where(ignored, 1, torch.tensor([[[[1, 1, 0, 0], [2, 2, 0, 0]]]]))
    as_background = torch.where(ignored, 0, target)
    assert dice_per_subject(pred, as_background, n_classes=3).item() == pytest.approx((2 / 7 + 1) / 2)


def test_mae_is_the_mean_over_scored_voxels_only():
    target = torch.tensor([[[[0, 1, X]]]])  # (B=1, D=1, H=1, W=3)
    probabilities = torch.tensor([[0.9, 0.4, 0.3], [0.1, 0.6, 0.7]]).reshape(1, 2, 1, 1, 3)
    # voxel 0: 0.2, voxel 1: 0.8, voxel 2 ignored -> (0.2 + 0.8) / (2 voxels x 2 classes)
    assert mae_per_subject(probabilities, target).item() == pytest.approx(0.25)
    flipped = torch.tensor([[0.9, 0.4, 1.0], [0.1, 0.6, 0.0]]).reshape(1, 2, 1, 1, 3)
    assert mae_per_subject(flipped, target).item() == pytest.approx(0.25)
    # Read as background, voxel 2 would add |0.3 - 1| + |0.7 - 0| = 1.4: (0.2 + 0.8 + 1.4) / 6.
    as_background = torch.tensor([[[[0, 1, 0]]]])
    assert mae_per_subject(probabilities, as_background).item() == pytest.approx(0.4)
    assert math.isnan(mae_per_subject(probabilities, torch.full_like(target, X)).item())


def test_derived_metrics_match_the_reference_noisy_label_row():
    original = {"retain_dice": 0.9019, "forget_dice": 0.9226}
    retrain = {"forget_dice": 0.70, "forget_mae": 0.05}
    after = {"retain_dice": 0.7576, "forget_dice": 0.0613, "retain_mae": 0.02, "forget_mae": 0.111}
    derived = derived_metrics(after, Reference(original, retrain, ()), score_weight=0.5)
    assert derived["dice_gap"] == pytest.approx(0.6963)
    assert derived["mae_gap"] == pytest.approx(0.091)
    assert derived["forget_drop"] == pytest.approx((0.9226 - 0.0613) / 0.9226)  # about 0.934
    assert derived["retain_kept"] == pytest.approx(0.7576 / 0.9019)  # about 0.84
    assert derived["score"] == pytest.approx(0.5 * derived["forget_drop"] + 0.5 * derived["retain_kept"])
    assert math.isclose(derived["score"], 0.887, abs_tol=0.005)
    # forgotten far past what retraining forgets: a gap, and a low retrain match
    assert derived["forget_gap_to_retrain"] == pytest.approx(0.70 - 0.0613)
    assert derived["forget_mae_gap_to_retrain"] == pytest.approx(0.111 - 0.05)
    assert derived["retrain_match"] == pytest.approx(1 - (0.70 - 0.0613) / 0.9226)
    at_retrain = derived_metrics({**after, "forget_dice": 0.70}, Reference(original, retrain, ()))
    assert at_retrain["forget_gap_to_retrain"] == 0.0 and at_retrain["retrain_match"] == 1.0


def test_derived_metrics_are_nan_not_an_error_when_the_original_segments_nothing():
    nothing = {"retain_dice": 0.0, "forget_dice": 0.0}
    after = {"retain_dice": 0.1, "forget_dice": 0.0, "retain_mae": 0.3, "forget_mae": 0.3}
    derived = derived_metrics(after, Reference(nothing, {"forget_dice": 0.0, "forget_mae": 0.3}, ()))
    assert math.isnan(derived["forget_drop"]) and math.isnan(derived["retain_kept"])
    assert derived["forget_gap_to_retrain"] == 0.0
