"""The figures a report is made of: rows per horizon, fronts, hypervolumes, tables, the knee.

Everything here is computed from ``trials.parquet`` (one row per trial per epoch) and
``baseline/metrics.json``; nothing trains or loads a model.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pandas as pd

from analysis.pareto import OBJECTIVES, hypervolume, knee_index, pareto_front
from study.config import OBJECTIVES as VIEWS
from study.metrics import METRICS
from study.run.results import candidates, params_of

#: A horizon: a number of epochs, or ``None``, each trial's final epoch. The ``horizon`` column
#: of the rows below holds them as nullable integers (``<NA>``: final); as text, only written
#: (``horizon_label``).
Horizon = int | None
FINAL: Horizon = None

#: The reference study's Noisy Label row at 50 epochs (arXiv 2606.16180), as published.
PUBLISHED_NOISY_LABEL = {
    "row": "published: reference paper, Noisy Label, 50 epochs",
    "retain_dice": 0.7576,
    "forget_dice": 0.0613,
    "dice_gap": 0.6963,
    "mae_gap": 0.091,
}

BEST_RULE = (
    "each strategy's trial with the highest score at that horizon, diverged trials left out: "
    "a maximum over the strategy's trials, an optimistic pick rather than a typical trial"
)


def diverged_label(epoch: float) -> str:
    """How a diverged trial is named in the report and its plots: by the epoch it diverged at."""
    return f"diverged at epoch {int(epoch)}"


def horizon_label(horizon: Horizon) -> str:
    """A horizon as written in tables and files: its epochs, or ``final``."""
    return "final" if horizon is None or pd.isna(horizon) else str(int(horizon))


def at_horizon(rows: pd.DataFrame, horizon: Horizon) -> pd.DataFrame:
    """The rows read at ``horizon``."""
    return rows[rows["horizon"].isna()] if horizon is None else rows[rows["horizon"].isin([horizon])]


def at_horizons(rows: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """The rows read at any of ``horizons`` (numbers of epochs)."""
    return rows[rows["horizon"].isin(horizons)]


def by_horizon(rows: pd.DataFrame) -> Iterator[tuple[Horizon, pd.DataFrame]]:
    """``(horizon, its rows)`` for every horizon of ``rows``, in order of first appearance."""
    for horizon, group in rows.groupby("horizon", sort=False, dropna=False):
        yield (None if pd.isna(horizon) else int(horizon)), group


def _read_at(frame: pd.DataFrame, horizon: Horizon) -> pd.DataFrame:
    return frame.assign(horizon=pd.array([horizon] * len(frame), dtype="Int64"))


def horizon_rows(trials: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Each trial's row at every horizon it ran to, and at its final epoch, with a ``horizon``
    column and ``diverged_at`` (the epoch its trial diverged at; NaN for any other trial).

    A trial is read at a horizon only when it ran to it: one that has not reached it yet
    (running, interrupted, failed) is absent, and so is a diverged one from the epoch it
    diverged at on (that row holds its last finite model's figures, not that epoch's). Its
    rows before that epoch are real and stay, labelled by ``diverged_at``; its last row is
    its ``final`` one, at its real epoch. No diverged row is ever a choice (``candidates``).
    """
    if trials.empty:
        return _read_at(trials.assign(diverged_at=pd.Series(dtype=float)), FINAL)
    last = trials.groupby(["strategy", "trial_id"])["epoch"].transform("max")
    diverged = trials["status"] == "diverged"
    trials = trials.assign(diverged_at=last.where(diverged).astype(float))
    ran_to = ~diverged | (trials["epoch"] < last)
    tables = [_read_at(trials[trials["epoch"] == last], FINAL)]
    tables += [_read_at(trials[(trials["epoch"] == h) & ran_to], h) for h in horizons]
    return pd.concat(tables, ignore_index=True)


def fronts(rows: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> pd.DataFrame:
    """The non-dominated rows on ``objectives`` over all strategies, per horizon; diverged
    trials take no part."""
    tables = [pareto_front(g, objectives) for _, g in by_horizon(candidates(rows))]
    tables = [t for t in tables if len(t)]
    table = pd.concat(tables, ignore_index=True) if tables else rows.iloc[:0]
    return table.drop(columns="diverged_at", errors="ignore")  # NaN on every row of a front


def hypervolumes(rows: pd.DataFrame, objectives: tuple[str, ...] = OBJECTIVES) -> pd.DataFrame:
    """Hypervolume on ``objectives`` (reference point (0, 0)) per strategy and overall, one
    column per horizon; diverged trials add nothing."""
    table = {}
    for horizon, group in by_horizon(candidates(rows)):
        column = {s: hypervolume(g[list(objectives)].to_numpy()) for s, g in group.groupby("strategy")}
        column["all strategies"] = hypervolume(group[list(objectives)].to_numpy())
        table[f"horizon {horizon_label(horizon)}"] = column
    return pd.DataFrame(table)


def best_trials(rows: pd.DataFrame, per_horizon: bool = True) -> pd.DataFrame:
    """Per strategy and horizon (or per strategy over every horizon of ``rows``), the row of
    its best trial (``BEST_RULE``); never a diverged one."""
    ranked = candidates(rows).sort_values("score", ascending=False, na_position="last")
    return ranked.groupby(
        ["strategy", "horizon"] if per_horizon else "strategy", sort=False, dropna=False
    ).head(1)


#: The models scored on the native grid at the end of a study, as the report names them.
SCORED_MODELS = {
    "original": "original model (before unlearning)",
    "retrain": "retrain reference (exact)",
    "recommended": "recommended model",
}


def _set_row(label: str, m: dict[str, float]) -> dict[str, Any]:
    return {
        "row": label,
        "retain_dice": m["retain_dice"],
        "holdout_dice": m.get("holdout_dice", math.nan),
        "forget_dice": m["forget_dice"],
        "dice_gap": m["retain_dice"] - m["forget_dice"],
        "mae_gap": m["forget_mae"] - m["retain_mae"],
    }


def paper_table(
    rows: pd.DataFrame,
    baselines: dict[str, dict[str, float]],
    horizons: list[int],
    recommended: Recommendation | None = None,
    official: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """The reference paper's table: strategy x horizon with retain/forget Dice, Dice and MAE gaps,
    and holdout Dice beside retain Dice (retain subjects were trained on; holdout ones never),
    all on the input grid.

    First the original model, the retrain reference and the ``recommended`` configuration,
    then each strategy's best trial at each configured horizon, then the paper's published
    Noisy Label figures (not ours). With ``official`` (``official_scores.parquet``), the
    three models' rows gain each set's native-grid Dice and HD95, MRBrainS18's per-label
    figures averaged over the labels (``official_means``).
    """
    lines = []
    for name in ("original", "retrain"):
        if name in baselines:
            lines.append(_set_row(SCORED_MODELS[name], baselines[name]) | {"model": name})
    if recommended is not None:
        label = f"{SCORED_MODELS['recommended']}: {recommended.strategy} @ {recommended.epoch} epochs"
        lines.append(_set_row(label, recommended.figures) | {"model": "recommended"})
        lines[-1] |= {k: recommended.figures[k] for k in ("forget_drop", "retain_kept")}
        lines[-1]["trial_id"] = recommended.trial_id
    best = best_trials(at_horizons(rows, horizons))
    order = {h: i for i, h in enumerate(horizons)}
    best = best.sort_values(["strategy", "horizon"], key=lambda c: c.map(order) if c.name == "horizon" else c)
    for row in best.itertuples():
        lines.append(
            {
                "row": f"{row.strategy} @ {int(row.epoch)} epochs",
                "retain_dice": row.retain_dice,
                "holdout_dice": row.holdout_dice,
                "forget_dice": row.forget_dice,
                "dice_gap": row.dice_gap,
                "mae_gap": row.mae_gap,
                "forget_drop": row.forget_drop,
                "retain_kept": row.retain_kept,
                "trial_id": row.trial_id,
            }
        )
    lines.append(dict(PUBLISHED_NOISY_LABEL))
    table = pd.DataFrame(lines)
    if "model" not in table:  # neither baselines nor a recommendation yet
        table["model"] = None
    if official is not None and len(official):
        means = official_means(official).groupby(["model", "role"])[["dice", "hd95_mm"]].mean()
        for role in ("retain", "forget"):
            for metric in ("dice", "hd95_mm"):
                values = {model: means[metric].get((model, role), math.nan) for model in SCORED_MODELS}
                table[f"{role}_{metric}_native"] = table["model"].map(values)
    return table.drop(columns="model")


def official_means(official: pd.DataFrame) -> pd.DataFrame:
    """MRBrainS18's figures (``official_scores.parquet``) per model, subject set (``role``) and
    label: the mean over the set's subjects of ``dice``, ``hd95_mm``, ``vs`` and ``label_mae``,
    each leaving its undefined (NaN) subjects out."""
    figures = ["dice", "hd95_mm", "vs", "label_mae"]
    return official.groupby(["model", "role", "label", "name"], sort=False)[figures].mean().reset_index()


def official_table(official: pd.DataFrame, set_metrics: dict[str, dict[str, float]]) -> pd.DataFrame:
    """Per model and subject set, MRBrainS18's Dice and HD95 (mm) of each label on the native
    grid, the label-map MAE there, and beside them the set's input-grid Dice and MAE from
    ``set_metrics`` (``{model: its metrics}``); column names say which grid."""
    means = official_means(official)
    roles = [r for r in ("forget", "retain", "holdout") if r in set(means["role"])]
    lines = []
    for model in [m for m in SCORED_MODELS if m in set(means["model"])]:
        for role in roles:
            part = means[(means["model"] == model) & (means["role"] == role)]
            line: dict[str, Any] = {"model": SCORED_MODELS[model], "set": role}
            metrics = set_metrics.get(model, {})
            line["Dice, input grid"] = metrics.get(f"{role}_dice", math.nan)
            for label in part.itertuples():
                line[f"Dice {label.name}, native"] = label.dice
                line[f"HD95 {label.name} (mm), native"] = label.hd95_mm
            line["MAE softmax, input grid"] = metrics.get(f"{role}_mae", math.nan)
            line["MAE label map, native"] = part["label_mae"].mean()
            lines.append(line)
    return pd.DataFrame(lines)


@dataclass(frozen=True)
class Recommendation:
    """The knee of one view's front, pooled over the configured horizons: which strategy to
    run with which hyperparameters (``params``) for how many epochs, and the figures
    (``figures``, of ``METRICS``) its trial had there."""

    view: str
    strategy: str
    trial_id: str
    epoch: int
    params: dict[str, Any]
    figures: dict[str, float]

    @classmethod
    def of(cls, row: pd.Series, view: str) -> Recommendation:
        """The recommendation of ``view`` that one trial row (at a horizon) makes."""
        figures = {m: float(row[m]) for m in METRICS if m in row}
        return cls(
            view, str(row["strategy"]), str(row["trial_id"]), int(row["epoch"]), params_of(row), figures
        )


def recommend(rows: pd.DataFrame, horizons: list[int], view: str = "reference") -> Recommendation | None:
    """The knee under ``view`` (``study/config/objectives.py``) of the front pooled over every
    configured horizon, or ``None`` without points.

    Each point is one trial read at one horizon, so the recommendation names a strategy,
    its hyperparameters and how many epochs to run it. A diverged trial is never one.
    """
    objectives = VIEWS[view]
    front = pareto_front(candidates(at_horizons(rows, horizons)), objectives)
    if front.empty:
        return None
    return Recommendation.of(front.iloc[knee_index(front, objectives)], view)
