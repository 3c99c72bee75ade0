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
from analysis.study_state import Study, reproduce_command
from study.cohort import CLASS_NAMES, Cohort, open_cohort
from study.model import model_from


def overlay_figure(study: Study, cohort: Cohort | None = None) -> tuple[bytes | None, str]:
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
    if (recommendation := study.recommendation) is not None:
        recommended = study.run.load_model_of(recommendation.trial_id, recommendation.epoch)
        if recommended is None:
            notes.append(
                f"the recommended model (trial {recommendation.trial_id} after {recommendation.epoch} "
                f"epochs) is not saved; add it with: {reproduce_command(study, recommendation, out=True)}"
            )
        else:
            states["recommended model"] = recommended
    config = study.config
    cohort = open_cohort(config) if cohort is None else cohort
    models = {name: model_from(config, cohort.n_classes, state).eval() for name, state in states.items()}
    panels = [
        _panel(f"{set_name} subject {subject}", cohort, subject, models)
        for set_name, subject in (("forget", cohort.split.forget[0]), ("retain", cohort.split.retain[0]))
    ]
    return overlay_plot(panels, CLASS_NAMES[config.label_mode]), "; ".join(notes)


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
