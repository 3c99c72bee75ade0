"""The results table: one row per trial per epoch (DESIGN 10), written atomically as Parquet."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from study.metrics import METRICS

TRIALS_FILE = "trials.parquet"
STATUSES = ("running", "terminated", "diverged", "error")
KEY_COLUMNS = ("strategy", "trial_id", "trial_number", "epoch", "status")


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
    ``history`` holds the trial's reports in order (each with ``epoch`` and the metrics);
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
        row |= {f"param_{k}": v for k, v in params.items() if k != "trial_number"}
        row |= {m: float(by_epoch[epoch].get(m, math.nan)) for m in METRICS}
        rows.append(row)
    return pd.DataFrame(rows)


def trial_status(last_report: Mapping[str, Any], max_epochs: int, failed: bool) -> str:
    """``error``, ``diverged``, ``terminated`` (all epochs run) or ``running`` (not finished yet)."""
    if failed:
        return "error"
    if last_report.get("diverged"):
        return "diverged"
    return "terminated" if int(last_report.get("epoch", 0)) >= max_epochs else "running"


def rows_from_results(strategy: str, results: Iterable[Any], max_epochs: int) -> pd.DataFrame:
    """The rows of every trial in a Tune ``ResultGrid`` (or any iterable of its ``Result``)."""
    tables = []
    for result in results:
        history = [] if result.metrics_dataframe is None else result.metrics_dataframe.to_dict("records")
        last = result.metrics or {}
        status = trial_status(last, max_epochs, failed=result.error is not None)
        trial_id = last.get("trial_id") or Path(result.path).name
        tables.append(trial_rows(strategy, trial_id, result.config, history, status))
    return combine(tables)


def rows_from_experiment_dirs(results_dir: Path, max_epochs: int) -> pd.DataFrame:
    """The rows of every trial found in Tune's experiment folders, finished or not.

    For a study still running or interrupted, where ``trials.parquet`` is not written yet:
    reads ``<results_dir>/<strategy>/trial_*/result.json`` (one JSON report per line) and
    ``params.json``. A trial with an ``error.txt`` is ``error``; one that reported a
    divergence is ``diverged``; one that reached ``max_epochs`` is ``terminated``; any
    other is ``running`` (it may also have been interrupted).
    """
    tables = []
    for trial_dir in sorted(Path(results_dir).glob("*/trial_*")):
        history = []
        if (trial_dir / "result.json").is_file():
            lines = (trial_dir / "result.json").read_text().splitlines()
            history = [json.loads(line) for line in lines if line.strip()]
        if not history:
            continue
        params = (
            json.loads((trial_dir / "params.json").read_text())
            if (trial_dir / "params.json").is_file()
            else {}
        )
        last = history[-1]
        status = trial_status(last, max_epochs, failed=(trial_dir / "error.txt").is_file())
        trial_id = last.get("trial_id") or trial_dir.name.removeprefix("trial_")
        tables.append(trial_rows(trial_dir.parent.name, trial_id, params, history, status))
    return combine(tables)


def combine(tables: Iterable[pd.DataFrame]) -> pd.DataFrame:
    """All trials' rows in one table, key columns first, ordered by strategy, trial, epoch."""
    tables = [t for t in tables if len(t)]
    if not tables:
        return pd.DataFrame(columns=[*KEY_COLUMNS, *METRICS])
    table = pd.concat(tables, ignore_index=True)
    params = sorted(c for c in table.columns if c.startswith("param_"))
    table = table[[*KEY_COLUMNS, *params, *METRICS]]
    return table.sort_values(["strategy", "trial_id", "epoch"], ignore_index=True)


def atomic_write(path: Path, write: Callable[[Path], Any]) -> Path:
    """Calls ``write(temporary_path)``, then renames it to ``path``: a crash never leaves a
    truncated ``path``, and a failed write leaves the previous file as it was."""
    path = Path(path)
    partial = path.with_name(f".{path.name}.partial")
    try:
        write(partial)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def write_table(table: pd.DataFrame, path: Path) -> Path:
    """Writes ``table`` to ``path`` as Parquet, atomically."""
    return atomic_write(path, lambda partial: table.to_parquet(partial, index=False))


def final_rows(trials: pd.DataFrame) -> pd.DataFrame:
    """Each trial's last reported epoch."""
    last = trials.groupby(["strategy", "trial_id"])["epoch"].transform("max")
    return trials[trials["epoch"] == last].reset_index(drop=True)
