"""The report's figures, each returned as PNG bytes (matplotlib, no display needed)."""

from __future__ import annotations

import io

import matplotlib
import matplotlib.patches

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from analysis.pareto import pareto_front
from analysis.summary import diverged_label
from study.results import candidates


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


def _panel(axis: plt.Axes, at: pd.DataFrame, colours: dict[str, tuple], knee: pd.Series | None) -> None:
    """One horizon's points (``at``): candidates as dots, rows of trials that diverged later as
    labelled crosses, the candidates' front circled, the knee starred."""
    diverged = at["status"] == "diverged"
    for strategy, group in at[~diverged].groupby("strategy"):
        axis.scatter(
            group["forget_drop"], group["retain_kept"], s=30, color=colours[strategy], label=strategy
        )
    for _, row in at[diverged].iterrows():
        point = (row["forget_drop"], row["retain_kept"])
        axis.scatter(*point, marker="x", s=40, color=colours[row["strategy"]], label=DIVERGED_MARK)
        label = diverged_label(row["diverged_at"])
        axis.annotate(label, point, fontsize=7, ha="center", xytext=(0, 6), textcoords="offset points")
    if diverged.any():
        axis.margins(0.15)  # room for the labels at the panel's edges
    front = pareto_front(candidates(at))
    if len(front):
        axis.step(front["forget_drop"], front["retain_kept"], where="post", color="black", lw=1, alpha=0.6)
        axis.scatter(front["forget_drop"], front["retain_kept"], s=110, facecolors="none", edgecolors="black")
    if knee is not None and (at["horizon"] == knee["horizon"]).any():
        axis.scatter([knee["forget_drop"]], [knee["retain_kept"]], marker="*", s=320, color="gold",
                     edgecolors="black", zorder=5, label="recommended")  # fmt: skip


def pareto_plot(rows: pd.DataFrame, horizons: list[str], knee: pd.Series | None) -> bytes:
    """One panel per horizon: every trial that ran to it, its strategy's colour, the overall front
    of the candidates highlighted; a trial that diverged later is a cross labelled by its epoch."""
    colours = strategy_colours(list(rows["strategy"].unique()))
    figure, axes = plt.subplots(1, len(horizons), figsize=(5.2 * len(horizons), 4.4), squeeze=False)
    for axis, horizon in zip(axes[0], horizons, strict=True):
        _panel(axis, rows[rows["horizon"] == horizon], colours, knee)
        axis.set_title(f"horizon: {horizon}" + (" epochs" if horizon.isdigit() else " epoch of each trial"))
        axis.set_xlabel("forget_drop (higher: more forgotten)")
        axis.set_ylabel("retain_kept (higher: retain Dice kept)")
        axis.grid(alpha=0.3)
    labelled = {}
    for axis in axes[0]:
        labelled |= dict(zip(*reversed(axis.get_legend_handles_labels()), strict=True))
    if labelled:
        axes[0][-1].legend(
            labelled.values(), labelled.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1)
        )
    return _png(figure)


def curves_plot(trials: pd.DataFrame, best: dict[str, str]) -> bytes:
    """Forget and retain Dice per epoch of each strategy's best trial (``best``: strategy -> trial_id)."""
    colours = strategy_colours(list(best))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for strategy, trial_id in sorted(best.items()):
        rows = trials[trials["trial_id"] == trial_id].sort_values("epoch")
        axes[0].plot(rows["epoch"], rows["forget_dice"], color=colours[strategy], label=strategy)
        axes[1].plot(rows["epoch"], rows["retain_dice"], color=colours[strategy], label=strategy)
    for axis, title in zip(axes, ("forget Dice", "retain Dice"), strict=True):
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("Dice")
    if best:  # none while every trial diverged
        axes[1].legend(fontsize=8)
    return _png(figure)


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
            overlay = np.ma.masked_where(classes == 0, classes)
            axes[row][column].imshow(overlay, cmap=cmap, vmin=0, vmax=max(n_classes - 1, 1), alpha=0.55)
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
