"""The report's sections on the two views, on membership inference and on fresh seeds.

Each builder takes the study (its rows per horizon and its knees, computed once) and returns
one ``Section``.
"""

from __future__ import annotations

import math

import pandas as pd

from analysis.document import Code, Figure, Paragraph, Section, Table
from analysis.pareto import knee_rule
from analysis.study_state import Recommendation, Study
from analysis.summary import at_horizons, best_trials
from analysis.views import (
    KNEE_FIGURES,
    OVERFORGET_RULE,
    OVERFORGET_TOLERANCE,
    knees_by_view,
    measured_rule,
    overforget_below,
    overforgetting_counts,
)
from study.config import OBJECTIVES
from study.metrics import PRIVACY_METRICS
from study.metrics.evidence import ForgetReference

#: The figures whose spread over fresh seeds the report shows.
SEED_FIGURES = (*KNEE_FIGURES, "mia_forget")
PRIVACY_RULE = (
    "mia_auc: the attack's power on that model (cross-validated AUC, retain vs holdout slabs; "
    "0.5: none). mia_forget: the fraction of forget slabs the attack judges members; compare "
    "with the retrain reference's. mia_forget_auc: AUC of the forget slabs' loss against the "
    "holdout slabs' (lower loss: member). forget_loss_gap_to_retrain: mean |slab loss - the "
    "retrain reference's| on the forget slabs (0: exact), which needs no holdout. A strategy's "
    "best row is its trial with the highest score over all its trials and configured horizons: "
    "a maximum, an optimistic pick."
)


def views_section(study: Study, other: str) -> Section:
    """The front under the view the search did not use, the knee under each view beside the
    retrain reference, and the trials that forget past it."""
    config, baselines = study.config, study.baselines
    horizons = sorted(config.horizons)
    intro = Paragraph(
        f"The search maximised ({', '.join(OBJECTIVES[config.objective])}) (view ",
        Code(config.objective),
        "); its knee is the recommendation. The same trials under the view ",
        Code(other),
        f" ({', '.join(OBJECTIVES[other])}):",
    )
    rule = Paragraph(
        f"Under {other}, {knee_rule(OBJECTIVES[other])}. Red plus: the retrain reference; star: "
        "this view's knee; red ring: a trial that forgets past retraining.",
        rule=True,
    )
    counts = overforgetting_counts(study.rows, baselines, horizons)
    flagged, total = counts.iloc[-1]["forgets_past_retraining"], counts.iloc[-1]["trials"]
    reference = study.forget_reference
    if reference is not None:
        past = Paragraph(
            f"{flagged} of {total} trials forget past retraining at a configured horizon (a forget "
            "subject's Dice below the retrain seeds' by the Dice test)."
        )
    elif "retrain" in baselines:
        below = f"forget Dice below {overforget_below(baselines):.2f}: the retrain reference's "
        below += f"{baselines['retrain']['forget_dice']:.2f} less {OVERFORGET_TOLERANCE}"
        past = Paragraph(
            f"{flagged} of {total} trials forget past retraining at a configured horizon ({below})."
        )
    else:
        past = Paragraph(
            "The retrain reference has no metrics yet: no trial can be flagged for over-forgetting."
        )
    return Section(
        "The front under both views",
        [
            intro,
            Figure(f"pareto-{other}"),
            rule,
            Table(knees_by_view(study.knees, baselines, config.objective)),
            past,
            Table(counts),
            Paragraph(OVERFORGET_RULE if reference is None else measured_rule(reference), rule=True),
        ],
    )


def attack_power(original: dict[str, float]) -> str | None:
    """The sentence on the attack's power, from the original model's ``mia_auc``; ``None``
    without one (no holdout, or the original model not measured yet)."""
    auc = original.get("mia_auc", math.nan)
    if not math.isfinite(auc):
        return None
    if auc >= 0.7:
        verdict = "it has power"
    elif auc >= 0.6:
        verdict = "it has little power; read the figures below with care"
    else:
        verdict = "no power; the figures below say little"
    return (
        f"The attack separates retain from holdout slabs with AUC {auc:.2f} on the original model: {verdict}."
    )


def privacy_table(study: Study) -> pd.DataFrame:
    """The membership-inference figures of the original model, the retrain reference, the
    recommended trial at its horizon and each strategy's best (``PRIVACY_RULE``)."""
    names = {"original": "original model", "retrain": "retrain reference (target)"}
    lines = [
        {"row": label} | {m: study.baselines[b].get(m, math.nan) for m in PRIVACY_METRICS}
        for b, label in names.items()
        if b in study.baselines
    ]
    if (recommended := study.recommendation) is not None:
        line = {
            "row": f"recommended: {recommended.strategy} {recommended.trial_id} @ {recommended.epoch} epochs"
        }
        lines.append(line | {m: recommended.figures[m] for m in PRIVACY_METRICS})
    shown = at_horizons(study.rows, sorted(study.config.horizons))
    for _, r in best_trials(shown, per_horizon=False).sort_values("strategy").iterrows():
        line = {"row": f"{r['strategy']} best {r['trial_id']} @ {int(r['epoch'])} epochs"}
        lines.append(line | {m: r[m] for m in PRIVACY_METRICS})
    return pd.DataFrame(lines, columns=["row", *PRIVACY_METRICS])


def privacy_section(study: Study) -> Section:
    """Membership inference: the attack's power first, then the figures, then how to read them."""
    table = privacy_table(study)
    power = attack_power(study.baselines.get("original", {}))
    attack = ["mia_auc", "mia_forget", "mia_forget_auc"]
    if power is None and table[attack].isna().all().all():
        lead = Paragraph(
            "No membership-inference attack could be trained: there is no holdout subject (or the "
            "original model is not measured yet), so only forget_loss_gap_to_retrain is shown."
        )
        table = table.drop(columns=attack)
    else:
        lead = Paragraph(
            power or "The original model's mia_auc is not recorded: the attack's power is unknown."
        )
    blocks = [lead]
    target = study.baselines.get("retrain", {}).get("mia_forget_auc", math.nan)
    if "mia_forget_auc" in table and math.isfinite(target):
        blocks.append(
            Paragraph(
                f"The retrain reference's mia_forget_auc, {target:.2f}, is the target: above it the "
                "forget subjects still look like members; far below it they stand out as forgotten."
            )
        )
    return Section(
        "Privacy: the population attack on slabs", [*blocks, Table(table), Paragraph(PRIVACY_RULE, rule=True)]
    )


def seed_spread(seeds: pd.DataFrame, epoch: int, recommendation: Recommendation | None) -> pd.DataFrame:
    """Per figure of ``SEED_FIGURES``: mean, std (sample, n - 1), min and max over the seeds'
    rows at ``epoch``, beside the recommended trial's own figure (when ``recommendation``)."""
    at = seeds[seeds["epoch"] == epoch].drop_duplicates("seed", keep="last")
    figures = [f for f in SEED_FIGURES if f in at]
    stats = ["mean", "std", "min", "max"]
    # Rounded: equal values give a std of ~1e-17 in floating point, which would read as a spread.
    table = at[figures].agg(stats).T.round(6) if figures else pd.DataFrame(columns=stats, dtype=float)
    if recommendation is not None:
        table["in the search"] = [recommendation.figures.get(f, math.nan) for f in figures]
    return table.reset_index(names="figure")


def seeds_section(study: Study) -> Section:
    """The recommended configuration rerun with fresh seeds (``seeds.parquet``), on the study's
    forget set and on another one, or why not."""
    title, recommendation = "Recommended configuration over fresh seeds", study.recommendation
    seeds = study.run.read_seed_runs()
    if recommendation is None:
        return Section(title, [Paragraph("No recommendation yet, so no seed reruns.")])
    if seeds is None:
        return Section(title, [Paragraph(f"Not run: the run directory has no {study.run.seeds_file.name}.")])
    epoch, own = recommendation.epoch, ",".join(study.config.forget)
    seeds = seeds[(seeds["epoch"] == epoch) & (seeds["trial_id"] == recommendation.trial_id)]
    if "forget" not in seeds:
        seeds = seeds.assign(forget=own)
    if seeds.empty:
        return Section(title, [Paragraph(f"{study.run.seeds_file.name} has no row at epoch {epoch}.")])
    blocks = [
        Paragraph(
            f"The recommended configuration ({recommendation.strategy}, its hyperparameters, {epoch} "
            "epochs) rerun with fresh seeds; at that epoch, over the seeds: mean, standard deviation "
            "(n - 1), min, max."
        )
    ]
    for forget, rows in sorted(seeds.groupby("forget"), key=lambda item: item[0] != own):
        blocks += _forget_set_blocks(rows, forget == own, recommendation, study.forget_reference)
    return Section(title, blocks)


def _forget_set_blocks(
    rows: pd.DataFrame, own: bool, recommendation: Recommendation, measured: ForgetReference | None = None
) -> list:
    """The spread over seeds on one forget set, and what it is measured against."""
    count, forget = rows["seed"].nunique(), rows["forget"].iloc[0]
    table = seed_spread(rows, recommendation.epoch, recommendation if own else None)
    if own:
        lead = (
            f"On the study's forget set ({forget}), {count} seeds. 'in the search': the recommended "
            "trial itself, one draw."
        )
    else:
        lead = (
            f"On another forget set ({forget}; the study's forget subjects join the retain set, the "
            f"original model is the same), {count} seeds, each figure against this set's own retrain "
            "reference: does the configuration carry over to other subjects?"
        )
    references = [
        f"{name} {rows[column].iloc[0]:.3f}" for name, column in _REFERENCE_COLUMNS if column in rows
    ]
    if references:
        lead += " Forget Dice of the " + ", of the ".join(references) + "."
    blocks = [Paragraph(lead), Table(table)]
    spread = table.set_index("figure")["std"].get("forget_dice", math.nan)
    if own and math.isfinite(spread):
        against = (
            f"the retrain seeds' Dice varies by {measured.dice_spread[0]:.3f} on subjects they never saw"
            if measured is not None
            else f"the over-forgetting tolerance is {OVERFORGET_TOLERANCE}"
        )
        blocks.append(
            Paragraph(f"Forget Dice varies with the seed by {spread:.3f} (std); {against}.", rule=True)
        )
    return blocks


_REFERENCE_COLUMNS = (
    ("original model", "original_forget_dice"),
    ("retrain reference", "retrain_forget_dice"),
)


#: What the BatchNorm comparison shows: where the model lands and what the attack sees.
BN_FIGURES = (
    "forget_dice",
    "retain_dice",
    "holdout_dice",
    "mia_forget",
    "mia_forget_auc",
    "forget_loss_gap_to_retrain",
)


def bn_modes_table(study: Study, recommendation: Recommendation, reruns: pd.DataFrame) -> pd.DataFrame:
    """``BN_FIGURES`` of the recommended trial, of its reruns (``bn_modes.parquet``) at its
    epoch under every other ``bn_mode``, and of the retrain reference."""
    own = {"bn_mode": f"{recommendation.params.get('bn_mode', '')} (the trial itself)".lstrip()}
    own |= {f: recommendation.figures[f] for f in BN_FIGURES}
    at = reruns[reruns["epoch"] == recommendation.epoch].drop_duplicates("bn_mode", keep="last")
    lines = [own, *({"bn_mode": r["bn_mode"]} | {f: r[f] for f in BN_FIGURES} for _, r in at.iterrows())]
    if "retrain" in study.baselines:
        lines.append(
            {"bn_mode": "retrain reference (target)"} | {f: study.baselines["retrain"][f] for f in BN_FIGURES}
        )
    return pd.DataFrame(lines, columns=["bn_mode", *BN_FIGURES])


def bn_modes_section(study: Study) -> Section:
    """The recommended configuration at its own seed under each ``bn_mode`` (``bn_modes.parquet``)."""
    title, recommendation = "BatchNorm statistics as a channel", study.recommendation
    reruns = study.run.read_bn_mode_runs()
    if recommendation is None or reruns is None:
        return Section(
            title, [Paragraph(f"Not run: the run directory has no {study.run.bn_modes_file.name}.")]
        )
    lead = Paragraph(
        f"The recommended trial rerun at its own seed for {recommendation.epoch} epochs with every other "
        "bn_mode, all else equal. frozen keeps the original model's running statistics (computed with "
        "the forget subjects), train updates them from every batch (forget batches included), "
        "recalibrate re-estimates them on retain subjects only before every evaluation."
    )
    return Section(title, [lead, Table(bn_modes_table(study, recommendation, reruns))])
