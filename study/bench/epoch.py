"""``python -m study.bench epoch``: seconds per subject-epoch of the training loop, without Ray.

One training step is the loop's own (``trainables.loop.train_epoch``: the segmentation
loss, backward, Adam, the scheduler) on random volumes of the size measured; one
evaluation is the forward pass every subject gets after an epoch, in fp32 as the loop
evaluates. Each variant (precision, memory format, cuDNN autotuning on a GPU) runs in a
fresh process, so its peak memory is its own. FLOPs per step come from torch's FLOP
counter; the MFU divides the achieved rate by the card's dense peak where the card is known.
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from dataclasses import dataclass
from typing import Any

import torch

from study.config import EpochSchedule, StudyError
from study.model import MedicalNetSegmentation
from trainables.loop import fp32_logits, lr_schedule, train_epoch
from trainables.settings import LoopSettings
from trainables.strategy import Batch, Supervised, segmentation_loss


@dataclass(frozen=True)
class Size:
    """A network and input size: ``depth``, ``width``, ``input`` ``(D, H, W)``, ``batch``."""

    depth: int
    width: float
    input: tuple[int, int, int]
    batch: int


SIZES = {
    "demo": Size(10, 0.25, (16, 64, 64), 2),
    "paper": Size(50, 1.0, (48, 240, 240), 1),
    # The paper's network at the demo's input: what a CPU can measure in minutes.
    "paper-net-small-input": Size(50, 1.0, (16, 64, 64), 1),
}

#: Dense peak FLOP/s per card (bf16, and TF32, which cuDNN uses for fp32 convolutions by default).
PEAK_FLOPS = {"H100": {"bf16": 989e12, "fp32": 494e12}, "H200": {"bf16": 989e12, "fp32": 494e12}}


@dataclass(frozen=True)
class Variant:
    """How a step runs: its precision, memory format and cuDNN autotuning."""

    precision: str  # "fp32" or "bf16"
    channels_last: bool
    cudnn_benchmark: bool

    @property
    def name(self) -> str:
        parts = (
            [self.precision]
            + ["channels_last"] * self.channels_last
            + ["cudnn.benchmark"] * self.cudnn_benchmark
        )
        return "+".join(parts)


def variants(cuda: bool) -> list[Variant]:
    """fp32 and bf16, each in both memory formats; on a GPU each with and without cuDNN autotuning."""
    tuning = (False, True) if cuda else (False,)
    return [Variant(p, c, b) for b in tuning for p in ("fp32", "bf16") for c in (False, True)]


def _batch(size: Size, device: torch.device, channels_last: bool) -> Batch:
    """Random volumes ``(B, 3, D, H, W)`` and labels ``(B, D, H, W)`` in 4 classes."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(size.batch, 3, *size.input, generator=generator)
    labels = torch.randint(0, 4, (size.batch, *size.input), generator=generator)
    layout = torch.channels_last_3d if channels_last else torch.contiguous_format
    return Batch(
        images=images.to(device).contiguous(memory_format=layout),
        labels=labels.to(device),
        forget=torch.zeros(size.batch, dtype=torch.bool),
        generator=generator,
    )


def _step_flops(model: torch.nn.Module, batch: Batch) -> float:
    """FLOPs of one training step's forward and backward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        segmentation_loss(model(batch.images), batch.labels).backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def _seconds(work: Any, repeats: int, device: torch.device) -> float:
    """Mean wall seconds of ``work()`` over ``repeats`` calls."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - started) / repeats


def measure(size_name: str, variant: Variant, steps: int, threads: int) -> dict[str, Any]:
    """One row: seconds per subject for a training step and for an evaluation, memory, FLOPs."""
    torch.set_num_threads(threads)
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = variant.cudnn_benchmark
    size = SIZES[size_name]
    torch.manual_seed(0)
    model = MedicalNetSegmentation(depth=size.depth, n_classes=4, width=size.width)
    layout = torch.channels_last_3d if variant.channels_last else torch.preserve_format
    model.to(device, memory_format=layout).train()
    batch = _batch(size, device, variant.channels_last)
    if variant.precision == "bf16":
        fp32_logits(model)  # as the loop does
    flops = _step_flops(model, batch)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    scheduler = lr_schedule(optimizer, LoopSettings(EpochSchedule(1), lr=1e-4), steps + 2)
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    def train() -> None:
        train_epoch(model, Supervised(n_classes=4), [batch], optimizer, scheduler, variant.precision)

    def evaluate() -> None:  # in fp32, as the loop evaluates
        with torch.no_grad():
            model(batch.images)

    train()  # warm-up: allocator, cuDNN's autotuning, lazy initialisation
    step = _seconds(train, steps, device)
    model.eval()
    evaluate()
    forward = _seconds(evaluate, steps, device)
    peak = (
        torch.cuda.max_memory_allocated()
        if cuda
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    )
    card = torch.cuda.get_device_name() if cuda else "cpu"
    peak_flops = next((p[variant.precision] for name, p in PEAK_FLOPS.items() if name in card), None)
    return {
        "size": size_name,
        "variant": variant.name,
        "device": card,
        "train_s_per_subject": step / size.batch,
        "eval_s_per_subject": forward / size.batch,
        "peak_memory_gib": peak / 2**30,
        "memory": "GPU max allocated" if cuda else "process peak RSS",
        "tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / step / 1e12,
        "mfu": flops / step / peak_flops if peak_flops else float("nan"),
    }


def run(sizes: list[str], steps: int, threads: int, chosen: list[str] | None = None) -> list[dict[str, Any]]:
    """Every variant (or the ``chosen`` ones) at every size, each in a fresh process; rows as
    ``measure`` gives them, with each variant's training speed-up over fp32 at its size."""
    if unknown := [s for s in sizes if s not in SIZES]:
        raise StudyError(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    every = variants(torch.cuda.is_available())
    if chosen is not None and (unknown := sorted(set(chosen) - {v.name for v in every})):
        raise StudyError(
            f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(v.name for v in every)}"
        )
    rows = []
    context = multiprocessing.get_context("spawn")
    for size in sizes:
        for variant in [v for v in every if chosen is None or v.name in chosen]:
            print(f"epoch bench: {size} {variant.name} ...", flush=True)
            with context.Pool(1) as pool:
                rows.append(pool.apply(measure, (size, variant, steps, threads)))
    fp32 = {row["size"]: row["train_s_per_subject"] for row in rows if row["variant"] == "fp32"}
    for row in rows:
        row["speedup_vs_fp32"] = (
            fp32[row["size"]] / row["train_s_per_subject"] if row["size"] in fp32 else None
        )
    return rows
