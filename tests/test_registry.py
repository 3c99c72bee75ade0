"""One registry fact per strategy: its class and its search space, checked together."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray.cloudpickle
import torch
import toy_strategy

from search_spaces import starting_point
from search_spaces.spaces import common
from study.config import load_config
from study.errors import StudyError
from study.launch import main
from study.run import RunDir
from trainables import STRATEGIES
from trainables.baseline import build_model
from trainables.registry import check_config, register
from trainables.strategy import Strategy
from trainables.trial import build_trial, loop_settings


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


def test_a_misspelt_hyperparameter_fails_when_the_trial_is_built(tiny_cohort):
    config = load_config("smoke")
    original = build_model(config, 4).state_dict()
    noisy = STRATEGIES["noisy_label"].strategy
    params = {**STRATEGIES["noisy_label"].search.start, "strategy": "noisy_label", "trial_number": 3}
    model, strategy = build_trial(noisy, params, config, tiny_cohort, original)
    assert (strategy.noise_level, strategy.n_classes, strategy.seed) == (1.0, 4, 3)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), original.values(), strict=True))
    with pytest.raises(TypeError, match="noise_levl"):
        build_trial(noisy, {**params, "noise_levl": 0.5}, config, tiny_cohort, original)
    with pytest.raises(TypeError, match="forget_weight"):  # another strategy's hyperparameter
        build_trial(noisy, {**params, "forget_weight": 0.5}, config, tiny_cohort, original)
    assert loop_settings(params, config, {}).warmup_epochs == 0
    with pytest.raises(KeyError, match="warmup_epochs"):  # a loop hyperparameter left out
        loop_settings({k: v for k, v in params.items() if k != "warmup_epochs"}, config, {})


def test_a_study_naming_an_unregistered_strategy_stops_before_any_compute():
    with pytest.raises(StudyError, match="toy_background"):
        check_config(load_config("smoke", overrides={"strategies": ["noisy_label", "toy_background"]}))


@pytest.fixture
def toy_registered():
    """The toy strategy registered as a built-in is; shipped to Ray's workers by value."""
    register(toy_strategy.ToyBackground, toy_strategy.toy_background)
    ray.cloudpickle.register_pickle_by_value(toy_strategy)
    yield
    ray.cloudpickle.unregister_pickle_by_value(toy_strategy)
    del STRATEGIES["toy_background"]


@pytest.mark.slow
def test_a_strategy_added_by_one_file_and_one_register_call_runs_in_the_smoke_study(
    ray_local, cache_home: Path, tmp_path: Path, toy_registered, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    run_dir = tmp_path / "run"
    assert (
        main(["--preset", "smoke", "--strategies", "toy_background,noisy_label", "--run-dir", str(run_dir)])
        == 0
    )
    trials = pd.read_parquet(RunDir(run_dir).trials_file)
    toy = trials[trials["strategy"] == "toy_background"]
    assert toy["trial_id"].nunique() == 2 and sorted(toy["epoch"].unique()) == [1, 2]
    assert set(toy["status"]) == {"terminated"}
    assert toy["param_forget_weight"].between(0.1, 1.0).all()
    assert toy["param_noise_level"].isna().all()  # a column of the other strategy, not the toy's
    assert toy["retain_dice"].between(0.0, 1.0).all() and toy["forget_drop"].notna().all()
    start = optuna.load_study(study_name="toy_background", storage=RunDir(run_dir).optuna_url).trials[0]
    assert start.params["forget_weight"] == 0.5  # the field's default was the search's first trial
