"""Membership inference on slabs: features, the attack, its AUC, computed by hand where possible."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from study.metrics.privacy import SLAB, Attack, auc, privacy_metrics, slab_features


def test_auc_counts_pairs_and_half_ties():
    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0]), np.array([2.0])) == 0.0
    # pairs (2>1), (2=2) half, (3>1), (3>2): (1 + 0.5 + 1 + 1) / 4
    assert auc(np.array([2.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(3.5 / 4)
    assert math.isnan(auc(np.array([]), np.array([1.0])))


def test_slab_features_by_hand():
    depth = 2 * SLAB
    target = torch.zeros(depth, 2, 2, dtype=torch.long)
    probabilities = torch.zeros(2, depth, 2, 2)
    probabilities[0, :SLAB], probabilities[1, :SLAB] = 0.8, 0.2  # first slab: true class at 0.8
    probabilities[0, SLAB:], probabilities[1, SLAB:] = 0.5, 0.5  # second slab: a coin toss
    features = slab_features(probabilities, target, torch.tensor([0.9, math.nan]))
    assert features.shape == (2, 4)
    entropy_08 = -(0.8 * math.log(0.8) + 0.2 * math.log(0.2))
    assert features[0] == pytest.approx([-math.log(0.8), 0.8, entropy_08, 0.9])
    assert features[1, :3] == pytest.approx([math.log(2), 0.5, math.log(2)])
    assert math.isnan(features[1, 3])  # no foreground in either map: no Dice (not a perfect 1.0)


def test_slab_features_leave_out_voxels_not_scored():
    target = torch.zeros(SLAB, 2, 2, dtype=torch.long)
    probabilities = torch.full((2, SLAB, 2, 2), 0.5)
    probabilities[0, 0, 0, 0], probabilities[1, 0, 0, 0] = 1e-6, 1 - 1e-6  # one confidently wrong voxel
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[0, 0, 0] = False
    assert slab_features(probabilities, target, torch.tensor([1.0]), valid)[0, 0] == pytest.approx(
        math.log(2)
    )
    assert slab_features(probabilities, target, torch.tensor([1.0]))[0, 0] > math.log(2) + 0.5


def _subjects(rng: np.random.Generator, names: list[str], loss: float) -> dict[str, np.ndarray]:
    """Four slabs per subject; members have low loss, high confidence, low entropy, high Dice."""
    centre = np.array([loss, 1 - loss / 4, loss / 2, 1 - loss / 5])
    return {name: centre + 0.05 * rng.standard_normal((4, 4)) for name in names}


def test_the_attack_finds_members_and_says_how_much_power_it_has():
    rng = np.random.default_rng(0)
    retain, holdout, forget = ["r1", "r2", "r3", "r4"], ["h1", "h2", "h3"], ["f1", "f2"]
    features = _subjects(rng, retain, 0.2) | _subjects(rng, holdout, 1.0)
    remembered = privacy_metrics(features | _subjects(rng, forget, 0.2), retain, forget, holdout)
    assert remembered["mia_auc"] > 0.95 and remembered["mia_forget"] == 1.0
    assert remembered["mia_forget_auc"] > 0.95  # lower loss than any unseen subject
    forgotten = privacy_metrics(features | _subjects(rng, forget, 1.0), retain, forget, holdout)
    assert forgotten["mia_forget"] < 0.2 and 0.2 < forgotten["mia_forget_auc"] < 0.8
    overforgotten = privacy_metrics(features | _subjects(rng, forget, 3.0), retain, forget, holdout)
    assert overforgotten["mia_forget_auc"] == 0.0  # stands out the other way: higher loss than unseen


def test_without_power_the_attack_says_so():
    rng = np.random.default_rng(1)
    retain, holdout, forget = ["r1", "r2", "r3", "r4"], ["h1", "h2", "h3"], ["f1"]
    same = _subjects(rng, retain + holdout + forget, 0.5)
    assert 0.2 < privacy_metrics(same, retain, forget, holdout)["mia_auc"] < 0.8


def test_without_holdout_only_the_gap_to_retrain_is_measured():
    features = {"r": np.full((2, 4), 0.1), "f": np.array([[0.5, 0, 0, 0], [0.7, 0, 0, 0]])}
    metrics = privacy_metrics(features, ["r"], ["f"], [], retrain_forget_losses=np.array([0.4, 1.0]))
    assert metrics["forget_loss_gap_to_retrain"] == pytest.approx((0.1 + 0.3) / 2)
    assert math.isnan(metrics["mia_auc"]) and math.isnan(metrics["mia_forget"])


def test_the_attack_is_deterministic_and_weights_classes_equally():
    rng = np.random.default_rng(2)
    members, nonmembers = rng.normal(0, 1, (40, 4)), rng.normal(1, 1, (8, 4))
    a, b = Attack(members, nonmembers), Attack(members, nonmembers)
    assert np.array_equal(a.coef, b.coef)
    # balanced: five times as many members do not make it call everyone a member
    assert (a.score(members) > 0.5).mean() > 0.7 and (a.score(nonmembers) > 0.5).mean() < 0.3
