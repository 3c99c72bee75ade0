"""A whole study through ``python -m study.launch``'s entry point on a real local Ray."""

from __future__ import annotations

import json
import math
from pathlib import Path

import optuna
import pandas as pd
import pytest

from study.config import load_config
from study.errors import StudyError
from study.launch import main
from trainables import STRATEGIES


@pytest.fixture
def cache_env(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home


def test_smoke_study_writes_one_row_per_trial_and_epoch(ray_local, cache_env, tmp_path: Path, capsys):
    run_dir = tmp_path / "run"
    assert main(["--preset", "smoke", "--run-dir", str(run_dir)]) == 0

    trials = pd.read_parquet(run_dir / "trials.parquet")
    # smoke: 2 strategies x 2 trials x 2 epochs
    assert len(trials) == 8
    assert set(trials["strategy"]) == {"noisy_label", "max_loss"}
    assert trials.groupby("strategy")["trial_id"].nunique().to_dict() == {"noisy_label": 2, "max_loss": 2}
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert sorted(trials["epoch"].unique()) == [1, 2]
    assert set(trials["status"]) == {"terminated"}
    noisy = trials[trials["strategy"] == "noisy_label"]
    assert noisy["param_noise_level"].between(0.1, 1.0).all()
    assert noisy["param_lr"].between(1e-5, 1e-2).all()
    assert trials[trials["strategy"] == "max_loss"]["param_loss_ceiling"].between(1.0, 10.0).all()
    for column in ("retain_dice", "forget_dice", "holdout_dice"):
        assert trials[column].between(0.0, 1.0).all()
    row = trials.iloc[0]
    assert row["dice_gap"] == pytest.approx(row["retain_dice"] - row["forget_dice"])
    assert row["score"] == pytest.approx(0.5 * row["forget_drop"] + 0.5 * row["retain_kept"])

    baseline = json.loads((run_dir / "baseline" / "metrics.json").read_text())
    assert set(baseline["original"]) == {
        "retain_dice",
        "forget_dice",
        "holdout_dice",
        "retain_mae",
        "forget_mae",
        "holdout_mae",
    }
    assert (run_dir / "baseline" / "original.pt").is_file()
    assert "forget_dice = " not in (run_dir / "config.toml").read_text()
    assert 'preset = "smoke"' in (run_dir / "config.toml").read_text()

    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    for strategy in ("noisy_label", "max_loss"):
        study = optuna.load_study(study_name=strategy, storage=storage)
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 2 and all(len(t.values) == 2 for t in complete)

    out = capsys.readouterr().out
    assert "non-dominated trials" in out and f"run directory: {run_dir}" in out
    finals = trials[trials["epoch"] == 2]
    assert all(math.isfinite(v) for v in finals["forget_drop"])


def test_existing_run_directory_is_refused(ray_local, cache_env, tmp_path: Path, capsys):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    (run_dir / "trials.parquet").write_bytes(b"earlier results")
    assert main(["--preset", "smoke", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run directory") and "--resume" in err and "\n" not in err
    assert (run_dir / "trials.parquet").read_bytes() == b"earlier results"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "paper"], "needs real data"),
        (["--strategies", "noisy_label,forget_everything"], "unknown forget_everything"),
        (["--horizons", "5,50", "--max-epochs", "20"], "horizons"),
        (["--max-epochs", "0"], "max_epochs must be a positive integer"),
        (["--forget", "999"], "unknown subject"),
        (["--data", "/nonexistent/MRBrainS18"], "does not exist"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(cache_env, tmp_path: Path, capsys, argv, message):
    run_dir = tmp_path / "never"
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not run_dir.exists()


def test_presets_validate():
    for preset in ("demo", "smoke"):
        load_config(preset).validate(tuple(STRATEGIES))
    paper = load_config("paper", overrides={"data": "/data/MRBrainS18/training"})
    paper.validate(tuple(STRATEGIES))
    assert paper.model_depth == 50 and paper.max_epochs == 50 and paper.horizons == [20, 50]
    with pytest.raises(StudyError, match="unknown setting"):
        load_config("demo", overrides={"learning_rate": 1})
