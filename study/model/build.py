"""The study's network made from its configuration: randomly initialised, from a state dict,
or from MedicalNet weights; and its weights copied out for the object store or a file."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from study.config import StudyConfig
from study.model.network import MedicalNetSegmentation
from study.model.weights import load_medicalnet_weights


def model_from(
    config: StudyConfig, n_classes: int, state: dict[str, torch.Tensor] | None = None
) -> MedicalNetSegmentation:
    """The study's network with ``state``'s weights, or randomly initialised without one.

    torch's global generator is seeded with ``config.seed`` first either way, so the random
    initialisation is the seed's and every model built leaves the generator in one state.
    """
    torch.manual_seed(config.seed)
    model = MedicalNetSegmentation(depth=config.model_depth, n_classes=n_classes, width=config.model_width)
    if state is not None:
        model.load_state_dict(state)
    return model


def cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A copy of ``model``'s state dict on the CPU, detached: what travels and is saved."""
    return {k: v.detach().cpu() for k, v in model.state_dict().items()}


def initial_state(config: StudyConfig, n_classes: int) -> tuple[dict[str, torch.Tensor], str]:
    """The state the models of the original recipe start from, and a note on how it was made.

    MedicalNet weights from ``config.weights`` (read here, on the driver, so that no task
    opens the driver's files) or the network's own random initialisation from ``config.seed``.
    """
    model = model_from(config, n_classes)
    note = "random initialisation"
    if config.weights:
        loaded = load_medicalnet_weights(model, Path(config.weights))
        note = f"MedicalNet weights {config.weights}; {loaded['head']}"
    return cpu_state(model), note
