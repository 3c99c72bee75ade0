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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from study.cluster import task_options, trial_device
from study.config import StudyConfig
from study.data import Cohort
from study.metrics import Reference, measure_reference, set_metrics
from study.model import MedicalNetSegmentation
from study.results import atomic_write
from study.run import RunDir
from study.weights import file_digest, load_medicalnet_weights
from trainables.loop import LoopSettings, device_for_training, run_epochs
from trainables.strategy import Batch, Strategy, segmentation_loss

#: Baseline name -> whether its training set includes the forget subjects.
BASELINES = {"original": True, "retrain": False}


@dataclass(kw_only=True, eq=False)
class Supervised(Strategy):
    """True labels on every subject fed (forget subjects too when ``uses_forget``): how the
    baselines are trained."""

    uses_forget: bool = True  # type: ignore[misc]  # a field here, a class constant in strategies

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
        "loop_version": 3,  # 3: labels 9 and 10 left out of the loss
    }
    if config.precision != "fp32" or config.channels_last:  # so the fp32 keys stay as they were
        recipe |= {"precision": config.precision, "channels_last": config.channels_last}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / "models" / f"{key}.pt"


def load_cached(cache_dir: Path, key: str) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """``(state_dict, metrics)`` of the baseline cached under ``key``, or ``None``."""
    path = _cache_file(cache_dir, key)
    if not path.is_file():
        return None
    cached = torch.load(path, map_location="cpu", weights_only=True)
    return cached["model"], cached["metrics"]


def store_cached(
    cache_dir: Path, key: str, state: dict[str, torch.Tensor], metrics: dict[str, float]
) -> None:
    """Caches a baseline under ``key``: one file, written atomically."""
    path = _cache_file(cache_dir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: torch.save({"model": state, "metrics": metrics}, p))


def initial_state(config: StudyConfig, n_classes: int) -> tuple[dict[str, torch.Tensor], str]:
    """The state both baselines start from, and a note on how it was made.

    MedicalNet weights from ``config.weights`` (read here, on the driver, so that no task
    opens the driver's files) or the network's own random initialisation.
    """
    model = build_model(config, n_classes)
    note = "random initialisation"
    if config.weights:
        loaded = load_medicalnet_weights(model, Path(config.weights))
        note = f"MedicalNet weights {config.weights}; {loaded['head']}"
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, note


def train_baseline(
    name: str,
    config: StudyConfig,
    cohort: Cohort,
    start: dict[str, torch.Tensor],
    threads: int = 1,
    device: str = "",
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Trains baseline ``name`` (see ``BASELINES``) from the state ``start``; returns its CPU
    ``state_dict`` and set metrics. Every subject of its training set is seen with true labels.
    """
    torch.set_num_threads(threads)
    model = build_model(config, cohort.n_classes)
    model.load_state_dict(start)
    strategy = Supervised(n_classes=cohort.n_classes, uses_forget=BASELINES[name])
    settings = LoopSettings(
        max_epochs=config.baseline_epochs,
        lr=config.baseline_lr,
        batch_size=config.batch_size,
        seed=config.seed,
        checkpoint_every=0,
        cosine_decay=True,
        eval_every=max(1, config.baseline_epochs // 5),
        device=device,
        precision=config.precision,
        channels_last=config.channels_last,
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
    metrics = set_metrics(model, cohort, device_for_training(device))
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return state, metrics


def measure_baselines(
    config: StudyConfig,
    cohort: Cohort,
    states: dict[str, dict[str, torch.Tensor]],
    threads: int = 1,
    device: str = "",
) -> Reference:
    """The study's ``Reference``: both baselines evaluated on every subject (set metrics,
    gaps, membership inference) from their state dicts ``states``."""
    torch.set_num_threads(threads)
    models = {}
    for name in BASELINES:
        models[name] = build_model(config, cohort.n_classes)
        models[name].load_state_dict(states[name])
    on = device_for_training(device)
    return measure_reference(
        models["original"].to(on), models["retrain"].to(on), cohort, on, config.score_weight
    )


#: What the study prints of each baseline's figures.
SHOWN = ("retain_dice", "forget_dice", "holdout_dice", "forget_gap_to_retrain", "mia_auc", "mia_forget")


def trained_baselines(
    config: StudyConfig, cohort: Cohort, cohort_ref: Any, start_ref: Any, names: list[str], cpus: int
) -> dict[str, Any]:
    """Per baseline in ``names``: ``(state_dict, metrics)`` from the cache, else the ``ObjectRef``
    of a Ray task now training it (``cohort_ref``, ``start_ref``: the cohort and the initial
    state in the object store). ``cached_baselines`` waits for those and caches them."""
    import ray

    found: dict[str, Any] = {}
    for name in names:
        key = baseline_key(config, cohort, name)
        found[name] = load_cached(config.cache_path, key)
        if found[name] is not None:
            print(
                f"{name} model for forget set {','.join(cohort.split.forget)}: cached "
                f"({_cache_file(config.cache_path, key)})"
            )
    if missing := [name for name, cached in found.items() if cached is None]:
        print(
            f"training {', '.join(missing)} for forget set {','.join(cohort.split.forget)} "
            f"({config.baseline_epochs} epochs each)"
        )
        train = ray.remote(**task_options(config, cpus))(train_baseline)
        for name in missing:
            found[name] = train.remote(name, config, cohort_ref, start_ref, cpus, trial_device(config))
    return found


def cached_baselines(
    config: StudyConfig, cohort: Cohort, found: dict[str, Any]
) -> dict[str, dict[str, torch.Tensor]]:
    """The state dicts of ``trained_baselines``' answer, each trained one cached once done."""
    import ray

    states = {}
    for name, value in found.items():
        if not isinstance(value, tuple):
            value = ray.get(value)
            store_cached(config.cache_path, baseline_key(config, cohort, name), *value)
        states[name] = value[0]
    return states


def measured_reference(
    config: StudyConfig, cohort_ref: Any, states: dict[str, dict[str, torch.Tensor]], cpus: int
) -> Reference:
    """``measure_baselines`` run as a Ray task."""
    import ray

    measure = ray.remote(**task_options(config, cpus))(measure_baselines)
    return ray.get(measure.remote(config, cohort_ref, states, cpus, trial_device(config)))


def baseline_cpus(config: StudyConfig, local: bool, tasks: int) -> int:
    """CPUs per baseline task: a local Ray is ours alone, so ``tasks`` of them share every core."""
    import ray

    if not local:
        return config.cpus_per_trial
    return max(1, int(ray.cluster_resources().get("CPU", 1)) // max(1, tasks))


def train_or_load_baselines(
    config: StudyConfig,
    cohort: Cohort,
    cohort_ref: Any,
    start: dict[str, torch.Tensor],
    run: RunDir,
    local: bool,
) -> tuple[dict[str, dict[str, torch.Tensor]], Reference]:
    """Every baseline's weights and the study's ``Reference``, recorded in the run directory:
    weights from the cache, else trained side by side as Ray tasks (``cohort_ref``: the cohort
    in the object store); the figures measured in one more task."""
    import ray

    keys = {name: baseline_key(config, cohort, name) for name in BASELINES}
    missing = [name for name, key in keys.items() if not _cache_file(config.cache_path, key).is_file()]
    cpus = baseline_cpus(config, local, len(missing))
    states = cached_baselines(
        config, cohort, trained_baselines(config, cohort, cohort_ref, ray.put(start), list(BASELINES), cpus)
    )
    reference = measured_reference(config, cohort_ref, states, baseline_cpus(config, local, 1))
    for name, state in states.items():
        metrics = getattr(reference, name)
        run.record_baseline(name, state, metrics)
        print(f"{name} model: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN))
    return states, reference
