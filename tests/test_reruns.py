"""The recommended configuration rerun: with fresh seeds (on two forget sets), and under every
other bn_mode."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pandas as pd
from test_report_views import _figures, _run_dir, _section, _trials

from analysis.report import build_report
from analysis.study_state import load_study, recommendation_of
from study.run import RunDir
from trainables.replay import FRESH_SEEDS
from trainables.reruns import Rerun, done_reruns, planned_reruns


def test_the_batchnorm_section_compares_the_recommendation_under_each_mode(tmp_path: Path):
    run_dir = _run_dir(tmp_path, _trials())
    study = load_study(run_dir)
    recommendation = recommendation_of(study)
    page = build_report(study, recommendation, overlays=False).html.read_text()
    assert "Not run: the run directory has no bn_modes.parquet." in _section(page, "BatchNorm statistics")

    reruns = [
        {"bn_mode": mode, "epoch": epoch, **_figures(forget, 0.7, (0.8, mia, auc, 0.4))}
        for mode, forget, mia, auc in (("frozen", 0.3, 0.9, 0.75), ("recalibrate", 0.45, 0.35, 0.52))
        for epoch in (2, 4)
    ]
    study.run.write_bn_mode_runs(pd.DataFrame(reruns))
    section = _section(build_report(study, recommendation, overlays=False).html.read_text(), "BatchNorm")
    body = [re.findall(r"<td>(.*?)</td>", row) for row in section.split("<tr")[2:]]
    columns = re.findall(r"<th>(.*?)</th>", section)
    cells = pd.DataFrame([row[1:] for row in body], columns=columns[1:], index=[row[0] for row in body])
    cells = cells.apply(pd.to_numeric)
    own = "(the trial itself)"  # these hand-made trials name no bn_mode
    assert list(cells.index) == [own, "frozen", "recalibrate", "retrain reference (target)"]
    assert cells.loc["frozen", "mia_forget"] == 0.9 and cells.loc["recalibrate", "mia_forget_auc"] == 0.52
    assert cells.loc["recalibrate", "forget_dice"] == 0.45  # the epoch-4 row, not epoch 2's
    assert cells.loc[own, "forget_dice"] == recommendation["forget_dice"]
    assert cells.loc["retrain reference (target)", "mia_forget_auc"] == 0.55


def test_a_resumed_study_reruns_only_what_its_tables_lack(tmp_path: Path):
    run_dir = _run_dir(tmp_path, _trials())
    run, config = RunDir.open(run_dir)
    config = dataclasses.replace(config, seed_reruns=2, bn_mode_reruns=True)
    planned = planned_reruns(config, "train", "070,148", "1,4")
    assert [(r.column, r.value, r.forget) for r in planned] == [
        ("seed", 0, "070,148"),
        ("seed", 1, "070,148"),
        ("seed", 0, "1,4"),
        ("seed", 1, "1,4"),
        ("bn_mode", "frozen", "070,148"),
        ("bn_mode", "recalibrate", "070,148"),
    ]
    assert planned[0].changes == {"trial_number": FRESH_SEEDS} and planned[-1].changes == {
        "bn_mode": "recalibrate"
    }
    assert [r.forget for r in planned_reruns(config, "train", "070,148", None)].count("1,4") == 0

    # Seeds written before other forget sets were rerun (no forget column) count as the study's own.
    figures = _figures(0.2, 0.7, (0.8, 0.1, 0.3, 0.5))
    run.write_seed_runs(pd.DataFrame([{"trial_id": "t", "seed": k, "epoch": 4, **figures} for k in (0, 1)]))
    run.write_bn_mode_runs(pd.DataFrame([{"trial_id": "other", "bn_mode": "frozen", "epoch": 4, **figures}]))
    rows = done_reruns(run, "t", "070,148")
    done = {Rerun(column, row[column], row["forget"]) for column, table in rows.items() for row in table}
    assert [r for r in planned if r not in done] == planned[2:]  # another trial's bn_mode rows do not count
