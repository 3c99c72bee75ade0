"""One trial: what it is (``TrialSpec``) and the one function that runs it (``run_trial``).

Tune's trainable, the replay, the reruns of the recommendation, ``study.forget`` and the
search bench all run trials here, so a trial rerun anywhere is the trial Tune ran. A trial's
config (what the searcher gives it, what ``trials.parquet`` records) holds ``strategy``,
``trial_number`` (its seed) and its hyperparameters: the loop's
(``LoopSettings.HYPERPARAMETERS``) and the strategy's own; a name that neither takes is a
``TypeError`` when the trial is built.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch

from study.cohort import Cohort
from study.config import StudyConfig
from study.metrics import Reference, Scoring
from study.model import cpu_state, model_from
from study.run.checkpoint import TrialCheckpoint
from study.run.results import NOT_SEARCHED
from trainables.loop import Report, run_epochs
from trainables.settings import Compute, LoopSettings
from trainables.strategy import Strategy

#: Fresh seeds are trial numbers from here on, which no search reaches.
FRESH_SEEDS = 1_000_000


@dataclass(frozen=True)
class TrialSpec:
    """A trial of ``study``: ``strategy`` with the hyperparameters of its ``config``, seeded by
    its trial number, for ``epochs`` epochs, computing as ``compute`` says."""

    study: StudyConfig
    strategy: type[Strategy]
    config: dict[str, Any]
    epochs: int
    compute: Compute

    @classmethod
    def of(
        cls,
        study: StudyConfig,
        strategy: type[Strategy],
        config: dict[str, Any],
        epochs: int | None = None,
        **changes: Any,
    ) -> TrialSpec:
        """The trial with ``config`` (and ``changes`` to it: a fresh ``trial_number``, another
        ``bn_mode``), run for ``epochs`` (default: the study's) on a trial's resources."""
        return cls(study, strategy, {**config, **changes}, epochs or study.max_epochs, Compute.of(study))

    @property
    def trial_number(self) -> int:
        return int(self.config.get("trial_number", 0))

    def loop_settings(self) -> LoopSettings:
        return LoopSettings.for_trial(self.config, self.study, self.trial_number, self.epochs)

    def build_strategy(self, n_classes: int, original_model: torch.nn.Module) -> Strategy:
        """The strategy with the trial's own hyperparameters, comparing against ``original_model``."""
        own = {
            k: v for k, v in self.config.items() if k not in (*LoopSettings.HYPERPARAMETERS, *NOT_SEARCHED)
        }
        return self.strategy(
            n_classes=n_classes, original_model=original_model, seed=self.trial_number, **own
        )


@dataclass(frozen=True)
class TrialRun:
    """What a trial left: every report in order (its figures, ``epoch``, ``diverged``, timings)
    and the unlearned model's weights on the CPU."""

    reports: list[dict[str, float]]
    state: dict[str, torch.Tensor]

    @property
    def last(self) -> dict[str, float]:
        return self.reports[-1]


def run_trial(
    spec: TrialSpec,
    cohort: Cohort,
    original: dict[str, torch.Tensor],
    reference: Reference,
    report: Report | None = None,
    resume: TrialCheckpoint | None = None,
) -> TrialRun:
    """Runs the trial ``spec`` from the ``original`` model's state, scored against ``reference``
    (``report``: told each report as it comes; ``resume``: a checkpoint to continue from).

    Everything comes in as objects, so a Ray task on any node can run it.
    """
    spec.compute.use_threads()
    model = model_from(spec.study, cohort.n_classes, original)
    strategy = spec.build_strategy(cohort.n_classes, copy.deepcopy(model).eval().requires_grad_(False))
    reports: list[dict[str, float]] = []

    def on_report(metrics: dict[str, float], checkpoint: TrialCheckpoint | None) -> None:
        reports.append(metrics)
        if report is not None:
            report(metrics, checkpoint)

    scoring = Scoring(reference, spec.study.score_weight)
    settings = spec.loop_settings()
    run_epochs(
        model, strategy, cohort, settings, on_report, scoring=scoring, compute=spec.compute, resume=resume
    )
    return TrialRun(reports, cpu_state(model))
