"""One registry fact per strategy: its class and its search space, checked together."""

from __future__ import annotations

from dataclasses import dataclass

import optuna
import pytest
import torch

from search_spaces import STRATEGIES, check_config, register, starting_point
from search_spaces.spaces import common
from study.config import StudyError, load_config
from study.model import model_from
from trainables.settings import LoopSettings
from trainables.strategy import Strategy
from trainables.trial import TrialSpec


def test_every_strategy_is_found_with_its_space_and_starts_at_its_defaults():
    assert list(STRATEGIES) == [
        "noisy_label",
        "max_loss",
        "random_encoder",
        "learn_others",
        "fix_decoder",
        "finetune",
        "salun",
    ]
    noisy = STRATEGIES["noisy_label"]
    assert noisy.search.start == {
        "lr": 3e-4,
        "optimizer": "adam",
        "weight_decay": 1e-5,
        "warmup_epochs": 0,
        "bn_mode": "train",
        "retain_weight": 1.0,
        "noise_level": 1.0,
    }
    assert STRATEGIES["max_loss"].search.start["loss_ceiling"] == 3.0
    assert starting_point(STRATEGIES["salun"].search, {"mask_ratio": [0.05, 0.2]})["mask_ratio"] == 0.2


def test_the_loops_defaults_are_every_searchs_start():
    defaults = LoopSettings.start()
    assert set(defaults) == set(LoopSettings.HYPERPARAMETERS)
    for entry in STRATEGIES.values():
        assert {k: entry.search.start[k] for k in defaults} == defaults


def test_a_space_that_does_not_fit_its_strategy_is_refused_at_registration():
    @dataclass(kw_only=True, eq=False)
    class Sloppy(Strategy):
        name = "sloppy"
        forget_weight: float = 1.0

    def misspelt(trial: optuna.Trial) -> None:
        common(trial)
        trial.suggest_float("forget_wieght", 0.1, 1.0)

    with pytest.raises(TypeError, match=r"\['forget_wieght'\].*\['forget_weight'\]"):
        register(Sloppy, misspelt)
    assert "sloppy" not in STRATEGIES


def test_a_misspelt_hyperparameter_fails_when_the_trial_is_built():
    config = load_config("smoke")
    original = model_from(config, 4)
    noisy = STRATEGIES["noisy_label"].strategy
    params = {**STRATEGIES["noisy_label"].search.start, "strategy": "noisy_label", "trial_number": 3}
    strategy = TrialSpec.of(config, noisy, params).build_strategy(4, original)
    assert (strategy.noise_level, strategy.n_classes, strategy.seed) == (1.0, 4, 3)
    assert strategy.original_model is original
    with pytest.raises(TypeError, match="noise_levl"):
        TrialSpec.of(config, noisy, params, noise_levl=0.5).build_strategy(4, original)
    with pytest.raises(TypeError, match="forget_weight"):  # another strategy's hyperparameter
        TrialSpec.of(config, noisy, params, forget_weight=0.5).build_strategy(4, original)
    settings = TrialSpec.of(config, noisy, params).loop_settings()
    assert (settings.lr, settings.weight_decay, settings.seed) == (3e-4, 1e-5, config.seed * 10_007 + 3)
    with pytest.raises(KeyError, match="warmup_epochs"):  # a loop hyperparameter left out
        TrialSpec.of(config, noisy, {k: v for k, v in params.items() if k != "warmup_epochs"}).loop_settings()
    assert torch.equal(model_from(config, 4).conv1.weight, original.conv1.weight)  # one seed, one model


def test_a_study_naming_an_unregistered_strategy_stops_before_any_compute():
    with pytest.raises(StudyError, match="toy_background"):
        check_config(load_config("smoke", overrides={"strategies": ["noisy_label", "toy_background"]}))
