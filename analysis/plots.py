"""The report's figures, each returned as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.pareto import OBJECTIVES, pareto_front
from analysis.summary import Recommendation, at_horizon, diverged_label
from study.cohort import IGNORE_LABEL
from study.run.results import candidates


def _png(figure: plt.Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


def strategy_colours(strategies: list[str]) -> dict[str, tuple]:
    """One fixed colour per strategy (tab10, in sorted-name order)."""
    palette = plt.get_cmap("tab10").colors
    return {s: palette[i % len(palette)] for i, s in enumerate(sorted(strategies))}


DIVERGED_MARK = "x: trial that diverged later (no choice)"
PAST_RETRAIN_MARK = "red ring: forgets past the retrain reference"
RETRAIN_MARK = "retrain reference (exact unlearning)"
AXIS_LABELS = {
    "forget_drop": "forget_drop (higher: more forgotten)",
    "retrain_match": "retrain_match (1: the retrain reference's forget Dice)",
    "retain_kept": "retain_kept (higher: retain Dice kept)",
}


def _panel(axis: plt.Axes, at: pd.DataFrame, colours: dict[str, tuple], objectives: tuple[str, str]) -> None:
    """One horizon's points (``at``) on ``objectives``: candidates as dots, rows of trials that
    diverged later as labelled crosses, trials forgetting past retraining ringed, the front circled."""
    x, y = objectives
    diverged = at["status"] == "diverged"
    for strategy, group in at[~diverged].groupby("strategy"):
        axis.scatter(group[x], group[y], s=30, color=colours[strategy], label=strategy)
    for _, row in at[diverged].iterrows():
        axis.scatter(row[x], row[y], marker="x", s=40, color=colours[row["strategy"]], label=DIVERGED_MARK)
        label = diverged_label(row["diverged_at"])
        axis.annotate(
            label, (row[x], row[y]), fontsize=7, ha="center", xytext=(0, 6), textcoords="offset points"
        )
    if diverged.any():
        axis.margins(0.15)  # room for the labels at the panel's edges
    chosen = candidates(at)
    past = chosen[chosen["forgets_past_retrain"]] if "forgets_past_retrain" in chosen else chosen.iloc[:0]
    if len(past):
        axis.scatter(past[x], past[y], s=70, facecolors="none", edgecolors="red", label=PAST_RETRAIN_MARK)
    front = pareto_front(chosen, objectives)
    if len(front):
        axis.step(front[x], front[y], where="post", color="black", lw=1, alpha=0.6)
        axis.scatter(front[x], front[y], s=110, facecolors="none", edgecolors="black")


def pareto_plot(
    rows: pd.DataFrame,
    horizons: list[int],
    knee: Recommendation | None,
    objectives: tuple[str, str] = OBJECTIVES,
    retrain: pd.Series | None = None,
    knee_label: str = "recommended",
) -> bytes:
    """One panel per horizon on ``objectives``: every trial that ran to it in its strategy's colour,
    the overall front of the candidates highlighted, ``knee`` starred (``knee_label``), the
    ``retrain`` reference's point (one model: the same in every panel) as a red plus; a trial
    that diverged later is a cross labelled by its epoch."""
    colours = strategy_colours(list(rows["strategy"].unique()))
    figure, axes = plt.subplots(1, len(horizons), figsize=(5.2 * len(horizons), 4.4), squeeze=False)
    x, y = objectives
    for axis, horizon in zip(axes[0], horizons, strict=True):
        _panel(axis, at_horizon(rows, horizon), colours, objectives)
        if knee is not None and knee.epoch == horizon:  # a knee is read at a configured horizon
            axis.scatter([knee.figures[x]], [knee.figures[y]], marker="*", s=320, color="gold",
                         edgecolors="black", zorder=5, label=knee_label)  # fmt: skip
        if retrain is not None:
            axis.scatter([retrain[x]], [retrain[y]], marker="P", s=140, color="red",
                         edgecolors="black", zorder=6, label=RETRAIN_MARK)  # fmt: skip
        axis.set_title(f"horizon: {horizon} epochs")
        axis.set_xlabel(AXIS_LABELS[x])
        axis.set_ylabel(AXIS_LABELS[y])
        axis.grid(alpha=0.3)
    labelled = {}
    for axis in axes[0]:
        labelled |= dict(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    if labelled:
        axes[0][-1].legend(
            labelled.values(), labelled.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1)
        )
    return _png(figure)


def _level(axis: plt.Axes, value: float | None, label: str, style: str) -> None:
    """A labelled horizontal line at ``value`` (none when it is missing or NaN)."""
    if value is not None and np.isfinite(value):
        axis.axhline(value, color="black", ls=style, lw=1, alpha=0.7, label=f"{label}: {value:.2f}")


def curves_plot(trials: pd.DataFrame, best: dict[str, str], baselines: dict[str, dict[str, float]]) -> bytes:
    """Forget, retain and holdout Dice per epoch of each strategy's best trial (``best``:
    strategy -> trial_id; strategies named in the first panel's legend), with the retrain
    reference's Dice on each set dashed and the original model's holdout Dice dotted."""
    colours = strategy_colours(list(best))
    figure, axes = plt.subplots(1, 3, figsize=(15, 4), sharex=True, sharey=True)
    sets = ("forget", "retain", "holdout")
    for strategy, trial_id in sorted(best.items()):
        rows = trials[trials["trial_id"] == trial_id].sort_values("epoch")
        for axis, name in zip(axes, sets, strict=True):
            label = strategy if name == "forget" else None
            axis.plot(rows["epoch"], rows[f"{name}_dice"], color=colours[strategy], label=label)
    original, retrain = baselines.get("original", {}), baselines.get("retrain", {})
    for axis, name in zip(axes, sets, strict=True):
        _level(axis, retrain.get(f"{name}_dice"), f"retrain reference's {name} Dice", "--")
        _level(axis, original.get("holdout_dice"), "original model's holdout Dice", ":")
        axis.set_title(f"{name} Dice")
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
        if axis.get_legend_handles_labels()[1]:
            axis.legend(fontsize=7)
    if trials["holdout_dice"].isna().all():
        axes[2].text(0.5, 0.5, "no holdout Dice reported", ha="center", transform=axes[2].transAxes)
    axes[0].set_ylabel("Dice")
    return _png(figure)


def shown_classes(classes: np.ndarray) -> np.ma.MaskedArray:
    """A class map ``(H, W)`` as overlaid: background and unscored voxels (``IGNORE_LABEL``) clear."""
    return np.ma.masked_where((classes == 0) | (classes == IGNORE_LABEL), classes)


def overlay_plot(
    panels: list[tuple[str, np.ndarray, list[tuple[str, np.ndarray]]]], class_names: tuple[str, ...]
) -> bytes:
    """Rows of (title, image slice ``(H, W)``, [(name, class map ``(H, W)``), ...]) as overlays."""
    n_classes = len(class_names)
    columns = 1 + max(len(maps) for _, _, maps in panels)
    figure, axes = plt.subplots(
        len(panels), columns, figsize=(2.8 * columns, 2.9 * len(panels)), squeeze=False
    )
    cmap = plt.get_cmap("tab10", max(n_classes, 2))
    for row, (title, image, maps) in enumerate(panels):
        axes[row][0].imshow(image, cmap="gray")
        axes[row][0].set_title(f"{title}: T1", fontsize=9)
        for column, (name, classes) in enumerate(maps, start=1):
            axes[row][column].imshow(image, cmap="gray")
            axes[row][column].imshow(
                shown_classes(classes), cmap=cmap, vmin=0, vmax=max(n_classes - 1, 1), alpha=0.55
            )
            axes[row][column].set_title(name, fontsize=9)
    for axis in axes.flat:
        axis.axis("off")
    handles = [
        matplotlib.patches.Patch(color=cmap(i), alpha=0.55, label=name)
        for i, name in enumerate(class_names)
        if i > 0
    ]
    figure.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, frameon=False)
    return _png(figure)


def membership_plot(privacy: pd.DataFrame, subject: str, marked: dict[str, str] | None = None) -> bytes:
    """One forget subject's membership statistic under every reference model (``privacy``:
    the rows of ``privacy.parquet``): the shadow models trained on it (IN) and not (OUT), the
    retrained models, the original model as a line, and the unlearned models ``marked``
    (label: model, e.g. ``{"searched knee": "<trial_id>@<epoch>"}``) as dashed lines."""
    rows = privacy[privacy["subject"] == subject]
    groups = {
        "shadow models trained on it (IN)": rows[
            rows["model"].str.startswith("shadow_") & (rows["trained_on"])
        ],
        "shadow models not trained on it (OUT)": rows[
            rows["model"].str.startswith("shadow_") & ~rows["trained_on"]
        ],
        "retrained without it": rows[rows["model"].str.match(r"^retrain(_seed_\d+)?$")],
    }
    figure, axis = plt.subplots(figsize=(7, 2.6))
    for level, (label, group) in enumerate(groups.items()):
        axis.scatter(
            group["statistic"], np.full(len(group), level), s=40, alpha=0.8, label=f"{label} ({len(group)})"
        )
    original = rows.loc[rows["model"] == "original", "statistic"]
    for value in original:
        axis.axvline(value, color="red", lw=1.5, label="original model")
    for (label, model), colour in zip((marked or {}).items(), ("black", "green"), strict=False):
        for value in rows.loc[rows["model"] == model, "statistic"]:
            axis.axvline(value, color=colour, lw=1.5, ls="--", label=f"{label} ({model})")
    axis.set_yticks(range(len(groups)), [label.split(" (")[0] for label in groups], fontsize=8)
    axis.set_ylim(-0.6, len(groups) - 0.4)
    axis.set_xlabel("membership statistic: mean logit of the true class (higher: looks trained on)")
    axis.set_title(f"forget subject {subject}")
    axis.grid(alpha=0.3, axis="x")
    axis.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))
    return _png(figure)
