"""The results table: one row per trial per epoch (DESIGN 10), from Tune's results or read back."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from typing import Any

import pandas as pd

from study.config import OBJECTIVES, StudyError
from study.metrics import METRICS
from study.metrics.evidence import is_subject_column
from study.run.storage import trial_id_of

STATUSES = ("running", "terminated", "diverged", "error")
KEY_COLUMNS = ("strategy", "trial_id", "trial_number", "epoch", "status")
#: Entries of a trial's config that are not searched hyperparameters.
NOT_SEARCHED = ("strategy", "trial_number")


#: What Tune reads of a report as numbers: its epoch, whether it diverged, the objectives
#: (the searcher, the trial lines and the state's repair read these). Every other figure of
#: a report travels packed in one JSON string, ``FIGURES``: Tune keeps running statistics
#: of each numeric entry of each trial's results in its experiment state, which were most
#: of that state (38 KB a trial at 44 numbers, against 9.5 KB for a trial reporting one).
TUNE_NUMBERS = frozenset({"epoch", "diverged", *(name for pair in OBJECTIVES.values() for name in pair)})
FIGURES = "figures"


def packed(report: Mapping[str, Any]) -> dict[str, Any]:
    """``report`` as it goes to Tune: ``TUNE_NUMBERS`` and non-numbers as they are, every
    other number in the JSON string ``report[FIGURES]``."""
    numbers = {k: v for k, v in report.items() if _is_number(v) and k not in TUNE_NUMBERS}
    kept = {k: v for k, v in report.items() if k not in numbers}
    return kept | {FIGURES: json.dumps(numbers)}


def unpacked(report: Mapping[str, Any]) -> dict[str, Any]:
    """A report as Tune keeps it (``packed``, or a result of an older run) with its figures
    as entries of their own again."""
    figures = report.get(FIGURES)
    if not isinstance(figures, str):
        return dict(report)
    return {k: v for k, v in report.items() if k != FIGURES} | json.loads(figures)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def trial_rows(
    strategy: str,
    trial_id: str,
    params: Mapping[str, Any],
    history: Iterable[Mapping[str, Any]],
    status: str,
) -> pd.DataFrame:
    """The rows of one trial: one per reported epoch, the last report of an epoch winning.

    ``params`` is the trial's config: searched hyperparameters become ``param_<name>``
    columns, and ``trial_number`` (the Optuna trial number, which seeds the trial) its own.
    ``history`` holds the trial's reports in order (each with ``epoch`` and the metrics, and
    with the membership test each forget subject's own figures, ``statistic@<subject>``);
    an epoch reported twice (a trial restarted from an older checkpoint) keeps its last row.
    """
    if status not in STATUSES:
        raise ValueError(f"unknown trial status {status!r}")
    by_epoch: dict[int, Mapping[str, Any]] = {}
    for report in history:
        by_epoch[int(report["epoch"])] = report
    rows = []
    for epoch in sorted(by_epoch):
        row: dict[str, Any] = {
            "strategy": strategy,
            "trial_id": trial_id,
            "trial_number": int(params.get("trial_number", -1)),
            "epoch": epoch,
            "status": status,
        }
        row |= {f"param_{k}": v for k, v in params.items() if k not in NOT_SEARCHED}
        row |= {m: float(by_epoch[epoch].get(m, math.nan)) for m in METRICS}
        row |= {k: float(v) for k, v in by_epoch[epoch].items() if is_subject_column(k)}
        rows.append(row)
    return pd.DataFrame(rows)


def is_diverged(report: Mapping[str, Any]) -> bool:
    """Whether a trial's report says it diverged (``diverged == 1.0``; absent or NaN: no)."""
    return report.get("diverged", 0.0) == 1.0


def trial_status(last_report: Mapping[str, Any], max_epochs: int, failed: bool) -> str:
    """``error``, ``diverged``, ``terminated`` (all epochs run) or ``running`` (not finished yet)."""
    if failed:
        return "error"
    if is_diverged(last_report):
        return "diverged"
    return "terminated" if int(last_report.get("epoch", 0)) >= max_epochs else "running"


def _rows_of(
    config: Mapping[str, Any], history: list[dict[str, Any]], trial_id: str, failed: bool, max_epochs: int
):
    if not history:
        return None
    history = [unpacked(report) for report in history]
    status = trial_status(history[-1], max_epochs, failed)
    params = {k: v for k, v in config.items() if k != "strategy"}
    return trial_rows(str(config.get("strategy", "")), trial_id, params, history, status)


def rows_from_results(results: Iterable[Any], max_epochs: int) -> pd.DataFrame:
    """The rows of every trial in a Tune ``ResultGrid`` (or any iterable of its ``Result``)."""
    tables = []
    for result in results:
        history = [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        trial_id = (result.metrics or {}).get("trial_id") or trial_id_of(result.path)
        tables.append(_rows_of(result.config or {}, history, trial_id, result.error is not None, max_epochs))
    return combine(tables)


def never_reported(results: Iterable[Any]) -> dict[str, str]:
    """Trials of a Tune ``ResultGrid`` that errored before their first report (Tune's result
    for such a trial holds its ``trial_id`` alone), so no row of theirs says they failed."""
    return {
        trial_id_of(r.path): "failed before its first epoch"
        for r in results
        if r.error and "epoch" not in (r.metrics or {})
    }


def rows_from_experiment(path: str, filesystem: Any, max_epochs: int) -> pd.DataFrame:
    """The rows of every trial of the Tune experiment at ``path``, finished or not.

    Read through Tune's ``ExperimentAnalysis`` from wherever the experiment is stored (a
    local folder or a bucket), for a study still running or interrupted. A trial Tune
    recorded as errored is ``error``; one that reported a divergence is ``diverged``; one
    that reached ``max_epochs`` is ``terminated``; any other is ``running``.
    """
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(path, storage_filesystem=filesystem)
    frames = analysis.trial_dataframes
    tables = []
    for trial in analysis.trials:
        frame = frames.get(trial.trial_id)
        history = [] if frame is None or frame.empty else frame.to_dict("records")
        tables.append(_rows_of(trial.config, history, trial.trial_id, trial.status == "ERROR", max_epochs))
    return combine(tables)


def combine(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """All trials' rows in one table, key columns first, ordered by strategy, trial, epoch."""
    tables = [t for t in tables if t is not None and len(t)]
    if not tables:
        return pd.DataFrame(columns=[*KEY_COLUMNS, *METRICS])
    table = pd.concat(tables, ignore_index=True)
    params = sorted(c for c in table.columns if c.startswith("param_"))
    subjects = sorted(c for c in table.columns if is_subject_column(c))
    table = table[[*KEY_COLUMNS, *params, *METRICS, *subjects]]
    return table.sort_values(["strategy", "trial_id", "epoch"], ignore_index=True)


def params_of(row: pd.Series) -> dict[str, Any]:
    """The ``param_`` columns of a trial row as plain Python values, absent ones (NaN, None) dropped."""
    return {
        column.removeprefix("param_"): value.item() if hasattr(value, "item") else value
        for column, value in row.items()
        if column.startswith("param_")
        and value is not None
        and not (isinstance(value, float) and math.isnan(value))
    }


def trial_config(trials: pd.DataFrame, trial_id: str) -> dict[str, Any]:
    """The config Tune gave ``trial_id``, read back from its rows: ``strategy``,
    ``trial_number`` and its hyperparameters."""
    rows = trials[trials["trial_id"] == trial_id]
    if rows.empty:
        raise StudyError(f"trial {trial_id!r} is not in the study's results; see its trial_id column")
    first = rows.iloc[0]
    return {**params_of(first), "strategy": first["strategy"], "trial_number": int(first["trial_number"])}


def candidates(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows a choice (best trial, front, knee) may pick: every trial's but a diverged one's.

    A diverged trial's figures are those of its last finite model, not a result of its
    configuration; and a configuration that diverged within the study's epochs is not
    recommended even at an earlier epoch it reached.
    """
    return rows[rows["status"] != "diverged"]


def final_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Each trial's last reported epoch."""
    last = trials.groupby(["strategy", "trial_id"])["epoch"].transform("max")
    return trials[trials["epoch"] == last].reset_index(drop=True)


def incomplete_trials(trials: pd.DataFrame, reported: list[int]) -> dict[str, str]:
    """``{trial_id: what is wrong}`` for trials that failed, stopped early or miss one of the
    ``reported`` epochs (``EpochSchedule.reported_epochs``; the last is ``max_epochs``).

    A diverged trial is complete: it ended on purpose at its last finite epoch.
    """
    problems, max_epochs = {}, reported[-1]
    for trial_id, rows in trials.groupby("trial_id", sort=True):
        strategy, status, last = rows["strategy"].iloc[0], rows["status"].iloc[0], int(rows["epoch"].max())
        missing = sorted({e for e in reported if e <= last} - set(rows["epoch"].astype(int)))
        if status == "error":
            problems[trial_id] = f"{strategy}, failed after epoch {last} of {max_epochs}"
        elif status == "running":
            problems[trial_id] = f"{strategy}, stopped at epoch {last} of {max_epochs}"
        elif missing:
            problems[trial_id] = f"{strategy}, epochs {', '.join(map(str, missing))} missing"
    return problems
