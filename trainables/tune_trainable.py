"""The Ray Tune function trainable: a thin wrapper that runs the epoch loop for one trial.

Ray is imported here only; the loop itself runs without it.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.config import StudyConfig
from study.data import Cohort
from trainables import STRATEGIES
from trainables.baseline import build_model
from trainables.loop import LoopSettings, run_epochs
from trainables.strategy import Strategy

STATE_FILE = "state.pt"


def loop_settings(
    params: dict[str, Any], study: StudyConfig, original_metrics: dict[str, float]
) -> LoopSettings:
    """The loop's settings for a trial with hyperparameters ``params``."""
    return LoopSettings(
        max_epochs=study.max_epochs,
        lr=params["lr"],
        batch_size=study.batch_size,
        optimizer=params["optimizer"],
        weight_decay=params["weight_decay"],
        warmup_epochs=int(params["warmup_epochs"]),
        bn_mode=params["bn_mode"],
        seed=study.seed * 10_007 + int(params.get("trial_number", 0)),
        checkpoint_every=study.checkpoint_every,
        checkpoint_epochs=tuple(study.horizons),
        original_metrics=original_metrics,
        score_weight=study.score_weight,
    )


def build_trial(
    strategy_name: str,
    params: dict[str, Any],
    study: StudyConfig,
    cohort: Cohort,
    original_state: dict[str, torch.Tensor],
) -> tuple[nn.Module, Strategy]:
    """The model to unlearn (a copy of the original) and the trial's strategy."""
    model = build_model(study, cohort.n_classes)
    model.load_state_dict(original_state)
    original_model = copy.deepcopy(model).eval().requires_grad_(False)
    return model, STRATEGIES[strategy_name](params, cohort.n_classes, original_model)


def unlearning_trial(
    params: dict[str, Any],
    *,
    strategy_name: str,
    study: StudyConfig,
    cohort: Cohort,
    original_state: dict[str, torch.Tensor],
    original_metrics: dict[str, float],
) -> None:
    """Runs one trial of ``strategy_name`` from the original model, resuming from Tune's checkpoint."""
    from ray import tune

    torch.set_num_threads(study.cpus_per_trial)
    model, strategy = build_trial(strategy_name, params, study, cohort, original_state)

    resume_state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            resume_state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)

    def report(metrics: dict[str, float], state: dict[str, Any] | None) -> None:
        if state is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    run_epochs(model, strategy, cohort, loop_settings(params, study, original_metrics), report, resume_state)


def trial_dirname(trial: Any) -> str:
    """A trial's folder is named by its id alone: short paths, no hyperparameter soup."""
    return f"trial_{trial.trial_id}"
