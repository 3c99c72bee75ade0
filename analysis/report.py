"""``python -m analysis.report RUN_DIR``: the Pareto-front report a reader decides from.

Writes ``pareto.parquet``, a self-contained ``report.html`` (figures embedded, no network
needed) and ``report.md`` (figures beside it in ``report_files/``), and prints the report's
path and the recommended configuration. Works on a study still running or interrupted:
it then reads Tune's experiment folders and says what is missing.
"""

from __future__ import annotations

import sys

from study.cli import before_loading, read

if __name__ == "__main__":
    before_loading("analysis.report")  # --help and --version answered before pandas and torch load

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from analysis.document import Bullets, Code, Figure, Paragraph, Section, Table, render_html, render_markdown
from analysis.membership_section import knee_verdict, membership_section
from analysis.overlays import overlay_figure
from analysis.pareto import knee_rule
from analysis.plots import curves_plot, membership_plot, pareto_plot
from analysis.sections import bn_modes_section, privacy_section, seeds_section, views_section
from analysis.study_state import Recommendation, Study, load_study, reproduce_command
from analysis.summary import (
    BEST_RULE,
    FINAL,
    at_horizon,
    at_horizons,
    best_trials,
    diverged_label,
    hypervolumes,
    official_table,
    paper_table,
)
from analysis.views import fronts_by_view, past_retrain_text, retrain_point
from study.cohort import Cohort
from study.config import OBJECTIVES, StudyError, run_cli
from study.run.console import number
from study.run.rundir import atomic_write

#: The figures of the recommended trial that its table shows; holdout Dice beside retain Dice
#: (retain_kept is measured on training subjects, holdout ones were never trained on).
SHOWN_FIGURES = (
    "forget_drop",
    "retain_kept",
    "retrain_match",
    "forget_dice",
    "retain_dice",
    "holdout_dice",
    "forget_gap_to_retrain",
    "dice_gap",
    "mae_gap",
    "score",
)

NOT_YET = "no trial has reached a configured horizon yet"
FRONT_RULE = (
    "Circles: the front over all strategies at that horizon; star: the recommendation; red plus: "
    "the retrain reference; red ring: a trial that forgets past it; crosses: trials that diverged "
    "later (left out of fronts and hypervolumes). Hypervolume on the searched objectives "
    "(reference point (0, 0); higher is better):"
)
PAPER_RULE = (
    f"Per strategy and horizon, {BEST_RULE}. Holdout Dice beside retain Dice: retain subjects were "
    "trained on, holdout ones never. The last row is the reference paper's published figure, not ours. "
    "Input grid: the fast figures every trial reports and the search uses (Dice the mean over the "
    "foreground classes on the network's input grid; MAE the mean over scored voxels and every class, "
    "background included, of |softmax - one-hot|; the paper does not define its MAE, so its MAE gap may "
    "not compare). Native grid: MRBrainS18's own scoring, on each subject's segm.nii.gz grid, of the "
    "original, retrain and recommended models only (means over the labels here, per label below)."
)
OFFICIAL_RULE = (
    "MRBrainS18's scoring, as the challenge's evaluation computes it: each model's softmax resized back "
    "to the subject's native grid, argmax, and per label Dice and the 95% Hausdorff distance in mm "
    "(in-plane boundaries, physical spacing), voxels labelled 9 or 10 in the ground truth masked from "
    "both; a label predicted but absent scores Dice 0; each figure is the mean over the set's subjects "
    "where it is defined. Label-map MAE: the MAE of the hard label map (|one-hot of the prediction - "
    "one-hot|, same averaging as the softmax MAE). Per subject, with volume similarity: "
    "official_scores.parquet; the segmentations: predictions/<model>/<subject>/result.nii.gz."
)
NOT_SCORED = {
    True: "Not scored on the native grid yet: the original, retrain and recommended models are scored at "
    "the end of the study.",
    False: "Not scored on the native grid: this study's config sets native_scores = false.",
}
SCORE_ONE = " Score one model of a finished study with: python -m analysis.evaluate RUN_DIR --model MODEL."
#: How the paper table's columns are shown: each says which grid it is on.
PAPER_COLUMNS = {
    "retain_dice": "retain Dice, input grid",
    "holdout_dice": "holdout Dice, input grid",
    "forget_dice": "forget Dice, input grid",
    "dice_gap": "Dice gap, input grid",
    "mae_gap": "MAE gap, input grid",
    "retain_dice_native": "retain Dice, native",
    "forget_dice_native": "forget Dice, native",
    "retain_hd95_mm_native": "retain HD95 (mm), native",
    "forget_hd95_mm_native": "forget HD95 (mm), native",
}
OVERLAY_RULE = (
    "Middle slice; colours: classes (background and unscored voxels clear). The retrain reference's "
    "segmentation is what exact unlearning gives: the recommended model's should resemble it."
)
CURVES_RULE = (
    "Each strategy's trial with the highest score at its final epoch. Dashed: the retrain "
    "reference's Dice on that set (where unlearning should go); dotted: the original model's "
    "holdout Dice (subjects it never saw)."
)
DIVERGED_RULE = (
    "A trial whose loss turned non-finite ended at that epoch. Its last figures are those of its "
    "last finite model, so it is shown only at the horizons it ran past, as a cross, and is never "
    "a best trial, a front point or the recommendation; Optuna was told it failed."
)


@dataclass
class Report:
    """Paths written and the recommendation (``None`` before any trial reached a horizon)."""

    html: Path
    markdown: Path
    pareto: Path
    recommendation: Recommendation | None
    text: str


def _heading(study: Study) -> Section:
    trials, config = study.trials, study.config
    diverged = trials[trials["status"] == "diverged"]["trial_id"].nunique()
    errored = trials[trials["status"] == "error"]["trial_id"].nunique()
    counts = (
        f"{trials['trial_id'].nunique()} trials of {trials['strategy'].nunique()} strategies, "
        f"{len(trials)} trial-epochs; {diverged} diverged, {errored} failed"
    )
    forget, data = ", ".join(config.forget), config.data or "the synthetic cohort"
    intro = Paragraph(f"{counts}. Preset ", Code(config.preset), f", forget {forget}, data: {data}.")
    return Section(("Unlearning study ", Code(str(study.run_dir))), [intro], level=1)


def _recommended(study: Study) -> Section:
    horizons = ", ".join(str(h) for h in sorted(study.config.horizons))
    objectives = OBJECTIVES[study.config.objective]
    rule = Paragraph(
        f"Rule: among the trials read at the configured horizons ({horizons} epochs), the "
        f"non-dominated ones on ({', '.join(objectives)}), the objectives the search maximised "
        f"(view {study.config.objective}); {knee_rule(objectives)}.",
        rule=True,
    )
    if (recommended := study.recommendation) is None:
        return Section("Recommended configuration", [Table(pd.DataFrame({"": [NOT_YET]})), rule])
    facts = {
        "strategy": recommended.strategy,
        "trial_id": recommended.trial_id,
        "epochs (horizon)": recommended.epoch,
        **{k: recommended.figures[k] for k in SHOWN_FIGURES},
        "forgets past retraining": past_retrain_text(
            recommended.figures["forget_dice"],
            study.baselines,
            _flag(study, recommended),
            measured=study.forget_reference is not None,
        ),
        "membership test": knee_verdict(recommended, len(study.config.forget)),
        **recommended.params,
    }
    table = Table(pd.DataFrame({"": list(facts), "value": list(facts.values())}))
    command = Paragraph("Reproduce this trial without Ray: ", Code(reproduce_command(study, recommended)))
    return Section("Recommended configuration", [table, rule, command])


def _flag(study: Study, recommended: Recommendation) -> bool | None:
    """Whether the recommended row forgets past retraining, as ``Study.rows`` found it."""
    rows = study.rows
    row = rows[(rows["trial_id"] == recommended.trial_id) & (rows["epoch"] == recommended.epoch)]
    return bool(row["forgets_past_retrain"].iloc[0]) if len(row) else None


def _diverged(study: Study) -> Section:
    """The diverged trials, each with the epoch it diverged at and its hyperparameters."""
    trials = study.trials
    last = trials[trials["status"] == "diverged"].sort_values("epoch").groupby("trial_id").tail(1)
    if last.empty:
        return Section("Diverged trials", [Paragraph("none"), Paragraph(DIVERGED_RULE, rule=True)])
    params = [c for c in last.columns if c.startswith("param_") and last[c].notna().any()]
    table = last[["strategy", "trial_id", "epoch", *params]].sort_values(["strategy", "trial_id"])
    table = table.assign(epoch=table["epoch"].map(diverged_label))
    table = table.rename(columns={"epoch": "status"} | {c: c.removeprefix("param_") for c in params})
    return Section("Diverged trials", [Table(table), Paragraph(DIVERGED_RULE, rule=True)])


def _sections(study: Study, figures: dict[str, bytes], overlay_note: str) -> list[Section]:
    """The report, top to bottom; every figure named here is in ``figures``."""
    shown = at_horizons(study.rows, sorted(study.config.horizons))
    objective = study.config.objective
    hypervolume = hypervolumes(shown, OBJECTIVES[objective]).reset_index(names="strategy")
    official = study.run.read_official_scores()
    table = paper_table(
        study.rows, study.baselines, sorted(study.config.horizons), study.recommendation, official
    ).rename(columns=PAPER_COLUMNS)
    overlays = [Figure("overlays")] if "overlays" in figures else []
    notes = [Paragraph(overlay_note)] if overlay_note else []
    front = [Figure(f"pareto-{objective}"), Paragraph(FRONT_RULE, rule=True), Table(hypervolume)]
    return [
        _heading(study),
        _recommended(study),
        Section(("Pareto front: the searched view ", Code(objective)), front),
        views_section(study, _other_view(objective)),
        Section(
            "Results in the reference paper's form",
            [Paragraph(PAPER_RULE, rule=True), Table(table), *_official(study, official)],
        ),
        membership_section(study),
        privacy_section(study),
        seeds_section(study),
        bn_modes_section(study),
        Section(
            "Per-epoch Dice of each strategy's best trial",
            [Figure("curves"), Paragraph(CURVES_RULE, rule=True)],
        ),
        Section("Before and after unlearning", [*overlays, *notes, Paragraph(OVERLAY_RULE, rule=True)]),
        _diverged(study),
        Section("Missing", [Bullets(tuple(study.missing) or ("nothing: the study is complete",))]),
    ]


def _official(study: Study, official: pd.DataFrame | None) -> list[Paragraph | Table]:
    """The per-label native-grid table of the three scored models, or a note that there is none."""
    if official is None or official.empty:
        return [Paragraph(NOT_SCORED[study.config.native_scores] + SCORE_ONE)]
    metrics = dict(study.baselines)
    if (recommended := study.recommendation) is not None:
        metrics["recommended"] = recommended.figures
    title = Paragraph("Per label, on the native grid (MRBrainS18's scoring):")
    return [title, Table(official_table(official, metrics)), Paragraph(OFFICIAL_RULE, rule=True)]


def _other_view(view: str) -> str:
    return next(v for v in OBJECTIVES if v != view)


def _figures(study: Study, overlays: bool, cohort: Cohort | None) -> tuple[dict[str, bytes], str]:
    """The report's PNG figures by name (a front per view), and the note on the overlays."""
    horizons, retrain = sorted(study.config.horizons), retrain_point(study.baselines)
    objective, other = study.config.objective, _other_view(study.config.objective)
    figures = {
        f"pareto-{view}": pareto_plot(
            study.rows, horizons, study.knees[view], OBJECTIVES[view], retrain, label
        )
        for view, label in ((objective, "recommended"), (other, f"knee under {other}"))
    }
    finals = best_trials(at_horizon(study.rows, FINAL))
    best = dict(zip(finals["strategy"], finals["trial_id"], strict=True))
    figures["curves"] = curves_plot(study.trials, best, study.baselines)
    if study.privacy is not None:
        knees = {"searched knee": study.recommendation, "safe to deploy": study.safe_recommendation}
        marked = {label: f"{k.trial_id}@{k.epoch}" for label, k in knees.items() if k is not None}
        figures |= {f"membership-{s}": membership_plot(study.privacy, s, marked) for s in study.config.forget}
    if not overlays:
        return figures, "overlays left out (--no-overlays)"
    png, note = overlay_figure(study, cohort)
    return figures | ({"overlays": png} if png is not None else {}), note


def build_report(study: Study, overlays: bool = True, cohort: Cohort | None = None) -> Report:
    """Writes the report on ``study`` and its recommendation; returns the paths.

    ``cohort``: the study's, when the caller holds it (the overlays read it from disk otherwise).
    """
    if study.trials.empty:
        raise StudyError(f"{study.run_dir}: no trial has reported yet; nothing to report")
    run = study.run
    fronts = fronts_by_view(study.rows)
    run.write_pareto(
        fronts.assign(horizon=fronts["horizon"].astype("Int64"))
    )  # null: each trial's final epoch
    figures, overlay_note = _figures(study, overlays, cohort)
    sections = _sections(study, figures, overlay_note)
    run.report_files.mkdir(exist_ok=True)
    for name, png in figures.items():
        atomic_write(run.report_files / f"{name}.png", lambda p, png=png: p.write_bytes(png))
    page = render_html(sections, figures, title=f"Unlearning study: {study.run_dir.name}")
    atomic_write(run.report_html, lambda p: p.write_text(page))
    markdown = render_markdown(sections, run.report_files.name)
    atomic_write(run.report_markdown, lambda p: p.write_text(markdown))
    return Report(run.report_html, run.report_markdown, run.pareto_file, study.recommendation, _told(study))


def _told(study: Study) -> str:
    """What the console shows of the report: its path and the recommendation."""
    text = f"report: {study.run.report_html}\n"
    if (r := study.recommendation) is not None:
        text += f"recommended: {r.strategy} trial {r.trial_id} at {r.epoch} epochs "
        text += f"(forget_drop {r.figures['forget_drop']:.3f}, retain_kept {r.figures['retain_kept']:.3f}, "
        text += f"retrain_match {r.figures['retrain_match']:.3f})\n"
        text += "  hyperparameters: " + " ".join(f"{k} {number(v)}" for k, v in sorted(r.params.items()))
        text += f"\n  reproduce: {reproduce_command(study, r)}"
        text += f"\n  membership test: {knee_verdict(r, len(study.config.forget))}"
        row = study.rows[(study.rows["trial_id"] == r.trial_id) & (study.rows["epoch"] == r.epoch)]
        past = bool(row["forgets_past_retrain"].iloc[0]) if len(row) else None
        measured = study.forget_reference is not None
        verdict = past_retrain_text(r.figures["forget_dice"], study.baselines, past, measured)
        text += f"\n  forgets past retraining: {verdict}"
        if past:
            text += (
                "\nwarning: the recommendation forgets past retraining: its forget subjects are "
                "segmented worse than by models never trained on them, which singles them out; "
                "see the report's privacy section, or take the safe-to-deploy configuration"
            )
    if study.privacy is not None:
        safe = study.safe_recommendation
        named = f"{safe.strategy} trial {safe.trial_id} at {safe.epoch} epochs" if safe else "none"
        text += f"\nsafe to deploy (indistinguishable from retraining for every forget subject): {named}"
    return text


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = read("analysis.report", argv)

    def report() -> None:
        print(build_report(load_study(args.run_dir), overlays=not args.no_overlays).text)

    return run_cli(report)


if __name__ == "__main__":
    sys.exit(main())
