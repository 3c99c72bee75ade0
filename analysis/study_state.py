"""What a run directory holds, complete or not, and the configuration it recommends.

The launcher, the report and ``study.forget`` read a study through here: ``load_study``
once; its rows per horizon and each view's knee are computed once, when first asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pandas as pd

from analysis.summary import Recommendation, horizon_rows, recommend
from analysis.views import forgets_past_retrain
from study.config import OBJECTIVES, EpochSchedule, StudyConfig
from study.metrics import METRICS
from study.metrics.evidence import Evidence, ForgetReference
from study.run.results import combine, incomplete_trials, rows_from_experiment
from study.run.rundir import RunDir


@dataclass
class Study:
    """What a run directory holds, complete or not."""

    run: RunDir
    config: StudyConfig
    trials: pd.DataFrame
    baselines: dict[str, dict[str, float]]
    missing: list[str] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.run.path

    @cached_property
    def rows(self) -> pd.DataFrame:
        """Each trial's rows at every horizon it ran to (``horizon_rows``), and whether each
        forgets past the retrain reference (``forgets_past_retrain``: by the retrain seeds'
        measured spread where the study ran the membership test)."""
        rows = horizon_rows(self.trials, sorted(self.config.horizons))
        flags = forgets_past_retrain(rows, self.baselines, self.forget_reference)
        return rows.assign(forgets_past_retrain=flags)

    @cached_property
    def forget_reference(self) -> ForgetReference | None:
        """What the forget subjects are tested against, rebuilt from ``privacy.parquet``;
        ``None`` without it (or with too few models for the test)."""
        if self.privacy is None:
            return None
        evidence = Evidence.from_rows(self.privacy.to_dict("records"))
        if not evidence.sufficient()[0]:
            return None
        return evidence.forget_reference(self.config.forget, self.config.privacy_level)

    @cached_property
    def knees(self) -> dict[str, Recommendation | None]:
        """Per view (``study/config/objectives.py``): the knee of its front pooled over the
        configured horizons, or ``None`` before any trial reached one."""
        return {view: recommend(self.rows, sorted(self.config.horizons), view) for view in OBJECTIVES}

    @property
    def recommendation(self) -> Recommendation | None:
        """The knee of the view the search maximised (the study's ``objective``)."""
        return self.knees[self.config.objective]

    @cached_property
    def privacy(self) -> pd.DataFrame | None:
        """``privacy.parquet``: the reference models' membership figures, or ``None``."""
        return self.run.read_privacy()

    @cached_property
    def tested_rows(self) -> pd.DataFrame:
        """Each trial's rows at every epoch it reported (``horizon_rows``): a deletion request
        can run a configuration for any of them, so each was tested."""
        return horizon_rows(self.trials, EpochSchedule.of(self.config).reported_epochs())

    @cached_property
    def safe_recommendation(self) -> Recommendation | None:
        """ "Safe to deploy": the knee of the searched view's front, pooled over every reported
        epoch, among the trial rows whose every forget subject is indistinguishable from
        retraining (``forget_distinguishable`` 0); ``None`` when none is, or the study ran no
        membership test."""
        rows = self.tested_rows
        safe = rows[rows["forget_distinguishable"] == 0]
        epochs = EpochSchedule.of(self.config).reported_epochs()
        return recommend(safe, epochs, self.config.objective) if len(safe) else None


def load_study(run_dir: Path) -> Study:
    """The run directory's configuration, trial rows and baseline metrics, and what is missing.

    Before the results table is written (a study running or interrupted) the rows are read
    from the Tune experiment, wherever it is stored.
    """
    run, config = RunDir.open(Path(run_dir))
    missing = []
    trials = run.read_trials()
    if trials is None:
        fs, _ = run.storage.filesystem()
        try:
            trials = rows_from_experiment(run.storage.experiment_path, fs, config.max_epochs)
        except (ValueError, OSError):  # Tune has saved no experiment state yet
            trials = combine([])
        missing.append(f"{run.trials_file.name} is not written yet: the study is running or was interrupted")
    # A table written before a metric existed lacks its column: NaN, as for an absent set.
    trials = trials.assign(**{m: float("nan") for m in METRICS if m not in trials})
    baselines = run.baseline_metrics()
    missing += [f"baseline '{b}' has no metrics yet" for b in ("original", "retrain") if b not in baselines]
    return Study(run, config, trials, baselines, missing + _missing_trials(config, trials))


def _missing_trials(config: StudyConfig, trials: pd.DataFrame) -> list[str]:
    """The strategies without trials, the trials not run yet, and the unfinished ones."""
    found = set(trials["strategy"])
    missing = [f"strategy {s}: no trial has reported yet" for s in config.strategies if s not in found]
    per_strategy = trials.groupby("strategy")["trial_id"].nunique()
    missing += [
        f"strategy {s}: {n} of {config.num_samples} trials"
        for s, n in per_strategy.items()
        if n < config.num_samples
    ]
    running = trials[trials["status"] == "running"].groupby("trial_id")["epoch"].max()
    missing += [
        f"trial {t}: running or interrupted at epoch {e} of {config.max_epochs}" for t, e in running.items()
    ]
    problems = incomplete_trials(trials, EpochSchedule.of(config).reported_epochs())
    return missing + [f"trial {t}: {what}" for t, what in problems.items() if t not in running.index]


def missing_recommended_model(study: Study) -> Recommendation | None:
    """The study's recommendation when its weights are not saved (neither ``recommended.pt``
    nor a kept checkpoint of its epoch), else ``None``."""
    recommended = study.recommendation
    if recommended is None or study.run.load_model_of(recommended.trial_id, recommended.epoch) is not None:
        return None
    return recommended


def reproduce_command(study: Study, recommendation: Recommendation, out: bool = False) -> str:
    """The command line that reruns the recommended trial (without Ray) to its horizon."""
    command = (
        f"python -m study.replay {study.run_dir} {recommendation.trial_id} --epochs {recommendation.epoch}"
    )
    return command + (f" --out {study.run.recommended_model}" if out else "")
