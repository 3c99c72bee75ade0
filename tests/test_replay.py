"""``python -m study.replay`` on a run directory made by hand: no Ray, no study run."""

from __future__ import annotations

import math
from pathlib import Path

import torch

from study.config import StudyConfig
from study.model import model_from
from study.replay import main
from study.run.results import trial_rows
from study.run.rundir import RunDir

#: The original model's figures, as ``baseline/metrics.json`` records them (made up here).
ORIGINAL = {"retain_dice": 0.8, "retain_mae": 0.02, "forget_dice": 0.8, "forget_mae": 0.02}
ORIGINAL |= {"holdout_dice": math.nan, "holdout_mae": math.nan}


def _run_dir(tmp_path: Path, cache_home: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """A run directory with the tiny cohort's config, an untrained original model and one
    ``noisy_label`` trial recorded for 2 epochs; returns it and the original's state."""
    run = RunDir(tmp_path / "run")
    study = StudyConfig(
        run_dir=str(run.path),
        cache_dir=str(cache_home / "mri-unlearning-study"),
        forget=["070"],
        retain=["1", "4"],
        holdout=[],
        input_size=[8, 32, 32],
        model_width=0.125,
        max_epochs=2,
        horizons=[1, 2],
    )
    run.path.mkdir()
    run.write_config(study)
    state = model_from(study, n_classes=4).state_dict()
    run.record_baseline("original", state, ORIGINAL)
    run.record_baseline("retrain", state, ORIGINAL)  # replay measures trials against both
    params = {"trial_number": 0, "lr": 1e-3, "optimizer": "adam", "weight_decay": 0.0, "warmup_epochs": 0}
    params |= {"bn_mode": "train", "retain_weight": 1.0, "noise_level": 1.0}
    history = [{**ORIGINAL, "epoch": epoch} for epoch in (1, 2)]
    run.write_trials(trial_rows("noisy_label", "abcd1234", params, history, "terminated"))
    return run.path, state


def test_replay_out_saves_the_model_with_its_trial_and_last_epoch(tmp_path: Path, cache_home: Path, capsys):
    run_dir, original = _run_dir(tmp_path, cache_home)
    first, last = tmp_path / "epoch1.pt", tmp_path / "last.pt"
    assert main([str(run_dir), "abcd1234", "--epochs", "1", "--out", str(first)]) == 0
    assert main([str(run_dir), "abcd1234", "--out", str(last)]) == 0  # every recorded epoch: 2
    out = capsys.readouterr().out
    assert f"saved {first}" in out and f"saved {last}" in out and "epoch   2" in out
    saved = {path: torch.load(path, map_location="cpu", weights_only=True) for path in (first, last)}
    assert {k: v for k, v in saved[first].items() if k != "model"} == {"trial_id": "abcd1234", "epoch": 1}
    assert {k: v for k, v in saved[last].items() if k != "model"} == {"trial_id": "abcd1234", "epoch": 2}
    model = model_from(StudyConfig(model_width=0.125), n_classes=4)
    model.load_state_dict(saved[last]["model"])  # a whole network of the study's architecture
    weights = [saved[first]["model"]["conv1.weight"], saved[last]["model"]["conv1.weight"]]
    assert not torch.equal(weights[0], original["conv1.weight"]) and not torch.equal(*weights)
