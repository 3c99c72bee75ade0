"""Which epochs of a trial are evaluated, reported and checkpointed: the one rule, for the epoch
loop that follows it and for the results table that expects its rows."""

from __future__ import annotations

from dataclasses import dataclass

from study.config.schema import StudyConfig


@dataclass(frozen=True)
class EpochSchedule:
    """The epochs of a run of ``max_epochs``.

    Checkpointed: the last, every one of ``horizons`` and every ``checkpoint_every``-th (0:
    none between). Reported (evaluated, one row of ``trials.parquet``): every
    ``eval_every``-th and every checkpointed one, so that each row's figures are its own
    epoch's and each checkpoint has its row.
    """

    max_epochs: int
    eval_every: int = 1
    checkpoint_every: int = 1
    horizons: tuple[int, ...] = ()

    @classmethod
    def of(cls, config: StudyConfig, epochs: int | None = None) -> EpochSchedule:
        """The schedule of ``config``'s trials, or of a rerun that stops after ``epochs``."""
        return cls(
            max_epochs=epochs or config.max_epochs,
            eval_every=config.eval_every,
            checkpoint_every=config.checkpoint_every,
            horizons=tuple(config.horizons),
        )

    def checkpoints(self, epoch: int) -> bool:
        """Whether a checkpoint is saved after ``epoch``."""
        every = self.checkpoint_every
        return epoch == self.max_epochs or epoch in self.horizons or bool(every and epoch % every == 0)

    def reports(self, epoch: int) -> bool:
        """Whether ``epoch`` is evaluated and reported."""
        return epoch % self.eval_every == 0 or self.checkpoints(epoch)

    def reported_epochs(self) -> list[int]:
        """Every epoch a run that finishes reports, in order."""
        return [e for e in range(1, self.max_epochs + 1) if self.reports(e)]
