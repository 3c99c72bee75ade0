"""The shared epoch loop: forward, loss, backward, step, evaluate, report.

It runs without Ray: results go to a ``report(metrics, state)`` callback, where ``state``
is a checkpoint (a dict of tensors and numbers) on checkpoint epochs and ``None`` otherwise.
The Tune trainable, the original model and the retrain reference all train through it.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from study.data import Cohort
from study.metrics import derived_metrics, set_metrics
from trainables.strategy import Batch, Strategy

Report = Callable[[dict[str, float], dict[str, Any] | None], None]


@dataclass(frozen=True)
class LoopSettings:
    """How one run of the loop trains.

    ``checkpoint_every``: epochs between checkpoints (0: only at ``checkpoint_epochs`` and
    the last epoch). ``original_metrics``: the original model's set metrics, to report
    ``forget_drop`` and friends; ``None`` when training the original model itself.
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
    original_metrics: dict[str, float] | None = None
    score_weight: float = 0.5
    device: str = ""  # "cpu", "cuda" (the GPU Ray assigned), or empty: a GPU if torch sees one


def device_for_training(requested: str = "") -> torch.device:
    """``requested`` ("cpu" or "cuda"), or when empty the GPU torch sees, else the CPU.

    Under Ray a trial names its device from its request: one that asked for no GPU runs on
    the CPU even on a GPU node (Ray leaves every GPU visible to it), and one that asked for
    a GPU uses the one Ray made visible.
    """
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("this trial asked for a GPU, but torch sees none on its node")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


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
    generator: torch.Generator,
) -> list[Batch]:
    """Every training subject once, shuffled, in batches that may mix retain and forget."""
    order = torch.randperm(len(subjects), generator=generator).tolist()
    batches = []
    for start in range(0, len(order), batch_size):
        chosen = [subjects[i] for i in order[start : start + batch_size]]
        batches.append(
            Batch(
                images=torch.stack([images[s] for s, _ in chosen]),
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
    metrics = set_metrics(model, cohort, device)
    if settings.original_metrics is not None:
        metrics |= derived_metrics(metrics, settings.original_metrics, settings.score_weight)
    return metrics


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
    model.to(device)
    strategy.prepare(model, cohort, device)
    frozen = strategy.frozen_modules(model)
    frozen_ids = {id(p) for module in frozen for p in module.parameters()}
    for param in model.parameters():
        param.requires_grad_(id(param) not in frozen_ids)
    optimizer = _optimizer([p for p in model.parameters() if p.requires_grad], settings)

    split = cohort.split
    subjects = [(s, False) for s in split.retain]
    if strategy.uses_forget:
        subjects += [(s, True) for s in split.forget]
    # Copies: arrays from Ray's object store are read-only.
    images = {s: torch.tensor(cohort.images[s], device=device) for s, _ in subjects}
    labels = {s: torch.tensor(cohort.labels[s], dtype=torch.long, device=device) for s, _ in subjects}
    steps_per_epoch = math.ceil(len(subjects) / settings.batch_size)
    warmup_steps = settings.warmup_epochs * steps_per_epoch
    total_steps = settings.max_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        if settings.cosine_decay:
            return 0.5 * (1 + math.cos(math.pi * step / total_steps))
        return 1.0

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)

    first_epoch, metrics = 1, {}
    if resume_state is not None:
        model.load_state_dict(resume_state["model"])
        optimizer.load_state_dict(resume_state["optimizer"])
        scheduler.load_state_dict(resume_state["scheduler"])
        first_epoch = int(resume_state["epoch"]) + 1
        metrics = dict(resume_state["metrics"])

    for epoch in range(first_epoch, settings.max_epochs + 1):
        generator = torch.Generator().manual_seed(settings.seed * 100_003 + epoch)
        _set_train_mode(model, settings.bn_mode, frozen)
        diverged = False
        for batch in _batches(subjects, images, labels, settings.batch_size, generator):
            loss = strategy.loss(model, batch)
            if not torch.isfinite(loss):
                diverged = True
                break
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            strategy.after_step(model)

        last = epoch == settings.max_epochs
        if diverged or last or epoch % settings.eval_every == 0:
            evaluated = _evaluate(model, cohort, settings, device)
            if not diverged or _finite(evaluated):
                metrics = evaluated
        if diverged:
            if not metrics and settings.original_metrics is not None:
                # Nothing finite since the start: the last finite model is the original one.
                metrics = settings.original_metrics | derived_metrics(
                    settings.original_metrics, settings.original_metrics, settings.score_weight
                )
            report({**metrics, "epoch": epoch, "diverged": 1.0}, None)
            return metrics
        checkpoint_now = (
            last
            or epoch in settings.checkpoint_epochs
            or (settings.checkpoint_every and epoch % settings.checkpoint_every == 0)
        )
        state = None
        if checkpoint_now:
            # A snapshot: the live tensors keep changing after the report returns.
            state = copy.deepcopy(
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "metrics": metrics,
                }
            )
        report({**metrics, "epoch": epoch, "diverged": 0.0}, state)
    return metrics
