"""The figures a report is made of: rows per horizon, fronts, hypervolumes, tables, the knee.

Everything here is computed from ``trials.parquet`` (one row per trial per epoch) and
``baseline/metrics.json``; nothing trains or loads a model.
"""

from __future__ import annotations

import pandas as pd

from analysis.pareto import OBJECTIVES, hypervolume, knee_index, pareto_front

FINAL = "final"

#: The reference study's Noisy Label row at 50 epochs (arXiv 2606.16180), as published.
PUBLISHED_NOISY_LABEL = {
    "row": "published: reference paper, Noisy Label, 50 epochs",
    "retain_dice": 0.7576,
    "forget_dice": 0.0613,
    "dice_gap": 0.6963,
    "mae_gap": 0.091,
}

BEST_RULE = "each strategy's trial with the highest score at that horizon"


def horizon_rows(trials: pd.DataFrame, horizons: list[int]) -> pd.DataFrame:
    """Each trial's row at every horizon, and at its final epoch, with a ``horizon`` column.

    A trial that diverged before a horizon stands there with its last (finite) row; a trial
    that has not reached a horizon yet (running, interrupted, failed) is absent from it.
    """
    if trials.empty:
        return trials.assign(horizon=pd.Series(dtype=str))
    last = trials.groupby(["strategy", "trial_id"])["epoch"].transform("max")
    tables = [trials[trials["epoch"] == last].assign(horizon=FINAL)]
    for horizon in horizons:
        at = trials["epoch"] == horizon
        stopped_early = (trials["status"] == "diverged") & (last < horizon) & (trials["epoch"] == last)
        tables.append(trials[at | stopped_early].assign(horizon=str(horizon)))
    return pd.concat(tables, ignore_index=True)


def fronts(rows: pd.DataFrame) -> pd.DataFrame:
    """The non-dominated rows over all strategies, per horizon (the ``pareto.parquet`` table)."""
    tables = [pareto_front(group) for _, group in rows.groupby("horizon", sort=False)]
    tables = [t for t in tables if len(t)]
    return pd.concat(tables, ignore_index=True) if tables else rows.iloc[:0]


def hypervolumes(rows: pd.DataFrame) -> pd.DataFrame:
    """Hypervolume (reference point (0, 0)) per strategy and overall, one column per horizon."""
    table = {}
    for horizon, group in rows.groupby("horizon", sort=False):
        column = {s: hypervolume(g[list(OBJECTIVES)].to_numpy()) for s, g in group.groupby("strategy")}
        column["all strategies"] = hypervolume(group[list(OBJECTIVES)].to_numpy())
        table[f"horizon {horizon}"] = column
    return pd.DataFrame(table)


def best_trials(rows: pd.DataFrame) -> pd.DataFrame:
    """Per strategy and horizon, the row of its best trial (``BEST_RULE``)."""
    ranked = rows.sort_values("score", ascending=False, na_position="last")
    return ranked.groupby(["strategy", "horizon"], sort=False).head(1)


def paper_table(
    rows: pd.DataFrame, baselines: dict[str, dict[str, float]], horizons: list[int]
) -> pd.DataFrame:
    """The reference paper's table: strategy x horizon with retain/forget Dice, Dice and MAE gaps.

    First the original model and the retrain reference, then each strategy's best trial at
    each configured horizon, then the paper's published Noisy Label figures (not ours).
    """
    lines = []
    names = {"original": "original model (before unlearning)", "retrain": "retrain reference (exact)"}
    for name, label in names.items():
        if name in baselines:
            m = baselines[name]
            lines.append(
                {
                    "row": label,
                    "retain_dice": m["retain_dice"],
                    "forget_dice": m["forget_dice"],
                    "dice_gap": m["retain_dice"] - m["forget_dice"],
                    "mae_gap": m["forget_mae"] - m["retain_mae"],
                }
            )
    best = best_trials(rows[rows["horizon"].isin([str(h) for h in horizons])])
    order = {str(h): i for i, h in enumerate(horizons)}
    best = best.sort_values(["strategy", "horizon"], key=lambda c: c.map(order) if c.name == "horizon" else c)
    for row in best.itertuples():
        lines.append(
            {
                "row": f"{row.strategy} @ {row.horizon} epochs",
                "retain_dice": row.retain_dice,
                "forget_dice": row.forget_dice,
                "dice_gap": row.dice_gap,
                "mae_gap": row.mae_gap,
                "forget_drop": row.forget_drop,
                "retain_kept": row.retain_kept,
                "trial_id": row.trial_id,
            }
        )
    lines.append(dict(PUBLISHED_NOISY_LABEL))
    return pd.DataFrame(lines)


def recommend(rows: pd.DataFrame, horizons: list[int]) -> pd.Series | None:
    """The knee of the front pooled over every configured horizon, or ``None`` without points.

    Each point is one trial read at one horizon, so the recommendation names a strategy,
    its hyperparameters and how many epochs to run it.
    """
    pooled = rows[rows["horizon"].isin([str(h) for h in horizons])]
    front = pareto_front(pooled)
    if front.empty:
        return None
    return front.iloc[knee_index(front)]
