"""Overlays of one forget and one retain subject before and after unlearning.

The only part of the report that loads models and images: the original model and the
retrain reference from the baselines, the recommended one from ``recommended.pt`` or a kept
Tune checkpoint. The retrain reference's segmentation is what the recommended model's
should look like: on a forget subject, that of a model that never saw it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from analysis.plots import overlay_plot
from analysis.study_state import Recommendation, Study, reproduce_command
from study.config import StudyConfig
from study.data import CLASS_NAMES, Cohort, open_cohort
from study.model import MedicalNetSegmentation


def overlay_figure(
    study: Study, recommendation: Recommendation | None, cohort: Cohort | None = None
) -> tuple[bytes | None, str]:
    """The overlay figure (``None`` while no original model is saved) and a note on what it lacks.

    ``cohort``: the study's, when the caller holds it; read from disk otherwise."""
    original = study.run.load_baseline("original")
    if original is None:
        return None, "no overlays: the original model is not saved yet"
    states = {"original model": original}
    retrain = study.run.load_baseline("retrain")
    if retrain is not None:
        states["retrain reference"] = retrain
    notes = [] if retrain is not None else ["the retrain reference is not saved yet"]
    if recommendation is not None:
        trial_id, epoch = recommendation["trial_id"], int(recommendation["epoch"])
        recommended = study.run.load_model_of(trial_id, epoch)
        if recommended is None:
            notes.append(
                f"the recommended model (trial {trial_id} after {epoch} epochs) is not saved; "
                f"add it with: {reproduce_command(study, recommendation, out=True)}"
            )
        else:
            states["recommended model"] = recommended
    config = study.config
    cohort = open_cohort(config) if cohort is None else cohort
    models = {name: _model(config, cohort.n_classes, state) for name, state in states.items()}
    panels = [
        _panel(f"{set_name} subject {subject}", cohort, subject, models)
        for set_name, subject in (("forget", cohort.split.forget[0]), ("retain", cohort.split.retain[0]))
    ]
    return overlay_plot(panels, CLASS_NAMES[config.label_mode]), "; ".join(notes)


def _model(config: StudyConfig, n_classes: int, state: dict[str, torch.Tensor]) -> nn.Module:
    model = MedicalNetSegmentation(config.model_depth, n_classes, width=config.model_width)
    model.load_state_dict(state)
    return model.eval()


def _panel(
    title: str, cohort: Cohort, subject: str, models: dict[str, nn.Module]
) -> tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]:
    """The middle slice ``(H, W)`` of ``subject``'s first channel, its labels and each model's classes."""
    image = torch.tensor(cohort.images[subject])[None]  # (1, C, D, H, W)
    middle = image.shape[2] // 2
    maps = [("ground truth", cohort.labels[subject][middle])]
    with torch.no_grad():
        maps += [(name, model(image).argmax(dim=1)[0, middle].numpy()) for name, model in models.items()]
    return title, image[0, 0, middle].numpy(), maps
