"""Which models of the original recipe a study needs, and where each is cached.

A model of the original recipe is its training subjects (in the loop's order) and its seed;
its cache key adds the subjects' arrays and every setting that shapes it (not the study's
split: a shadow model serves every forget set, a retrain model every study that forgets the
same subjects).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from study.cohort import Cohort
from study.config import StudyConfig, first_line
from study.metrics.membership import shadow_subsets
from study.model import file_digest
from study.run.rundir import atomic_write

#: The two models every study has; ``recipes`` adds retrain seeds and shadow models.
KINDS = ("original", "retrain")
#: Shadow model ``m`` trains with seed ``seed + SHADOW_SEEDS + m``.
SHADOW_SEEDS = 1000


@dataclass(frozen=True)
class Recipe:
    """One model of the original recipe: the subjects it trains on (in the loop's order), its seed."""

    members: tuple[str, ...]
    seed: int


def recipes(config: StudyConfig, cohort: Cohort) -> dict[str, Recipe]:
    """Every model of the original recipe the study needs for ``cohort``, by name."""
    split = cohort.split
    models = {"original": Recipe(split.training, config.seed), "retrain": Recipe(split.retain, config.seed)}
    models |= {
        f"retrain_seed_{k}": Recipe(split.retain, config.seed + k) for k in range(1, config.retrain_seeds)
    }
    halves = (
        shadow_subsets(cohort.labelled, config.shadow_models, config.seed) if config.shadow_models else []
    )
    models |= {f"shadow_{m}": Recipe(h, config.seed + SHADOW_SEEDS + m) for m, h in enumerate(halves)}
    return models


def cache_key(config: StudyConfig, cohort: Cohort, recipe: Recipe) -> str:
    """Cache key of the model of ``recipe``: changes whenever anything that shapes it changes
    (the subjects' arrays, not the study's split: a shadow model serves every forget set)."""
    key = {
        "members": list(recipe.members),
        "data": cohort.data_digest or cohort.digest,
        "depth": config.model_depth,
        "width": config.model_width,
        "weights": file_digest(Path(config.weights)) if config.weights else "",
        "epochs": config.baseline_epochs,
        "lr": config.baseline_lr,
        "batch_size": config.batch_size,
        "seed": recipe.seed,
        "loop_version": 4,  # 4: keyed by members; 3: labels 9 and 10 left out of the loss
    }
    if config.precision != "fp32" or config.channels_last:
        key |= {"precision": config.precision, "channels_last": config.channels_last}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]


def cache_file(config: StudyConfig, key: str) -> Path:
    """``{"model": state_dict, "metrics": set metrics}`` of the model cached under ``key``."""
    return config.cache_path / "models" / f"{key}.pt"


def load_cached(config: StudyConfig, key: str) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """``(state_dict, metrics)`` of the model cached under ``key``, or ``None`` (not cached,
    or a damaged file: said, and removed, so that the model is trained again)."""
    path = cache_file(config, key)
    if not path.is_file():
        return None
    try:
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached["model"], cached["metrics"]
    except Exception as exc:  # torch raises many types for a cut-off or corrupt file
        print(f"the cached model {path} is damaged ({first_line(exc)}): training it again", flush=True)
        path.unlink(missing_ok=True)
        return None


def store(config: StudyConfig, key: str, state: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
    path = cache_file(config, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: torch.save({"model": state, "metrics": metrics}, p))
