"""A trial without Ray: its model, its strategy and its loop settings, from its config.

The Tune wrapper (``tune_trainable.py``), ``trainables.replay`` and the recommended-model
replay all build trials here, so a trial replayed in-process is the trial Tune ran. A
trial's config holds ``strategy``, ``trial_number`` (its seed), the loop's hyperparameters
(``LOOP_HYPERPARAMETERS``) and the strategy's own; a name that neither takes is a
``TypeError`` when the trial is built.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from study.config import StudyConfig
from study.data import Cohort
from study.metrics import Reference
from study.results import NOT_SEARCHED
from trainables.baseline import build_model
from trainables.loop import LoopSettings
from trainables.strategy import Strategy

#: The hyperparameters of a trial's config that the epoch loop takes (every other one is the strategy's).
LOOP_HYPERPARAMETERS = ("lr", "optimizer", "weight_decay", "warmup_epochs", "bn_mode")


def loop_settings(
    params: dict[str, Any], study: StudyConfig, reference: Reference | None, device: str = ""
) -> LoopSettings:
    """The loop's settings for a trial with config ``params``."""
    return LoopSettings(
        **{name: params[name] for name in LOOP_HYPERPARAMETERS},
        max_epochs=study.max_epochs,
        batch_size=study.batch_size,
        seed=study.seed * 10_007 + int(params.get("trial_number", 0)),
        checkpoint_every=study.checkpoint_every,
        eval_every=study.eval_every,
        checkpoint_epochs=tuple(study.horizons),
        reference=reference,
        score_weight=study.score_weight,
        device=device,
        precision=study.precision,
        channels_last=study.channels_last,
    )


def build_trial(
    strategy: type[Strategy],
    params: dict[str, Any],
    study: StudyConfig,
    cohort: Cohort,
    original_state: dict[str, torch.Tensor],
) -> tuple[nn.Module, Strategy]:
    """The model to unlearn (a copy of the original) and the ``strategy`` with ``params``'s
    hyperparameters."""
    model = build_model(study, cohort.n_classes)
    model.load_state_dict(original_state)
    original_model = copy.deepcopy(model).eval().requires_grad_(False)
    own = {k: v for k, v in params.items() if k not in LOOP_HYPERPARAMETERS and k not in NOT_SEARCHED}
    seed = int(params.get("trial_number", 0))
    return model, strategy(n_classes=cohort.n_classes, original_model=original_model, seed=seed, **own)
