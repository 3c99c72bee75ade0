"""The shared epoch loop: forward, loss, backward, step, evaluate, report.

It runs without Ray: results go to a ``report(metrics, state)`` callback, called after each
evaluated epoch (every ``eval_every`` and every checkpointed one), where ``state`` is a
checkpoint (a dict of tensors and numbers) on checkpoint epochs and ``None`` otherwise.
Each report also says how long the model trained since the last report (``seconds_train``)
and was evaluated (``seconds_eval``), for ``python -m study.bench overhead``.
The Tune trainable, the original model and the retrain reference all train through it.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from study.config import BN_MODES, PRECISIONS, is_checkpointed, is_reported
from study.data import Cohort
from study.metrics import Reference, evaluate, set_metrics
from study.model import recalibrate_batchnorm
from trainables.strategy import Batch, Strategy

Report = Callable[[dict[str, float], dict[str, Any] | None], None]
OPTIMIZERS = ("adam", "sgd")


@dataclass(frozen=True)
class LoopSettings:
    """How one run of the loop trains.

    ``checkpoint_every``: epochs between checkpoints (0: only at ``checkpoint_epochs`` and
    the last epoch). ``eval_every``: epochs between evaluations (and reports); checkpointed
    epochs are evaluated and reported too (``study.config.is_reported``). ``reference``: the original and retrain models' figures, to report
    ``forget_drop``, the gaps to retrain and the membership inference; ``None`` when
    training the baselines themselves (set metrics only).
    ``bn_mode`` (one of ``study.config.BN_MODES``) and ``optimizer`` (one of ``OPTIMIZERS``)
    are checked here: a misspelt mode raises ``ValueError`` instead of silently training.
    ``"recalibrate"`` trains as ``"train"``, then after each epoch re-estimates the running
    statistics from retain subjects alone, for every evaluated and saved model (BatchNorm
    layers of the strategy's frozen modules keep the original's, as frozen modules keep all).
    ``precision``: ``"bf16"`` runs the training steps' forward passes under bf16 autocast,
    on a GPU only (weights, optimizer, the logits the losses see and evaluation stay fp32;
    on a CPU, bf16 autocast trained this network neither reproducibly nor stably);
    ``channels_last``: images and weights in the ``channels_last_3d`` memory format.
    """

    max_epochs: int
    lr: float
    batch_size: int = 2
    optimizer: str = "adam"
    weight_decay: float = 0.0
    warmup_epochs: int = 0
    cosine_decay: bool = False  # anneal the LR to 0 by the last epoch (the original model's recipe)
    bn_mode: str = "train"
    seed: int = 0
    checkpoint_every: int = 1
    checkpoint_epochs: tuple[int, ...] = ()
    eval_every: int = 1
    reference: Reference | None = None
    score_weight: float = 0.5
    device: str = ""  # "cpu", "cuda" (the GPU Ray assigned), or empty: a GPU if torch sees one
    precision: str = "fp32"
    channels_last: bool = False

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode must be one of {', '.join(BN_MODES)}, got {self.bn_mode!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")


def device_for_training(requested: str = "") -> torch.device:
    """``requested`` ("cpu" or "cuda"), or when empty the GPU torch sees, else the CPU.

    Under Ray a trial names its device from its request: one that asked for no GPU runs on
    the CPU even on a GPU node (Ray leaves every GPU visible to it), and one that asked for
    a GPU uses the one Ray made visible.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("this trial asked for a GPU, but torch sees none on its node")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def fp32_logits(model: nn.Module) -> None:
    """Makes ``model`` return fp32 logits under autocast, so that every loss is computed in fp32."""
    model.register_forward_hook(lambda module, inputs, logits: logits.float())


def _optimizer(params: list[nn.Parameter], settings: LoopSettings) -> torch.optim.Optimizer:
    if settings.optimizer == "sgd":
        return torch.optim.SGD(params, lr=settings.lr, momentum=0.9, weight_decay=settings.weight_decay)
    return torch.optim.Adam(params, lr=settings.lr, weight_decay=settings.weight_decay)


def _set_train_mode(model: nn.Module, bn_mode: str, frozen: list[nn.Module]) -> None:
    """Train mode, except frozen modules, and BatchNorm layers when ``bn_mode == 'frozen'``."""
    model.train()
    for module in frozen:
        module.eval()
    if bn_mode == "frozen":
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _batches(
    subjects: list[tuple[str, bool]],
    images: dict[str, torch.Tensor],
    labels: dict[str, torch.Tensor],
    settings: LoopSettings,
    generator: torch.Generator,
) -> list[Batch]:
    """Every training subject once, shuffled, in batches that may mix retain and forget."""
    order = torch.randperm(len(subjects), generator=generator).tolist()
    layout = torch.channels_last_3d if settings.channels_last else torch.contiguous_format
    batches = []
    for start in range(0, len(order), settings.batch_size):
        chosen = [subjects[i] for i in order[start : start + settings.batch_size]]
        batches.append(
            Batch(
                images=torch.stack([images[s] for s, _ in chosen]).contiguous(memory_format=layout),
                labels=torch.stack([labels[s] for s, _ in chosen]),
                forget=torch.tensor([is_forget for _, is_forget in chosen]),
                generator=generator,
            )
        )
    return batches


def _finite(metrics: dict[str, float]) -> bool:
    """Whether the figures of the trained-on sets are numbers (holdout may be NaN: absent)."""
    return all(math.isfinite(metrics[k]) for k in ("retain_dice", "retain_mae", "forget_dice", "forget_mae"))


def _evaluate(
    model: nn.Module, cohort: Cohort, settings: LoopSettings, device: torch.device
) -> dict[str, float]:
    if settings.reference is None:
        return set_metrics(model, cohort, device)
    return evaluate(model, cohort, device, settings.reference, settings.score_weight)


def _prepare_model(
    model: nn.Module, strategy: Strategy, cohort: Cohort, device: torch.device
) -> list[nn.Module]:
    """Runs ``strategy.prepare`` and stops gradients of its frozen modules; returns those modules."""
    strategy.prepare(model, cohort, device)
    frozen = strategy.frozen_modules(model)
    frozen_ids = {id(p) for module in frozen for p in module.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) not in frozen_ids)
    return frozen


def _training_set(
    strategy: Strategy, cohort: Cohort, device: torch.device
) -> tuple[list[tuple[str, bool]], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """``(subjects, images, labels)`` of the subjects trained on, on ``device``.

    ``subjects``: ``(name, is_forget)``, retain first, then forget when ``strategy.uses_forget``;
    ``images[name]``: ``(3, D, H, W)`` float32; ``labels[name]``: ``(D, H, W)`` int64.
    """
    split = cohort.split
    subjects = [(s, False) for s in split.retain]
    if strategy.uses_forget:
        subjects += [(s, True) for s in split.forget]
    # Copies: arrays from Ray's object store are read-only.
    images = {s: torch.tensor(cohort.images[s], device=device) for s, _ in subjects}
    labels = {s: torch.tensor(cohort.labels[s], dtype=torch.long, device=device) for s, _ in subjects}
    return subjects, images, labels


def _scheduler(
    optimizer: torch.optim.Optimizer, settings: LoopSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: a linear warm-up over ``warmup_epochs``, then ``lr`` (or a cosine decay to 0)."""
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    total_steps = settings.max_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if settings.cosine_decay:
            return 0.5 * (1 + math.cos(math.pi * step / total_steps))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def _resume(
    resume_state: dict[str, Any] | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, dict[str, float]]:
    """Loads a checkpoint (a ``_snapshot``) if given; returns ``(first epoch to run, its metrics)``."""
    if resume_state is None:
        return 1, {}
    model.load_state_dict(resume_state["model"])
    optimizer.load_state_dict(resume_state["optimizer"])
    scheduler.load_state_dict(resume_state["scheduler"])
    return int(resume_state["epoch"]) + 1, dict(resume_state["metrics"])


def _train_epoch(
    model: nn.Module,
    strategy: Strategy,
    batches: list[Batch],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    precision: str = "fp32",
) -> bool:
    """One step per batch; returns whether a loss was not finite (the epoch stops before stepping)."""
    device_type = next(model.parameters()).device.type
    for batch in batches:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = strategy.loss(model, batch)
        if not torch.isfinite(loss):
            return True
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        strategy.after_step(model)
    return False


def _last_finite(metrics: dict[str, float], settings: LoopSettings) -> dict[str, float]:
    """``metrics``, or when nothing finite was evaluated since the start, the original model's."""
    if not metrics and settings.reference is not None:
        return dict(settings.reference.original)
    return metrics


def _checkpoint_now(epoch: int, s: LoopSettings) -> bool:
    """Whether ``epoch`` is saved: the last, a ``checkpoint_epochs`` one, or every ``checkpoint_every``."""
    return is_checkpointed(epoch, s.max_epochs, s.checkpoint_every, s.checkpoint_epochs)


def _report_now(epoch: int, s: LoopSettings) -> bool:
    """Whether ``epoch`` is evaluated and reported: every ``eval_every`` and every checkpoint."""
    return is_reported(epoch, s.max_epochs, s.eval_every, s.checkpoint_every, s.checkpoint_epochs)


def _snapshot(
    epoch: int,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    metrics: dict[str, float],
) -> dict[str, Any]:
    """A checkpoint: copies, since the live tensors keep changing after the report returns."""
    return copy.deepcopy(
        {
            "epoch": epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "metrics": metrics,
        }
    )


def run_epochs(
    model: nn.Module,
    strategy: Strategy,
    cohort: Cohort,
    settings: LoopSettings,
    report: Report,
    resume_state: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Trains ``model`` in place for ``settings.max_epochs`` epochs; returns the last metrics.

    Each epoch sees every retain subject once, and every forget subject once when
    ``strategy.uses_forget``. A non-finite loss ends the run: the last report then carries
    ``diverged = 1.0`` and the metrics of the last finite model.
    """
    device = device_for_training(settings.device)
    model.to(
        device, memory_format=torch.channels_last_3d if settings.channels_last else torch.preserve_format
    )
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same shape
    if settings.precision == "bf16":
        if device.type != "cuda":
            raise ValueError("precision bf16 runs on a GPU only; this trial runs on the CPU")
        fp32_logits(model)
    frozen = _prepare_model(model, strategy, cohort, device)
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], settings)
    subjects, images, labels = _training_set(strategy, cohort, device)
    scheduler = _scheduler(optimizer, settings, math.ceil(len(subjects) / settings.batch_size))
    first_epoch, metrics = _resume(resume_state, model, optimizer, scheduler)

    training = 0.0  # seconds trained since the last report
    for epoch in range(first_epoch, settings.max_epochs + 1):
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        _set_train_mode(model, settings.bn_mode, frozen)
        batches = _batches(subjects, images, labels, settings, generator)
        diverged = _train_epoch(model, strategy, batches, optimizer, scheduler, settings.precision)
        if settings.bn_mode == "recalibrate":
            retain = [images[s][None] for s, is_forget in subjects if not is_forget]
            recalibrate_batchnorm(model, retain, keep=frozen)
        trained = time.perf_counter()
        training += trained - started
        if not diverged and not _report_now(epoch, settings):
            continue
        evaluated = _evaluate(model, cohort, settings, device)
        if not diverged or _finite(evaluated):
            metrics = evaluated
        timing = {"seconds_train": training, "seconds_eval": time.perf_counter() - trained}
        training = 0.0
        if diverged:
            metrics = _last_finite(metrics, settings)
            report({**metrics, "epoch": epoch, "diverged": 1.0, **timing}, None)
            return metrics
        snapshot = time.perf_counter()
        state = (
            _snapshot(epoch, model, optimizer, scheduler, metrics)
            if _checkpoint_now(epoch, settings)
            else None
        )
        timing["seconds_snapshot"] = time.perf_counter() - snapshot
        report({**metrics, "epoch": epoch, "diverged": 0.0, **timing}, state)
    return metrics
