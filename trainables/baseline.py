"""Models of the original recipe: the original model and the retrain reference, trained once.

``original``: trained on retain + forget subjects; every strategy starts from it.
``retrain``: the same recipe on retain subjects only: exact unlearning, the gold standard.
``reference_models`` is the one way to get them, for any cohort (its split says who is
retained and who forgotten) and seed (``config.seed``): each is taken from the cache or
trained, as Ray tasks side by side while Ray is up and in this process otherwise, and cached
under a key of everything that determines it as soon as it is trained; then both are
measured on every subject, the ``Reference`` that trials are scored against.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from study.cohort import Cohort
from study.config import EpochSchedule, StudyConfig
from study.metrics import Reference, measure_reference, set_metrics
from study.model import cpu_state, file_digest, model_from
from study.run.cluster import remote
from study.run.rundir import RunDir, atomic_write
from trainables.loop import run_epochs
from trainables.settings import Compute, LoopSettings
from trainables.strategy import Supervised

#: Model of the original recipe -> whether its training set includes the forget subjects.
KINDS = {"original": True, "retrain": False}
#: What the study prints of each model's figures.
SHOWN = ("retain_dice", "forget_dice", "holdout_dice", "forget_gap_to_retrain", "mia_auc", "mia_forget")


def cache_key(config: StudyConfig, cohort: Cohort, kind: str) -> str:
    """Cache key of model ``kind``: changes whenever anything that shapes it changes."""
    recipe = {
        "kind": kind,
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


def cache_file(config: StudyConfig, key: str) -> Path:
    """``{"model": state_dict, "metrics": set metrics}`` of the model cached under ``key``."""
    return config.cache_path / "models" / f"{key}.pt"


def load_cached(config: StudyConfig, key: str) -> tuple[dict[str, torch.Tensor], dict[str, float]] | None:
    """``(state_dict, metrics)`` of the model cached under ``key``, or ``None``."""
    path = cache_file(config, key)
    if not path.is_file():
        return None
    cached = torch.load(path, map_location="cpu", weights_only=True)
    return cached["model"], cached["metrics"]


def _store(config: StudyConfig, key: str, state: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
    path = cache_file(config, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: torch.save({"model": state, "metrics": metrics}, p))


def train_model(
    kind: str, config: StudyConfig, cohort: Cohort, start: dict[str, torch.Tensor], compute: Compute
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Trains model ``kind`` (one of ``KINDS``) from the state ``start``: plain Adam, cosine
    decay, true labels on every subject of its training set; returns its CPU state dict and
    set metrics."""
    compute.use_threads()
    model = model_from(config, cohort.n_classes, start)
    schedule = EpochSchedule(config.baseline_epochs, max(1, config.baseline_epochs // 5), checkpoint_every=0)
    settings = LoopSettings(
        schedule,
        lr=config.baseline_lr,
        weight_decay=0.0,
        batch_size=config.batch_size,
        seed=config.seed,
        cosine_decay=True,
    )
    started = time.monotonic()

    def progress(metrics: dict[str, Any], checkpoint: Any) -> None:
        if metrics["epoch"] % schedule.eval_every == 0:
            print(
                f"{kind} model: epoch {metrics['epoch']}/{schedule.max_epochs}  "
                f"retain Dice {metrics['retain_dice']:.3f}  forget Dice {metrics['forget_dice']:.3f}  "
                f"({time.monotonic() - started:.0f} s)",
                flush=True,
            )

    strategy = Supervised(n_classes=cohort.n_classes, uses_forget=KINDS[kind])
    run_epochs(model, strategy, cohort, settings, progress, compute=compute)
    return cpu_state(model), set_metrics(model, cohort, compute.torch_device())


def measure(
    config: StudyConfig, cohort: Cohort, states: dict[str, dict[str, torch.Tensor]], compute: Compute
) -> Reference:
    """The ``Reference``: both models (``states``) evaluated on every subject (set metrics,
    gaps, membership inference)."""
    compute.use_threads()
    models = {kind: model_from(config, cohort.n_classes, states[kind]) for kind in KINDS}
    device = compute.torch_device()
    return measure_reference(
        models["original"].to(device), models["retrain"].to(device), cohort, device, config.score_weight
    )


@dataclass(frozen=True)
class References:
    """The models of the original recipe for one cohort and the ``Reference`` measured with them."""

    states: dict[str, dict[str, torch.Tensor]]
    reference: Reference


class ReferencesInTraining:
    """``reference_models``' work: the models found in the cache, and the others in training
    (Ray tasks) or to train (in this process, once ``result()`` is asked for)."""

    def __init__(
        self,
        config: StudyConfig,
        cohort: Cohort,
        start: dict[str, torch.Tensor],
        states: dict[str, dict[str, torch.Tensor]],
        cores: int | None,
    ) -> None:
        self.config, self.cohort, self.start, self.states, self.cores = config, cohort, start, states, cores
        self.missing = [kind for kind in KINDS if kind not in states]
        self.cohort_ref: Any = None  # the cohort in Ray's object store, while Ray is up
        self.tasks: dict[Any, str] = {}  # Ray task -> the kind it trains

    def submit(self, cohort_ref: Any) -> None:
        """Starts a Ray task for every missing model, side by side."""
        import ray

        self.cohort_ref = cohort_ref if cohort_ref is not None else ray.put(self.cohort)
        if self.missing:
            compute, start = self.compute(len(self.missing)), ray.put(self.start)
            train = remote(self.config, train_model, compute.threads)
            self.tasks = {
                train.remote(k, self.config, self.cohort_ref, start, compute): k for k in self.missing
            }

    def result(self) -> References:
        """Both models, each trained one cached as soon as it is done, and their ``Reference``."""
        config, measuring = self.config, self.compute(1)
        if self.cohort_ref is None:  # in this process, one model after the other
            for kind in self.missing:
                self._trained(kind, *train_model(kind, config, self.cohort, self.start, self.compute(1)))
            return References(self._states(), measure(config, self.cohort, self._states(), measuring))
        import ray

        while self.tasks:
            (done, *_), _ = ray.wait(list(self.tasks))
            self._trained(self.tasks.pop(done), *ray.get(done))
        task = remote(config, measure, measuring.threads)
        return References(
            self._states(), ray.get(task.remote(config, self.cohort_ref, self._states(), measuring))
        )

    def compute(self, tasks: int) -> Compute:
        """How each of ``tasks`` running at once computes: with a trial's CPUs, or with a share
        of the cores that are ours alone."""
        cpus = max(1, self.cores // max(1, tasks)) if self.cores else self.config.cpus_per_trial
        return Compute.of(self.config, threads=cpus)

    def _trained(self, kind: str, state: dict[str, torch.Tensor], metrics: dict[str, float]) -> None:
        _store(self.config, cache_key(self.config, self.cohort, kind), state, metrics)
        self.states[kind] = state

    def _states(self) -> dict[str, dict[str, torch.Tensor]]:
        return {kind: self.states[kind] for kind in KINDS}


def reference_models(
    config: StudyConfig,
    cohort: Cohort,
    start: dict[str, torch.Tensor],
    known: dict[str, dict[str, torch.Tensor]] | None = None,
    cores: int | None = None,
    cohort_ref: Any = None,
) -> ReferencesInTraining:
    """Both models of the original recipe for ``cohort``: from the cache, or trained from
    ``start``, starting now (``result()`` waits for them and measures the ``Reference``).

    ``known``: states the caller holds already (a deletion request's original model).
    While Ray is up, each model trains and the two are measured in a Ray task that asks for a
    trial's resources (``cohort_ref``: the cohort in the object store, put there when not
    given); otherwise here. ``cores``: the CPUs of a Ray that is ours alone, shared by the
    tasks that run at once (``None``: each gets a trial's CPUs).
    """
    states = dict(known or {})
    forget = ",".join(cohort.split.forget)
    for kind in [k for k in KINDS if k not in states]:
        key = cache_key(config, cohort, kind)
        if (cached := load_cached(config, key)) is not None:
            print(f"{kind} model for forget set {forget}: cached ({cache_file(config, key)})")
            states[kind] = cached[0]
    training = ReferencesInTraining(config, cohort, start, states, cores)
    if training.missing:
        print(
            f"training {', '.join(training.missing)} for forget set {forget} ({config.baseline_epochs} epochs each)"
        )
    if _ray_is_up():
        training.submit(cohort_ref)
    return training


def _ray_is_up() -> bool:
    try:
        import ray
    except ImportError:  # a GPU machine running the benches has torch, not Ray
        return False
    return ray.is_initialized()


def record(run: RunDir, references: References) -> None:
    """Writes both models and their figures into the run directory, and prints the figures."""
    for kind, state in references.states.items():
        metrics = getattr(references.reference, kind)
        run.record_baseline(kind, state, metrics)
        print(f"{kind} model: " + "  ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN))
