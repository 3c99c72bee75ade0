"""The one path to the models of the original recipe: trained once (in this process here, as
Ray tasks in the studies), cached under a key of everything that shapes them, measured."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch

from study.cohort import find_subjects, load_cohort, resolve_split, with_forget
from study.config import load_config
from study.metrics.membership import attack_power
from study.model import initial_state
from trainables import baseline
from trainables.baseline import reference_models
from trainables.recipes import KINDS, cache_key, load_cached, recipes


@pytest.fixture
def config(cohort_root: Path, tmp_path: Path):
    """The smoke preset on the tests' cohort, 2 baseline epochs, models cached in ``tmp_path``."""
    overrides = {
        "data": str(cohort_root),
        "holdout": ["101"],
        "cache_dir": str(tmp_path),
        "baseline_epochs": 2,
    }
    return load_config("smoke", overrides={"run_dir": "unused", **overrides})


@pytest.fixture(autouse=True)
def in_this_process(monkeypatch):
    """Train here even where an earlier test left the session's Ray up: a model trained in a
    Ray worker would pass by the stand-ins these tests put for ``train_model``."""
    monkeypatch.setattr(baseline, "_ray_is_up", lambda: False)


def _refused(*args, **kwargs):
    raise AssertionError("trained a model the cache holds")


def test_each_model_is_trained_once_cached_and_measured(config, tiny_cohort, monkeypatch):
    cohort = tiny_cohort
    start, _ = initial_state(config, cohort.n_classes)
    first = reference_models(config, cohort, start).result()
    assert list(first.states) == list(KINDS) == ["original", "retrain"]
    for kind, state in first.states.items():
        cached, metrics = load_cached(config, cache_key(config, cohort, recipes(config, cohort)[kind]))
        assert torch.equal(cached["conv1.weight"], state["conv1.weight"])
        # Cached with its figures on the subjects it trained on ("retain") and the others.
        shared = "holdout_dice" if kind == "original" else "retain_dice"
        assert metrics[shared] == pytest.approx(getattr(first.reference, kind)[shared], abs=1e-6)
    # Trained on other subjects from one start: two models; the retrain reference is its own target.
    assert not torch.equal(first.states["original"]["conv1.weight"], first.states["retrain"]["conv1.weight"])
    assert first.reference.retrain["forget_gap_to_retrain"] == 0.0
    assert first.reference.original["forget_drop"] == 0.0

    monkeypatch.setattr(baseline, "train_model", _refused)
    again = reference_models(config, cohort, start).result()  # from the cache: nothing trains
    assert all(torch.equal(again.states[k]["conv1.weight"], first.states[k]["conv1.weight"]) for k in KINDS)
    assert again.reference == first.reference


def test_a_model_the_caller_holds_is_not_trained_and_another_seed_is_another_model(
    config, tiny_cohort, monkeypatch
):
    cohort = tiny_cohort
    start, _ = initial_state(config, cohort.n_classes)
    held = {k: v + 0.01 if v.is_floating_point() else v for k, v in start.items()}  # not any trained model
    trained = []
    monkeypatch.setattr(
        baseline, "train_model", lambda kind, *args: trained.append(kind) or _train(kind, *args)
    )
    references = reference_models(config, cohort, start, known={"original": held}).result()
    assert trained == ["retrain"] and references.states["original"] is held

    reseeded = dataclasses.replace(config, seed=1)  # a shadow model of another seed
    retrain = recipes(config, cohort)["retrain"]
    assert cache_key(reseeded, cohort, recipes(reseeded, cohort)["retrain"]) != cache_key(
        config, cohort, retrain
    )
    other = reference_models(reseeded, cohort, initial_state(reseeded, cohort.n_classes)[0]).result()
    assert not torch.equal(
        other.states["retrain"]["conv1.weight"], references.states["retrain"]["conv1.weight"]
    )


_train = baseline.train_model


def test_a_shadow_model_serves_every_forget_set_and_each_retrain_seed_is_its_own_model(config, tiny_cohort):
    config = dataclasses.replace(config, shadow_models=4, retrain_seeds=3)
    models = recipes(config, tiny_cohort)
    assert list(models) == [
        "original", "retrain", "retrain_seed_1", "retrain_seed_2", "shadow_0", "shadow_1", "shadow_2", "shadow_3"
    ]  # fmt: skip
    assert len({cache_key(config, tiny_cohort, r) for r in models.values()}) == len(models)
    labelled = set(tiny_cohort.labelled)  # 070, 1, 4, 101: each in two of the four
    assert all(sum(s in models[f"shadow_{m}"].members for m in range(4)) == 2 for s in labelled)
    request = with_forget(tiny_cohort, ["1"])  # a deletion request: another split, the same arrays
    again = recipes(config, request)
    for name in ("shadow_0", "shadow_3"):
        assert cache_key(config, request, again[name]) == cache_key(config, tiny_cohort, models[name])
    assert cache_key(config, request, again["retrain"]) != cache_key(config, tiny_cohort, models["retrain"])


def test_without_a_holdout_every_membership_figure_is_there(config, cohort_root):
    """Real MRBrainS18 has no holdout: the shadow models then split the training subjects."""
    split = resolve_split(find_subjects(cohort_root), ["070"], ["1", "4", "5"], [], "test")
    cohort = load_cohort(cohort_root, split, (8, 32, 32), "4class")
    config = dataclasses.replace(config, shadow_models=4, retrain_seeds=2)
    references = reference_models(config, cohort, initial_state(config, cohort.n_classes)[0]).result()
    evidence = references.evidence
    assert evidence.sufficient()[0] and len(evidence.members) == 1 + 2 + 4
    power = attack_power(evidence.shadows)
    assert power.pairs == 4 * 4 and 0 <= power.auc <= 1 and 0 <= power.tpr_at_5_fpr <= 1
    roles = {s: "forget" if s == "070" else "retain" for s in cohort.labelled}
    rows = evidence.rows(roles, config.privacy_level)
    forget_rows = [r for r in rows if r["subject"] == "070"]
    assert len(rows) == 7 * 4 and all(r["direction"] in ("under", "over") for r in forget_rows)
    assert all(0 <= r["p_to_retrain"] <= 1 for r in forget_rows)
    original = references.reference.original
    assert 0 <= original["worst_forget_p_to_retrain"] <= 1 and original["forget_distinguishable"] in (
        0.0,
        1.0,
    )
    assert math.isnan(original["mia_auc"])  # the population attack needs a holdout
