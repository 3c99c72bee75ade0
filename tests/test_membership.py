"""Per-subject membership tests: the statistic, balanced shadow subsets, the attack's power,
the two-sided test against retraining and the challenge's epsilon, on figures known by hand."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from study.metrics.evidence import Evidence
from study.metrics.membership import (
    Shadows,
    attack_power,
    epsilon,
    membership_statistic,
    seed_spread,
    shadow_subsets,
    tpr_at_fpr,
    two_sided,
)

SUBJECTS = [f"s{i}" for i in range(10)]


def test_the_statistic_is_the_mean_logit_of_the_true_class_over_scored_voxels():
    target = torch.zeros(2, 2, 2, dtype=torch.long)
    probabilities = torch.zeros(2, 2, 2, 2)
    probabilities[0], probabilities[1] = 0.8, 0.2
    valid = torch.ones_like(target, dtype=torch.bool)
    assert membership_statistic(probabilities, target, valid) == pytest.approx(math.log(4))
    probabilities[0, 0, 0, 0], probabilities[1, 0, 0, 0] = 0.0, 1.0  # confidently wrong, not scored
    valid[0, 0, 0] = False
    assert membership_statistic(probabilities, target, valid) == pytest.approx(math.log(4))
    assert math.isnan(membership_statistic(probabilities, target, torch.zeros_like(valid)))


@pytest.mark.parametrize("models", [2, 7, 8, 32])
def test_every_subject_is_in_about_half_the_shadow_models(models):
    subsets = shadow_subsets(SUBJECTS, models, seed=0)
    assert len(subsets) == models and all(len(s) == 5 for s in subsets)
    counts = Counter(s for subset in subsets for s in subset)
    assert all(abs(counts[s] - models / 2) <= 1 for s in SUBJECTS)
    assert subsets == shadow_subsets(SUBJECTS, models, seed=0)  # deterministic for a seed
    assert len(set(subsets)) > 1 and subsets != shadow_subsets(SUBJECTS, models, seed=1)


def _shadows(rng: np.random.Generator, models: int, signal: float) -> Shadows:
    """Statistics: a subject's own level, ``signal`` higher when trained on, noise 0.3."""
    level = {s: rng.normal(0, 1) for s in SUBJECTS}
    members = {f"shadow_{m}": frozenset(s) for m, s in enumerate(shadow_subsets(SUBJECTS, models, 0))}
    statistics = {
        m: {s: level[s] + signal * (s in inside) + 0.3 * rng.normal() for s in SUBJECTS}
        for m, inside in members.items()
    }
    return Shadows(statistics, members)


def test_the_attack_has_power_where_training_shows_and_none_where_it_does_not():
    rng = np.random.default_rng(0)
    strong = attack_power(_shadows(rng, 16, signal=1.5))
    assert strong.pairs == 160 and strong.auc > 0.95 and strong.tpr_at_5_fpr > 0.6
    blind = attack_power(_shadows(rng, 16, signal=0.0))
    assert 0.3 < blind.auc < 0.7 and blind.tpr_at_5_fpr < 0.25
    # Two shadow models: one left out leaves each subject IN or OUT of the other only.
    assert math.isnan(attack_power(_shadows(rng, 2, signal=1.5)).auc)


def test_tpr_at_fpr_allows_that_share_of_false_positives():
    negative = np.arange(20.0)  # 5% of 20: one false positive allowed, the threshold is 18
    assert tpr_at_fpr(np.array([18.5, 19.5, 17.0, 30.0]), negative, 0.05) == 0.75
    assert tpr_at_fpr(np.array([18.5]), negative, 0.0) == 0.0  # none allowed: above 19


def test_two_sided_says_which_way_a_model_stands_out():
    reference = [0.0, 1.0, -1.0, 0.5, -0.5]  # mean 0, sd 0.79
    trained_on = two_sided(4.0, reference)
    assert trained_on.direction == "under" and trained_on.distinguishable(0.05)
    assert trained_on.z == pytest.approx(4.0 / (np.std(reference, ddof=1) * math.sqrt(1 + 1 / 5)))
    forgotten_too_well = two_sided(-4.0, reference)
    assert forgotten_too_well.direction == "over" and forgotten_too_well.p == pytest.approx(trained_on.p)
    like_retraining = two_sided(0.3, reference)
    assert not like_retraining.distinguishable(0.05) and like_retraining.p > 0.5
    assert two_sided(0.3, reference, spread=(0.1, 20)).distinguishable(0.05)  # a narrower spread given
    assert two_sided(4.0, reference).p > two_sided(4.0, reference, spread=(0.79, 1000)).p  # t's tails


def test_seed_spread_pools_each_subjects_deviations():
    # Deviations from each row's mean: +-1 and +-2: (1 + 1 + 4 + 4) / (4 - 2) = 5, on 2 df.
    spread, df = seed_spread({"a": [1.0, 3.0], "b": [0.0, 4.0], "c": [7.0]})
    assert spread == pytest.approx(math.sqrt(5)) and df == 2


def test_epsilon_is_small_for_alike_runs_and_the_cap_for_separated_ones():
    rng = np.random.default_rng(0)
    retrained = rng.normal(0, 1, 64)
    alike = epsilon(rng.normal(0, 1, 64), retrained)
    apart = epsilon(rng.normal(10, 1, 64), retrained)
    assert apart.epsilon == pytest.approx(apart.cap) and apart.cap == pytest.approx(math.log(63), abs=1e-3)
    assert alike.epsilon < 0.5 * apart.cap and (alike.runs, alike.references) == (64, 64)
    assert epsilon([5.0, 6.0], [0.0, 1.0]).cap == pytest.approx(0.0, abs=1e-4)  # two runs each: log(1)


def test_the_original_looks_trained_on_and_a_held_out_retrain_seed_like_retraining(synthetic_evidence):
    evidence = synthetic_evidence(0)
    assert evidence.sufficient()[0] and evidence.retrained == ["retrain", "retrain_seed_1", "retrain_seed_2"]
    forget = ["s0", "s1"]
    reference = evidence.forget_reference(forget, 0.05)
    original = reference.verdicts(evidence.statistics["original"], evidence.dice["original"])
    assert original == {"s0": "distinguishable (under)", "s1": "distinguishable (under)"}
    for seed in evidence.retrained:
        held_out = evidence.forget_reference(forget, 0.05, without=seed)
        assert set(held_out.verdicts(evidence.statistics[seed], evidence.dice[seed]).values()) == {
            "indistinguishable"
        }
    # Forgotten past retraining: Dice far below the retrain seeds', the statistic too.
    over = {s: v - 2.0 for s, v in evidence.statistics["retrain"].items()}
    dice = {s: v - 0.3 for s, v in evidence.dice["retrain"].items()}
    assert set(reference.verdicts(over, dice).values()) == {"distinguishable (over)"}
    assert reference.metrics(over, dice)["forget_distinguishable"] == 2.0
    assert reference.metrics(over, dice)["worst_forget_p_to_retrain"] < 1e-3


def test_privacy_rows_have_a_test_per_forget_subject_and_a_ratio_per_subject(synthetic_evidence):
    evidence = synthetic_evidence(1)
    roles = {s: "forget" if s in ("s0", "s1") else "retain" for s in SUBJECTS}
    rows = evidence.rows(roles, 0.05)
    assert len(rows) == len(evidence.members) * len(SUBJECTS)
    tested = [r for r in rows if not math.isnan(r["p_to_retrain"])]
    assert {r["subject"] for r in tested} == {"s0", "s1"} and len(tested) == 2 * len(evidence.members)
    original = {r["subject"]: r for r in rows if r["model"] == "original"}
    assert original["s0"]["direction"] == "under" and original["s0"]["likelihood_ratio"] > 0


def test_two_shadow_models_are_not_evidence_enough(synthetic_evidence):
    evidence = synthetic_evidence(2)
    few = {m: i for m, i in evidence.members.items() if m not in {f"shadow_{k}" for k in range(2, 8)}}
    sufficient, why = Evidence(evidence.statistics, evidence.dice, few).sufficient()
    assert not sufficient and "2 shadow models" in why and "at least 4" in why


def test_the_evidence_reads_back_from_its_rows(synthetic_evidence):
    evidence = synthetic_evidence(3)
    roles = {s: "forget" if s in ("s0", "s1") else "retain" for s in SUBJECTS}
    again = Evidence.from_rows(evidence.rows(roles, 0.05))
    assert again.members == evidence.members and again.statistics == evidence.statistics
    assert again.forget_reference(["s0"], 0.05) == evidence.forget_reference(["s0"], 0.05)


def test_a_trial_row_carries_its_forget_subjects_figures_into_privacy_rows(synthetic_evidence):
    """The loop's figures of a trial (``metrics``) keep each forget subject's own statistic and
    Dice; through ``trials.parquet``'s rows they become ``<trial_id>@<epoch>`` rows of
    ``privacy.parquet``, tested like any model, and are no evidence when read back."""
    from study.run.results import combine, trial_rows

    evidence = synthetic_evidence(4)
    roles = {s: "forget" if s in ("s0", "s1") else "retain" for s in SUBJECTS}
    reference = evidence.forget_reference(["s0", "s1"], 0.05)
    looks_trained = reference.metrics(evidence.statistics["original"], evidence.dice["original"])
    like_retrain = reference.metrics(evidence.statistics["retrain"], evidence.dice["retrain"])
    assert looks_trained["statistic@s0"] == evidence.statistics["original"]["s0"]
    history = [
        {"epoch": 5, **looks_trained},
        {"epoch": 10, **like_retrain},
        {"epoch": 15, "retain_dice": 0.8},
    ]
    table = combine([trial_rows("noisy_label", "t1", {"trial_number": 0}, history, "terminated")])
    assert {"statistic@s0", "dice@s1"} <= set(table.columns)
    rows = evidence.trial_rows(table.to_dict("records"), roles, 0.05)
    assert [r["model"] for r in rows] == ["t1@5", "t1@5", "t1@10", "t1@10"]  # epoch 15 has no figures
    by = {(r["model"], r["subject"]): r for r in rows}
    assert by["t1@5", "s0"]["direction"] == "under" and by["t1@5", "s0"]["p_to_retrain"] < 1e-3
    assert by["t1@10", "s0"]["p_to_retrain"] > 0.025 and not by["t1@10", "s0"]["trained_on"]
    again = Evidence.from_rows(evidence.rows(roles, 0.05) + rows)
    assert again.members == evidence.members  # the trial's rows are tested, not evidence


def test_a_model_beyond_every_in_shadow_looks_in_even_when_in_models_agree_closely():
    """One spread for IN and OUT: the ratio grows with the statistic. (With its own tight IN
    spread a statistic far above the IN mean scored as OUT.)"""
    statistics = {f"in{k}": {"a": 5.0 + 0.01 * k, "b": 1.0 + 0.5 * k} for k in range(3)}
    statistics |= {f"out{k}": {"a": 4.0 + 0.5 * k, "b": 0.5 + 0.01 * k} for k in range(3)}
    members = {m: frozenset(["a"] if m.startswith("in") else ["b"]) for m in statistics}
    gaussians = Shadows(statistics, members).fit("a")
    ratios = [gaussians.log_ratio(x) for x in (3.0, 4.5, 5.0, 6.0, 8.0)]
    assert ratios == sorted(ratios) and ratios[-1] > 0 and ratios[0] < 0
