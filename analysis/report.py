"""``python -m analysis.report RUN_DIR``: the Pareto-front report a reader decides from.

Writes ``pareto.parquet``, a self-contained ``report.html`` (figures embedded, no network
needed) and ``report.md`` (figures beside it in ``report_files/``), and prints the report's
path and the recommended configuration. Works on a study still running or interrupted:
it then reads Tune's experiment folders and says what is missing.
"""

from __future__ import annotations

import argparse
import base64
import html
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from analysis.pareto import KNEE_RULE
from analysis.plots import curves_plot, overlay_plot, pareto_plot
from analysis.summary import (
    BEST_RULE,
    FINAL,
    best_trials,
    fronts,
    horizon_rows,
    hypervolumes,
    paper_table,
    recommend,
)
from study.cli import run_cli
from study.config import StudyConfig
from study.data import CLASS_NAMES, open_cohort
from study.errors import StudyError
from study.model import MedicalNetSegmentation
from study.results import atomic_write, combine, incomplete_trials, rows_from_experiment
from study.run import RunDir


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
        storage = run.storage
        fs, _ = storage.filesystem()
        try:
            trials = rows_from_experiment(storage.experiment_path, fs, config.max_epochs)
        except (ValueError, OSError):  # Tune has saved no experiment state yet
            trials = combine([])
        missing.append(f"{run.trials_file.name} is not written yet: the study is running or was interrupted")
    baselines = run.baseline_metrics()
    missing += [
        f"baseline '{name}' has no metrics yet" for name in ("original", "retrain") if name not in baselines
    ]
    found = set(trials["strategy"]) if len(trials) else set()
    missing += [f"strategy {s}: no trial has reported yet" for s in config.strategies if s not in found]
    if len(trials):
        per_strategy = trials.groupby("strategy")["trial_id"].nunique()
        missing += [
            f"strategy {s}: {n} of {config.num_samples} trials"
            for s, n in per_strategy.items()
            if n < config.num_samples
        ]
        running = trials[trials["status"] == "running"].groupby("trial_id")["epoch"].max()
        missing += [
            f"trial {t}: running or interrupted at epoch {e} of {config.max_epochs}"
            for t, e in running.items()
        ]
        missing += [
            f"trial {t}: {what}"
            for t, what in incomplete_trials(trials, config.max_epochs).items()
            if t not in running.index
        ]
    return Study(run, config, trials, baselines, missing)


def _overlays(study: Study, knee: pd.Series | None) -> tuple[bytes | None, str]:
    """Overlay figure of one forget and one retain subject, and a note on what it shows."""
    config = study.config
    original = study.run.load_baseline("original")
    if original is None:
        return None, "no overlays: the original model is not saved yet"
    models = {"original model": original}
    note = ""
    if knee is not None:
        recommended = study.run.load_model_of(knee["trial_id"], int(knee["epoch"]))
        if recommended is None:
            note = (
                f"the recommended model (trial {knee['trial_id']} after {int(knee['epoch'])} epochs) "
                "is not saved; add it with: " + reproduce_command(study, knee, out=True)
            )
        else:
            models["recommended model"] = recommended
    cohort = open_cohort(config)
    panels = []
    for set_name, subject in (("forget", cohort.split.forget[0]), ("retain", cohort.split.retain[0])):
        image = torch.tensor(cohort.images[subject])[None]
        middle = image.shape[2] // 2
        maps = [("ground truth", cohort.labels[subject][middle])]
        for name, state in models.items():
            model = MedicalNetSegmentation(config.model_depth, cohort.n_classes, width=config.model_width)
            model.load_state_dict(state)
            with torch.no_grad():
                prediction = model.eval()(image).argmax(dim=1)[0, middle].numpy()
            maps.append((name, prediction))
        panels.append((f"{set_name} subject {subject}", image[0, 0, middle].numpy(), maps))
    return overlay_plot(panels, CLASS_NAMES[config.label_mode]), note


def reproduce_command(study: Study, knee: pd.Series, out: bool = False) -> str:
    """The command line that reruns the recommended trial (without Ray) to its horizon."""
    command = f"python -m trainables.replay {study.run_dir} {knee['trial_id']} --epochs {int(knee['epoch'])}"
    return command + (f" --out {study.run.recommended_model}" if out else "")


def missing_recommended_model(run_dir: Path) -> tuple[str, int] | None:
    """``(trial_id, epoch)`` of the recommendation when its weights are not saved, else ``None``."""
    study = load_study(run_dir)
    horizons = sorted(study.config.horizons)
    knee = recommend(horizon_rows(study.trials, horizons), horizons)
    if knee is None or study.run.load_model_of(knee["trial_id"], int(knee["epoch"])) is not None:
        return None
    return knee["trial_id"], int(knee["epoch"])


@dataclass
class Report:
    """Paths written and the recommendation (``None`` before any trial reached a horizon)."""

    html: Path
    markdown: Path
    pareto: Path
    recommendation: pd.Series | None
    text: str


def _params(row: pd.Series) -> dict[str, object]:
    """The searched hyperparameters of a trial row, as plain Python values."""
    return {
        k.removeprefix("param_"): v.item() if hasattr(v, "item") else v
        for k, v in row.items()
        if k.startswith("param_") and pd.notna(v)
    }


def _format(value: object) -> str:
    if isinstance(value, float | np.floating):
        if np.isnan(value):
            return ""
        return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _html_table(table: pd.DataFrame) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in table.columns)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_format(v))}</td>" for v in row) + "</tr>"
        for row in table.itertuples(index=False)
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join(_format(v).replace("|", "\\|") for v in row) + " |"
        for row in table.itertuples(index=False)
    ]
    return "\n".join(lines)


def build_report(run_dir: Path, overlays: bool = True) -> Report:
    """Builds every output of the report from ``run_dir``; returns their paths."""
    study = load_study(run_dir)
    if study.trials.empty:
        raise StudyError(f"{run_dir}: no trial has reported yet; nothing to report")
    config, trials = study.config, study.trials
    horizons = sorted(config.horizons)
    rows = horizon_rows(trials, horizons)
    knee = recommend(rows, horizons)
    study.run.write_pareto(fronts(rows))

    shown = [str(h) for h in horizons]
    figures = {"pareto": pareto_plot(rows, shown, knee)}
    finals = best_trials(rows[rows["horizon"] == FINAL])
    figures["curves"] = curves_plot(trials, dict(zip(finals["strategy"], finals["trial_id"], strict=True)))
    overlay_note = "overlays left out (--no-overlays)"
    if overlays:
        overlay_png, overlay_note = _overlays(study, knee)
        if overlay_png is not None:
            figures["overlays"] = overlay_png

    hv = hypervolumes(rows[rows["horizon"].isin(shown)]).reset_index(names="strategy")
    table = paper_table(rows, study.baselines, horizons)
    diverged = trials[trials["status"] == "diverged"]["trial_id"].nunique()
    errored = trials[trials["status"] == "error"]["trial_id"].nunique()
    counts = (
        f"{trials['trial_id'].nunique()} trials of {trials['strategy'].nunique()} strategies, "
        f"{len(trials)} trial-epochs; {diverged} diverged, {errored} failed"
    )
    if knee is None:
        recommendation_rows = pd.DataFrame({"": ["no trial has reached a configured horizon yet"]})
        command = ""
    else:
        facts = {
            "strategy": knee["strategy"],
            "trial_id": knee["trial_id"],
            "epochs (horizon)": int(knee["epoch"]),
            **{
                k: knee[k]
                for k in (
                    "forget_drop",
                    "retain_kept",
                    "forget_dice",
                    "retain_dice",
                    "dice_gap",
                    "mae_gap",
                    "score",
                )
            },
            **_params(knee),
        }
        recommendation_rows = pd.DataFrame({"": list(facts), "value": list(facts.values())})
        command = reproduce_command(study, knee)

    files_dir = study.run.report_files
    files_dir.mkdir(exist_ok=True)
    for name, png in figures.items():
        atomic_write(files_dir / f"{name}.png", lambda p, png=png: p.write_bytes(png))

    def img(name: str) -> str:
        data = base64.b64encode(figures[name]).decode()
        return f'<img alt="{name}" src="data:image/png;base64,{data}">'

    e = html.escape
    notes = "".join(f"<li>{e(m)}</li>" for m in study.missing) or "<li>nothing: the study is complete</li>"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Unlearning study: {e(study.run_dir.name)}</title>
<style>
body {{ font-family: sans-serif; max-width: 1150px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.9em; }}
td, th {{ border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #eee; }} td:first-child, th:first-child {{ text-align: left; }}
img {{ max-width: 100%; }} code {{ background: #f3f3f3; padding: 0.15em 0.3em; }}
.rule {{ color: #555; font-size: 0.9em; }}
</style></head><body>
<h1>Unlearning study <code>{e(str(study.run_dir))}</code></h1>
<p>{e(counts)}. Preset <code>{e(config.preset)}</code>, forget {e(", ".join(config.forget))},
data: {e(config.data or "the synthetic cohort")}.</p>
<h2>Recommended configuration</h2>
{_html_table(recommendation_rows)}
<p class="rule">Rule: among the trials read at the configured horizons ({e(", ".join(shown))} epochs),
the non-dominated ones on (forget_drop, retain_kept); {e(KNEE_RULE)}.</p>
{f"<p>Reproduce this trial without Ray: <code>{e(command)}</code></p>" if command else ""}
<h2>Pareto front</h2>
{img("pareto")}
<p class="rule">Circles: the front over all strategies at that horizon; star: the recommendation.
Hypervolume (reference point (0, 0); higher is better):</p>
{_html_table(hv)}
<h2>Results in the reference paper's form</h2>
<p class="rule">Per strategy and horizon, {e(BEST_RULE)}. The last row is the reference
paper's published figure, not ours.</p>
{_html_table(table)}
<h2>Per-epoch Dice of each strategy's best trial</h2>
{img("curves")}
<h2>Before and after unlearning</h2>
{img("overlays") if "overlays" in figures else ""}
<p class="rule">{e(overlay_note) or "Middle slice; colours: classes (background clear)."}</p>
<h2>Missing</h2><ul>{notes}</ul>
</body></html>
"""
    html_path = study.run.report_html
    atomic_write(html_path, lambda p: p.write_text(page))

    md = [
        f"# Unlearning study `{study.run_dir}`",
        "",
        f"{counts}. Preset `{config.preset}`, forget {', '.join(config.forget)}.",
        "",
        "## Recommended configuration",
        "",
        _md_table(recommendation_rows),
        "",
        f"Rule: among the trials read at the configured horizons, the non-dominated ones on "
        f"(forget_drop, retain_kept); {KNEE_RULE}.",
        "",
        *([f"Reproduce: `{command}`", ""] if command else []),
        "## Pareto front",
        "",
        f"![pareto]({files_dir.name}/pareto.png)",
        "",
        _md_table(hv),
        "",
        "## Results in the reference paper's form",
        "",
        f"Per strategy and horizon, {BEST_RULE}; the last row is the published figure, not ours.",
        "",
        _md_table(table),
        "",
        "## Per-epoch Dice of each strategy's best trial",
        "",
        f"![curves]({files_dir.name}/curves.png)",
        "",
        "## Before and after unlearning",
        "",
        *([f"![overlays]({files_dir.name}/overlays.png)", ""] if "overlays" in figures else []),
        *([overlay_note, ""] if overlay_note else []),
        "## Missing",
        "",
        *([f"- {m}" for m in study.missing] or ["- nothing: the study is complete"]),
        "",
    ]
    md_path = study.run.report_markdown
    atomic_write(md_path, lambda p: p.write_text("\n".join(md)))
    text = f"report: {html_path}\n"
    if knee is not None:
        text += f"recommended: {knee['strategy']} trial {knee['trial_id']} at {int(knee['epoch'])} epochs "
        text += f"(forget_drop {knee['forget_drop']:.3f}, retain_kept {knee['retain_kept']:.3f})\n"
        text += f"  {_params(knee)}\n  reproduce: {command}"
    return Report(html_path, md_path, study.run.pareto_file, knee, text)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--no-overlays", action="store_true", help="skip the image overlays (no data needed)")
    args = parser.parse_args(argv)
    return run_cli(lambda: print(build_report(args.run_dir, overlays=not args.no_overlays).text))


if __name__ == "__main__":
    sys.exit(main())
