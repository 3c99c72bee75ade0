"""What a run directory holds, complete or not, and the configuration it recommends.

The launcher and the report read a study through here: ``load_study`` once, then
``recommendation_of`` once, both passed on to whatever needs them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeAlias

import pandas as pd

from analysis.summary import horizon_rows, recommend
from study.config import StudyConfig
from study.metrics import METRICS
from study.objectives import OBJECTIVES
from study.results import combine, incomplete_trials, rows_from_experiment
from study.run import RunDir

#: The recommended trial read at its horizon: one row of ``horizon_rows`` (strategy,
#: trial_id, epoch, its figures and ``param_`` columns).
Recommendation: TypeAlias = pd.Series


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
    problems = incomplete_trials(trials, config.reported_epochs())
    return missing + [f"trial {t}: {what}" for t, what in problems.items() if t not in running.index]


def recommendation_of(study: Study, view: str | None = None) -> Recommendation | None:
    """The knee of the front pooled over the configured horizons under ``view`` (one of
    ``study/objectives.py``'s; default: the study's ``objective``, the one its search used),
    or ``None`` before any trial reached one."""
    horizons = sorted(study.config.horizons)
    objectives = OBJECTIVES[view or study.config.objective]
    return recommend(horizon_rows(study.trials, horizons), horizons, objectives)


def missing_recommended_model(study: Study, recommendation: Recommendation | None) -> tuple[str, int] | None:
    """``(trial_id, epoch)`` of the recommendation when its weights are not saved, else ``None``."""
    if recommendation is None:
        return None
    trial_id, epoch = recommendation["trial_id"], int(recommendation["epoch"])
    return None if study.run.load_model_of(trial_id, epoch) is not None else (trial_id, epoch)


def reproduce_command(study: Study, recommendation: Recommendation, out: bool = False) -> str:
    """The command line that reruns the recommended trial (without Ray) to its horizon."""
    trial_id, epoch = recommendation["trial_id"], int(recommendation["epoch"])
    command = f"python -m trainables.replay {study.run_dir} {trial_id} --epochs {epoch}"
    return command + (f" --out {study.run.recommended_model}" if out else "")
