"""A trial without Ray: its model, its strategy and its loop settings, from its config.

The Tune wrapper (``tune_trainable.py``), ``trainables.replay`` and the recommended-model
replay all build trials here, so a trial replayed in-process is the trial Tune ran.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from study.config import StudyConfig
from study.data import Cohort
from trainables import STRATEGIES
from trainables.baseline import build_model
from trainables.loop import LoopSettings
from trainables.strategy import Strategy


def loop_settings(
    params: dict[str, Any], study: StudyConfig, original_metrics: dict[str, float], device: str = ""
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
        device=device,
    )


def build_trial(
    params: dict[str, Any], study: StudyConfig, cohort: Cohort, original_state: dict[str, torch.Tensor]
) -> tuple[nn.Module, Strategy]:
    """The model to unlearn (a copy of the original) and the strategy ``params["strategy"]``."""
    model = build_model(study, cohort.n_classes)
    model.load_state_dict(original_state)
    original_model = copy.deepcopy(model).eval().requires_grad_(False)
    hyperparameters = {k: v for k, v in params.items() if k != "strategy"}  # trial_number seeds some
    return model, STRATEGIES[params["strategy"]](hyperparameters, cohort.n_classes, original_model)
