"""The shared epoch loop: forward, loss, backward, step, evaluate, report.

It runs without Ray: results go to a ``report(metrics, checkpoint)`` callback, called after
each epoch the schedule reports, where ``checkpoint`` is a ``TrialCheckpoint`` on
checkpointed epochs and ``None`` otherwise. Each report also says how long the model
trained since the last report (``seconds_train``), was evaluated (``seconds_eval``) and
copied for its checkpoint (``seconds_snapshot``), for ``python -m study.bench overhead``.
Trials and the models of the original recipe all train through it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn

from study.cohort import Cohort
from study.metrics import Scoring
from study.model import recalibrate_batchnorm
from study.run.checkpoint import TrialCheckpoint
from trainables.settings import Compute, LoopSettings
from trainables.strategy import Batch, Strategy

Report = Callable[[dict[str, float], TrialCheckpoint | None], None]
#: Scored without a reference (set figures alone), on the CPU: the defaults of ``run_epochs``.
SET_FIGURES, ON_CPU = Scoring(), Compute()


def run_epochs(
    model: nn.Module,
    strategy: Strategy,
    cohort: Cohort,
    settings: LoopSettings,
    report: Report,
    *,
    scoring: Scoring = SET_FIGURES,
    compute: Compute = ON_CPU,
    resume: TrialCheckpoint | None = None,
) -> dict[str, float]:
    """Trains ``model`` in place for ``settings.schedule.max_epochs`` epochs (or from the epoch
    after ``resume``'s); returns the last metrics.

    Each epoch sees every retain subject once, and every forget subject once when
    ``strategy.uses_forget``. A non-finite loss ends the run: the last report then carries
    ``diverged = 1.0`` and the metrics of the last finite model.
    """
    device = _place(model, compute)
    frozen = _prepare_model(model, strategy, cohort, device)
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], settings)
    subjects, images, labels = _training_set(strategy, cohort, device)
    scheduler = lr_schedule(optimizer, settings, math.ceil(len(subjects) / settings.batch_size))
    first_epoch, metrics = _resume(resume, model, optimizer, scheduler)
    retain = [images[s][None] for s, is_forget in subjects if not is_forget]
    schedule, timing = settings.schedule, _Timing()
    for epoch in range(first_epoch, schedule.max_epochs + 1):
        timing.start()
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        _set_train_mode(model, settings.bn_mode, frozen)
        batches = _batches(subjects, images, labels, settings.batch_size, compute.channels_last, generator)
        diverged = train_epoch(model, strategy, batches, optimizer, scheduler, compute.precision)
        if settings.bn_mode == "recalibrate":
            recalibrate_batchnorm(model, retain, keep=frozen)
        timing.trained()
        if not diverged and not schedule.reports(epoch):
            continue
        evaluated = scoring(model, cohort, device)
        if not diverged or _finite(evaluated):
            metrics = evaluated
        seconds = timing.evaluated()
        if diverged:
            metrics = metrics or scoring.at_start()  # nothing finite since the start: the original's
            report({**metrics, "epoch": epoch, "diverged": 1.0, **seconds}, None)
            return metrics
        checkpoint = None
        if schedule.checkpoints(epoch):
            checkpoint = TrialCheckpoint.snapshot(epoch, model, optimizer, scheduler, metrics)
        seconds["seconds_snapshot"] = timing.since_evaluated()
        report({**metrics, "epoch": epoch, "diverged": 0.0, **seconds}, checkpoint)
    return metrics


def train_epoch(
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


def lr_schedule(
    optimizer: torch.optim.Optimizer, settings: LoopSettings, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: a linear warm-up over ``warmup_epochs``, then ``lr`` (or a cosine decay to 0)."""
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    total_steps = settings.schedule.max_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if settings.cosine_decay:
            return 0.5 * (1 + math.cos(math.pi * step / total_steps))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)


def fp32_logits(model: nn.Module) -> None:
    """Makes ``model`` return fp32 logits under autocast, so that every loss is computed in fp32."""
    model.register_forward_hook(lambda module, inputs, logits: logits.float())


class _Timing:
    """Seconds a run spent training and evaluating since its last report."""

    def __init__(self) -> None:
        self._training = 0.0

    def start(self) -> None:
        self._started = time.perf_counter()

    def trained(self) -> None:
        self._trained = time.perf_counter()
        self._training += self._trained - self._started

    def evaluated(self) -> dict[str, float]:
        """``seconds_train`` (since the last report) and ``seconds_eval``; the count starts again."""
        self._evaluated = time.perf_counter()
        seconds = {"seconds_train": self._training, "seconds_eval": self._evaluated - self._trained}
        self._training = 0.0
        return seconds

    def since_evaluated(self) -> float:
        return time.perf_counter() - self._evaluated


def _place(model: nn.Module, compute: Compute) -> torch.device:
    """Moves ``model`` to ``compute``'s device and memory format; returns the device."""
    device = compute.torch_device()
    model.to(device, memory_format=torch.channels_last_3d if compute.channels_last else torch.preserve_format)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every batch has the same shape
    if compute.precision == "bf16":
        fp32_logits(model)
    return device


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
    batch_size: int,
    channels_last: bool,
    generator: torch.Generator,
) -> list[Batch]:
    """Every training subject once, shuffled, in batches that may mix retain and forget."""
    order = torch.randperm(len(subjects), generator=generator).tolist()
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = [subjects[i] for i in order[start : start + batch_size]]
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


def _resume(
    checkpoint: TrialCheckpoint | None,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, dict[str, float]]:
    """Loads ``checkpoint`` if given; returns ``(first epoch to run, its metrics)``."""
    if checkpoint is None:
        return 1, {}
    model.load_state_dict(checkpoint.model)
    optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    return checkpoint.epoch + 1, dict(checkpoint.metrics)
