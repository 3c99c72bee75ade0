"""The baselines of every table: the original model and the retrain reference.

``original``: trained on retain + forget subjects; every strategy starts from it.
``retrain``: the same recipe on retain subjects only: exact unlearning, the gold standard.
Both train with the shared epoch loop and are cached under a key of everything that
determines them: the cohort's content, the network, the initial weights and the recipe.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.config import StudyConfig
from study.data import Cohort
from study.metrics import set_metrics
from study.model import MedicalNetSegmentation, file_digest, load_medicalnet_weights
from study.results import atomic_write
from trainables.loop import LoopSettings, device_for_training, run_epochs
from trainables.strategy import Batch, Strategy, segmentation_loss

MODEL_FILE = "model.pt"
METRICS_FILE = "metrics.json"


#: Baseline name -> whether its training set includes the forget subjects.
BASELINES = {"original": True, "retrain": False}


class Supervised(Strategy):
    """True labels on every subject fed: how the baselines are trained."""

    name = "supervised"

    def __init__(self, uses_forget: bool) -> None:
        super().__init__({}, n_classes=0, original_model=None)
        self.uses_forget = uses_forget

    def loss(self, model: nn.Module, batch: Batch) -> torch.Tensor:
        return segmentation_loss(model(batch.images), batch.labels)


def build_model(config: StudyConfig, n_classes: int) -> MedicalNetSegmentation:
    """The study's network, randomly initialised (seeded by ``config.seed``)."""
    torch.manual_seed(config.seed)
    return MedicalNetSegmentation(depth=config.model_depth, n_classes=n_classes, width=config.model_width)


def baseline_key(config: StudyConfig, cohort: Cohort, name: str) -> str:
    """Cache key of baseline ``name``: changes whenever anything that shapes it changes."""
    recipe = {
        "kind": name,
        "cohort": cohort.digest,
        "depth": config.model_depth,
        "width": config.model_width,
        "weights": file_digest(Path(config.weights)) if config.weights else "",
        "epochs": config.baseline_epochs,
        "lr": config.baseline_lr,
        "batch_size": config.batch_size,
        "seed": config.seed,
        "loop_version": 2,
    }
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def load_cached(cache_dir: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """``(state_dict, metrics)`` of the baseline cached under ``key``, or ``None``."""
    folder = cache_dir / "models" / key
    if not (folder / MODEL_FILE).is_file() or not (folder / METRICS_FILE).is_file():
        return None
    state = torch.load(folder / MODEL_FILE, map_location="cpu", weights_only=True)
    return state, json.loads((folder / METRICS_FILE).read_text())


def store_cached(
    cache_dir: Path, key: str, state: dict[str, torch.Tensor], metrics: dict[str, float]
) -> None:
    """Caches a baseline under ``key``; the metrics file, written last, marks it complete."""
    folder = cache_dir / "models" / key
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / MODEL_FILE, lambda p: torch.save(state, p))
    atomic_write(folder / METRICS_FILE, lambda p: p.write_text(json.dumps(metrics, indent=1)))


def record_baseline(
    run_dir: Path, name: str, state: dict[str, torch.Tensor], metrics: dict[str, float]
) -> None:
    """Writes ``baseline/<name>.pt`` and adds ``name``'s metrics to ``baseline/metrics.json``."""
    folder = run_dir / "baseline"
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write(folder / f"{name}.pt", lambda p: torch.save(state, p))
    path = folder / METRICS_FILE
    table = json.loads(path.read_text()) if path.is_file() else {}
    table[name] = metrics
    atomic_write(path, lambda p: p.write_text(json.dumps(table, indent=1)))


def train_baseline(
    name: str, config: StudyConfig, cohort: Cohort, threads: int = 1
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Trains baseline ``name`` (see ``BASELINES``); returns its CPU ``state_dict`` and set metrics.

    Starts from the MedicalNet weights in ``config.weights`` when given, else from a random
    initialisation; every subject of its training set is seen with true labels.
    """
    torch.set_num_threads(threads)
    model = build_model(config, cohort.n_classes)
    if config.weights:
        load_medicalnet_weights(model, Path(config.weights))
    strategy = Supervised(uses_forget=BASELINES[name])
    settings = LoopSettings(
        max_epochs=config.baseline_epochs,
        lr=config.baseline_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        checkpoint_every=0,
        cosine_decay=True,
        eval_every=max(1, config.baseline_epochs // 5),
    )
    started = time.monotonic()

    def progress(metrics: dict[str, Any], state: Any) -> None:
        if metrics["epoch"] % settings.eval_every == 0:
            print(
                f"{name} model: epoch {metrics['epoch']}/{settings.max_epochs}  "
                f"retain Dice {metrics['retain_dice']:.3f}  forget Dice {metrics['forget_dice']:.3f}  "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )

    run_epochs(model, strategy, cohort, settings, progress)
    metrics = set_metrics(model, cohort, device_for_training())
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, metrics
