"""A trial's checkpoint: the one format a trial saves, Tune keeps, ``--resume`` continues
from and the report reads the recommended model from."""

from __future__ import annotations

import copy
import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch loads where a checkpoint is written or read, not with the run directory
    import torch

#: The file inside a checkpoint folder.
STATE_FILE = "state.pt"
#: What the file holds where a lost checkpoint was replaced: the trial starts again from epoch 1.
_START_AGAIN = {"start_again": True}


@dataclass(frozen=True)
class TrialCheckpoint:
    """A trial after ``epoch``: its model's, optimizer's and LR scheduler's state dicts and
    that epoch's figures."""

    epoch: int
    model: dict[str, Any]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    metrics: dict[str, float]

    @classmethod
    def snapshot(
        cls,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        metrics: dict[str, float],
    ) -> TrialCheckpoint:
        """Copies of the live states, which go on changing after the checkpoint is handed over."""
        states = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
        states |= {"scheduler": scheduler.state_dict(), "metrics": metrics}
        return cls(epoch=epoch, **copy.deepcopy(states))

    def save(self, folder: Path) -> None:
        """Writes ``folder/state.pt`` (plain tensors and numbers: ``torch.load(weights_only=True)`` reads it)."""
        import torch

        states = {"epoch": self.epoch, "model": self.model, "optimizer": self.optimizer}
        torch.save(states | {"scheduler": self.scheduler, "metrics": self.metrics}, Path(folder) / STATE_FILE)

    @classmethod
    def load(cls, folder: Path) -> TrialCheckpoint | None:
        """The checkpoint saved in ``folder``, or ``None`` where the start-again marker stands."""
        import torch

        state = torch.load(Path(folder) / STATE_FILE, map_location="cpu", weights_only=True)
        if state == _START_AGAIN:
            return None
        return cls(**state)


def start_again_marker() -> bytes:
    """The bytes of a ``state.pt`` that tells its trial to start again from epoch 1."""
    import torch

    buffer = io.BytesIO()
    torch.save(_START_AGAIN, buffer)
    return buffer.getvalue()
