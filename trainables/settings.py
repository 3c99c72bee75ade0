"""How a run of the epoch loop trains (``LoopSettings``) and where it computes (``Compute``)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from study.config import EpochSchedule, StudyConfig, check_precision

OPTIMIZERS = ("adam", "sgd")
#: ``train``: BatchNorm statistics update from every batch, as in ordinary fine-tuning;
#: ``frozen``: BatchNorm layers stay in eval mode with the original model's statistics;
#: ``recalibrate``: trained as ``train``, then after each epoch the statistics are estimated
#: again from the retain subjects alone, for every evaluated and saved model (BatchNorm layers
#: of the strategy's frozen modules keep the original's, as frozen modules keep all).
BN_MODES = ("train", "frozen", "recalibrate")


@dataclass(frozen=True)
class LoopSettings:
    """How one run of the loop trains: its epoch ``schedule``, its hyperparameters, its batches.

    The hyperparameters (``HYPERPARAMETERS``) default to the searches' hand-picked start:
    Adam at the customary 3e-4, light weight decay, no warm-up, BatchNorm statistics
    updating as in ordinary fine-tuning; the search spaces' common part suggests exactly
    these names and values. ``warmup_epochs``: a linear LR warm-up per step;
    ``cosine_decay``: the LR annealed to 0 by the last epoch (the original model's recipe).
    A misspelt ``optimizer`` or ``bn_mode`` is a ``ValueError`` instead of a silent default.
    """

    HYPERPARAMETERS: ClassVar[tuple[str, ...]] = (
        "lr",
        "optimizer",
        "weight_decay",
        "warmup_epochs",
        "bn_mode",
    )

    schedule: EpochSchedule
    lr: float = 3e-4
    optimizer: str = "adam"
    weight_decay: float = 1e-5
    warmup_epochs: int = 0
    bn_mode: str = "train"
    batch_size: int = 2
    seed: int = 0
    cosine_decay: bool = False

    def __post_init__(self) -> None:
        for name, allowed in (("optimizer", OPTIMIZERS), ("bn_mode", BN_MODES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {', '.join(allowed)}, got {getattr(self, name)!r}")

    @classmethod
    def start(cls) -> dict[str, Any]:
        """``{name: default}`` of the hyperparameters: where every search starts."""
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        return {name: defaults[name] for name in cls.HYPERPARAMETERS}

    @classmethod
    def for_trial(
        cls, config: dict[str, Any], study: StudyConfig, trial_number: int, epochs: int
    ) -> LoopSettings:
        """A trial's settings: the loop's hyperparameters from its ``config``, its seed from the
        study's and its trial number, ``epochs`` epochs on the study's schedule."""
        return cls(
            schedule=EpochSchedule.of(study, epochs),
            **{name: config[name] for name in cls.HYPERPARAMETERS},
            batch_size=study.batch_size,
            seed=study.seed * 10_007 + trial_number,
        )


@dataclass(frozen=True)
class Compute:
    """Where a run computes: ``device`` ("cpu" or "cuda", the GPU Ray assigned), the precision
    of its training steps' forward passes, the memory format of images and weights, and the
    torch threads it uses (``None``: as set).

    ``precision="bf16"`` runs those forward passes under bf16 autocast, on a GPU only
    (weights, optimizer, the logits the losses see and evaluation stay fp32).
    """

    device: str = "cpu"
    precision: str = "fp32"
    channels_last: bool = False
    threads: int | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision, on_gpu=self.device == "cuda", setting="a GPU device")

    @classmethod
    def of(cls, config: StudyConfig, threads: int | None = None) -> Compute:
        """How ``config``'s trials compute, ``threads`` (default: a trial's CPUs) threads each.

        The device is named from the request: a trial that asked for no GPU runs on the CPU
        even on a GPU node (Ray leaves every GPU visible to it), one that asked for a GPU
        uses the one Ray made visible.
        """
        device = "cuda" if config.gpus_per_trial > 0 else "cpu"
        return cls(device, config.precision, config.channels_last, threads or config.cpus_per_trial)

    def torch_device(self) -> torch.device:
        """The device, on the machine that computes; a GPU torch cannot see is an error."""
        if self.device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("this trial asked for a GPU, but torch sees none on its node")
        return torch.device(self.device)

    def use_threads(self) -> None:
        """Sets torch's thread count to ``threads`` (a trial's CPUs), when given."""
        if self.threads:
            torch.set_num_threads(self.threads)
