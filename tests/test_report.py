"""The report's figures on hand-made points, and whole reports from hand-made run directories."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from pathlib import Path

import pandas as pd
import pytest

from analysis.document import Bullets, Code, Figure, Paragraph, Section, Table, render_html, render_markdown
from analysis.report import Report, build_report, main
from analysis.study_state import load_study, missing_recommended_model
from study.config import StudyConfig
from study.metrics import METRICS
from study.run.results import combine, incomplete_trials, trial_rows
from study.run.rundir import RunDir


def _rows(strategy, trial_id, number, epochs, status="terminated", **params):
    """A trial's rows whose figures rise with the epoch (forget_drop 0.2 / epoch)."""
    history, drop = [], params.pop("drop", 0.2)
    for epoch in range(1, epochs + 1):
        history.append(
            {
                "epoch": epoch,
                "retain_dice": 0.8,
                "forget_dice": 0.8 - 0.1 * epoch,
                "holdout_dice": math.nan,
                "retain_mae": 0.02,
                "forget_mae": 0.02 + 0.01 * epoch,
                "holdout_mae": math.nan,
                "dice_gap": 0.1 * epoch,
                "mae_gap": 0.01 * epoch,
                "forget_drop": drop * epoch,
                "retain_kept": 1.0 - 0.1 * epoch,
                "score": 0.5,
            }
        )
    return trial_rows(strategy, trial_id, {"trial_number": number, "lr": 1e-3, **params}, history, status)


def _run_dir(tmp_path: Path, trials: pd.DataFrame | None, **config) -> Path:
    run = RunDir(tmp_path / "run")
    run.baseline_dir.mkdir(parents=True)
    study = StudyConfig(run_dir=str(run.path), max_epochs=4, horizons=[2, 4], num_samples=2, **config)
    run.write_config(study)
    baseline = {
        "retain_dice": 0.8,
        "forget_dice": 0.8,
        "holdout_dice": 0.6,
        "retain_mae": 0.02,
        "forget_mae": 0.02,
    }
    baseline["holdout_mae"] = 0.05
    retrain = {**baseline, "forget_dice": 0.7}
    run.baseline_metrics_file.write_text(json.dumps({"original": baseline, "retrain": retrain}))
    if trials is not None:
        run.write_trials(trials)
    return run.path


def _report(run_dir: Path) -> Report:
    return build_report(load_study(run_dir))


def _four_trials() -> pd.DataFrame:
    return combine(
        [
            _rows("noisy_label", "aaaa1111", 0, 4, noise_level=1.0, optimizer="<b>adam</b>"),
            _rows("noisy_label", "bbbb2222", 1, 4, noise_level=0.3, drop=0.05, optimizer="sgd"),
            _rows("max_loss", "cccc3333", 0, 4, forget_weight=0.1, drop=0.1, optimizer="adam"),
            _rows("max_loss", "dddd4444", 1, 4, forget_weight=0.5, drop=0.15, optimizer="adam"),
        ]
    )


def test_one_document_renders_to_html_and_markdown_alike():
    table = pd.DataFrame({"": ["a|b", "<i>x</i>"], "value": [0.001234, math.nan], "n": [3.0, 0.696312]})
    sections = [
        Section(("Study ", Code("<run>")), [Paragraph("made by <script>alert(1)</script>")], level=1),
        Section(
            "Figures & tables", [Table(table), Paragraph("how", Code("a < b"), rule=True), Figure("front")]
        ),
        Section("Missing", [Bullets(("trial <t>", "nothing else"))]),
    ]
    page = render_html(sections, {"front": b"\x89PNG"}, title="<title>")
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h1>Study <code>&lt;run&gt;</code></h1>" in page and "<title>&lt;title&gt;</title>" in page
    assert "<td>&lt;i&gt;x&lt;/i&gt;</td>" in page and "<li>trial &lt;t&gt;</li>" in page
    assert '<p class="rule">how<code>a &lt; b</code></p>' in page
    # Small numbers in e-notation, four decimals at most, NaN as an empty cell.
    assert re.search(r"<td>a\|b</td>\s*<td>1.23e-03</td>\s*<td>3</td>", page)
    assert re.search(r"<td>&lt;i&gt;x&lt;/i&gt;</td>\s*<td></td>\s*<td>0.6963</td>", page)
    assert 'src="data:image/png;base64,iVBORw=="' in page

    markdown = render_markdown(sections, "report_files")
    assert markdown.startswith("# Study `<run>`\n")
    assert re.search(r"^\| a\\\|b +\| 1.23e-03 +\| 3 +\|$", markdown, re.MULTILINE)
    assert re.search(r"^\| <i>x</i> +\| +\| 0.6963 +\|$", markdown, re.MULTILINE)
    assert "![front](report_files/front.png)" in markdown and "- trial <t>\n" in markdown


def _headings(page: str, markdown: str) -> tuple[list[str], list[str]]:
    in_html = [html.unescape(re.sub(r"<[^>]+>", "", h)) for h in re.findall(r"<h[12]>(.*?)</h[12]>", page)]
    in_markdown = [h.replace("`", "") for h in re.findall(r"^#{1,2} (.*)$", markdown, re.MULTILINE)]
    return in_html, in_markdown


def test_report_from_a_small_trials_table(tmp_path: Path, capsys):
    run_dir = _run_dir(
        tmp_path, _four_trials(), strategies=["noisy_label", "max_loss"], forget=["<script>x</script>"]
    )
    report = _report(run_dir)

    # Pooled front over horizons 2 and 4: aaaa1111 at epoch 2 (0.4, 0.8) and epoch 4
    # (0.8, 0.6); the latter is closer to (1, 1): 0.447 against 0.632.
    assert (report.recommendation.trial_id, report.recommendation.epoch) == ("aaaa1111", 4)
    page = report.html.read_text()
    assert "python -m study.replay" in page and "aaaa1111 --epochs 4" in page
    for text in ("original model (before unlearning)", "retrain reference (exact)", "noisy_label @ 4 epochs"):
        assert text in page
    assert "published: reference paper, Noisy Label, 50 epochs" in page and "0.6963" in page
    # User-provided strings are escaped; nothing is fetched from the network.
    assert "<script>x</script>" not in page and "&lt;script&gt;x&lt;/script&gt;" in page
    assert "<b>adam</b>" not in page
    assert not re.search(r'(src|href)="https?:', page)
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 3  # a front per view and curves; no overlays without a saved original model
    assert all(base64.b64decode(i).startswith(b"\x89PNG\r\n\x1a\n") for i in images)
    assert "no overlays" in page

    pareto = pd.read_parquet(RunDir(run_dir).pareto_file)
    assert str(pareto["horizon"].dtype) == "Int64" and pareto["horizon"].isna().any()  # null: final
    assert set(pareto["horizon"].dropna()) == {2, 4} and set(pareto["view"]) == {"reference"}
    at_4 = pareto[pareto["horizon"] == 4]  # no retrain-match front: the rows lack retrain_match
    assert set(at_4["trial_id"]) == {"aaaa1111"}  # it dominates the others at epoch 4
    markdown = report.markdown.read_text()
    assert "## Recommended configuration" in markdown and "report_files/pareto-reference.png" in markdown
    assert (RunDir(run_dir).report_files / "pareto-retrain-match.png").is_file()
    # One document: the same sections in the same order, the same figures in both files.
    in_html, in_markdown = _headings(page, markdown)
    assert (
        in_html
        == in_markdown
        == [
            f"Unlearning study {run_dir}",
            "Recommended configuration",
            "Pareto front: the searched view reference",
            "The front under both views",
            "Results in the reference paper's form",
            "Privacy: per-subject membership test",
            "Privacy: the population attack on slabs",
            "Recommended configuration over fresh seeds",
            "BatchNorm statistics as a channel",
            "Per-epoch Dice of each strategy's best trial",
            "Before and after unlearning",
            "Diverged trials",
            "Missing",
        ]
    )
    # Hypervolume at horizons 2 and 4: 0.3 x 0.8 and 0.6 x 0.6 for max_loss's best points.
    assert re.search(r"<td>max_loss</td>\s*<td>0.24</td>\s*<td>0.36</td>", page)
    assert re.search(r"^\| max_loss +\| 0.24 +\| 0.36 +\|$", markdown, re.MULTILINE)
    assert re.search(r"<td>noise_level</td>\s*<td>1</td>", page)
    assert re.search(r"^\| optimizer +\| <b>adam</b> +\|$", markdown, re.MULTILINE)
    assert "0.6963" in markdown and "no overlays: the original model is not saved yet" in markdown

    assert main([str(run_dir), "--no-overlays"]) == 0
    assert "recommended: noisy_label trial aaaa1111 at 4 epochs" in capsys.readouterr().out


def test_report_of_an_interrupted_study_reads_tunes_experiment_and_says_what_is_missing(
    ray_local, tmp_path: Path
):
    from ray import tune

    run_dir = _run_dir(tmp_path, None, strategies=["noisy_label", "max_loss"])
    reports = _rows("noisy_label", "unused", 0, 3)[["epoch", *METRICS]].to_dict("records")

    def stopped_after_three_epochs(config: dict) -> None:
        for report in reports:
            tune.report(report)

    params = {"strategy": "noisy_label", "trial_number": 0, "noise_level": 0.9, "lr": 1e-3}
    grid = tune.Tuner(
        stopped_after_three_epochs,
        param_space=params,
        run_config=tune.RunConfig(name=run_dir.name, storage_path=RunDir(run_dir).storage.root, verbose=0),
    ).fit()
    trial_id = grid[0].metrics["trial_id"]

    report = _report(run_dir)
    page = report.html.read_text()
    assert "trials.parquet is not written yet" in page
    assert "strategy max_loss: no trial has reported yet" in page
    assert f"trial {trial_id}: running or interrupted at epoch 3 of 4" in page
    assert "strategy noisy_label: 1 of 2 trials" in page
    assert report.recommendation.trial_id == trial_id  # it reached horizon 2
    assert report.recommendation.params["noise_level"] == 0.9


def test_report_of_a_directory_that_is_no_study_is_one_line_and_exit_2(tmp_path: Path, capsys):
    assert main([str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "not a study run directory" in err and err.count("\n") == 1


def test_report_counts_diverged_trials(tmp_path: Path):
    trials = combine(
        [_rows("noisy_label", "fine0000", 0, 4), _rows("noisy_label", "nan00000", 1, 1, status="diverged")]
    )
    report = _report(_run_dir(tmp_path, trials, strategies=["noisy_label"]))
    assert "2 trials of 1 strategies, 5 trial-epochs; 1 diverged, 0 failed" in report.html.read_text()


def _figure_texts(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, list[str]]]:
    """Collects, for each figure the report draws, each panel's title -> its annotations and legend."""
    import analysis.plots

    drawn, to_png = [], analysis.plots._png

    def record(figure) -> bytes:
        panels = {}
        for axis in figure.axes:
            legend = axis.get_legend()
            labels = [t.get_text() for t in legend.get_texts()] if legend else []
            panels[axis.get_title()] = [t.get_text() for t in axis.texts] + labels
        drawn.append(panels)
        return to_png(figure)

    monkeypatch.setattr(analysis.plots, "_png", record)
    return drawn


def test_a_trial_that_diverged_is_listed_by_its_epoch_and_never_chosen(tmp_path: Path, monkeypatch):
    perfect = {"forget_drop": 1.0, "retain_kept": 1.0, "score": 1.0, "forget_dice": 0.0}
    blew = _rows("max_loss", "blew0000", 2, 1, status="diverged", forget_weight=0.7).assign(**perfect)
    late = _rows("max_loss", "late0000", 3, 3, status="diverged", forget_weight=0.9, drop=0.35)
    late.loc[late["epoch"] == 3, list(perfect)] = list(perfect.values())
    trials = combine([_four_trials(), blew, late])
    drawn = _figure_texts(monkeypatch)
    report = _report(_run_dir(tmp_path, trials, strategies=["noisy_label", "max_loss"]))

    # late at epoch 2 (0.7, 0.8) would be the knee (0.36 from (1, 1), aaaa1111 at 4: 0.45);
    # blew's and late's final figures are perfect.
    assert (report.recommendation.trial_id, report.recommendation.epoch) == ("aaaa1111", 4)
    assert not {"blew0000", "late0000"} & set(
        pd.read_parquet(RunDir(tmp_path / "run").pareto_file)["trial_id"]
    )
    page = report.html.read_text()
    assert "6 trials of 2 strategies, 20 trial-epochs; 2 diverged, 0 failed" in page
    assert re.search(
        r"<td>max_loss</td>\s*<td>blew0000</td>\s*<td>diverged at epoch 1</td>\s*<td>0.7</td>", page
    )
    assert re.search(r"<td>late0000</td>\s*<td>diverged at epoch 3</td>", page)
    # The paper table shows max_loss's best finished trial (score 1.0 for blew's and late's last rows).
    paper = page.split("Results in the reference paper")[1].split("Per-epoch Dice")[0]
    assert "<td>max_loss @ 4 epochs</td>" in paper and "<td>max_loss @ 2 epochs</td>" in paper
    assert "blew0000" not in paper and "late0000" not in paper
    # Hypervolume at horizon 2 is max_loss's finished trials' (0.3 x 0.8), not late's (0.7 x 0.8).
    assert re.search(r"<td>max_loss</td>\s*<td>0.24</td>\s*<td>0.36</td>", page)
    pareto = drawn[0]
    assert pareto["horizon: 2 epochs"].count("diverged at epoch 3") == 1  # late, read at epoch 2
    assert "diverged at epoch" not in " ".join(pareto["horizon: 4 epochs"])  # neither ran to 4
    assert "x: trial that diverged later (no choice)" in pareto["horizon: 4 epochs"]  # the legend


def test_the_recommended_model_is_missing_until_its_weights_are_saved(tmp_path: Path):
    study = load_study(_run_dir(tmp_path, _four_trials(), strategies=["noisy_label", "max_loss"]))
    missing = missing_recommended_model(study)
    assert (missing.trial_id, missing.epoch) == ("aaaa1111", 4)
    study.run.save_recommended("bbbb2222", 4, {})  # another trial's weights do not count
    assert missing_recommended_model(study) == missing
    study.run.save_recommended("aaaa1111", 3, {})  # nor the trial's at another epoch
    assert missing_recommended_model(study) == missing
    study.run.save_recommended("aaaa1111", 4, {})
    assert missing_recommended_model(study) is None


def test_a_failed_write_leaves_the_previous_file_whole(tmp_path: Path):
    from study.run.rundir import atomic_write

    run = RunDir(tmp_path)
    run.write_trials(pd.DataFrame({"a": [1, 2, 3]}))
    path = run.trials_file

    def crash(partial: Path) -> None:
        partial.write_bytes(b"PAR1 half a table")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, crash)
    assert pd.read_parquet(path)["a"].tolist() == [1, 2, 3]
    assert list(tmp_path.iterdir()) == [path]  # no partial file left


def test_a_trial_misses_only_the_epochs_its_cadence_reports():
    rows = [
        trial_rows("noisy_label", trial_id, {"trial_number": 0}, [{"epoch": e} for e in epochs], status)
        for trial_id, epochs, status in (
            ("full", (5, 10, 15), "terminated"),
            ("gap", (5, 15), "terminated"),
            ("short", (5,), "running"),
            ("diverged", (5, 7), "diverged"),
        )
    ]
    problems = incomplete_trials(pd.concat(rows), [5, 10, 15])
    assert problems == {
        "gap": "noisy_label, epochs 10 missing",
        "short": "noisy_label, stopped at epoch 5 of 15",
    }
