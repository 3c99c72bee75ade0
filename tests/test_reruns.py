"""The recommended configuration rerun: with fresh seeds, and under every other bn_mode."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
from test_report_views import _figures, _run_dir, _section, _trials

from analysis.report import build_report
from analysis.study_state import load_study, recommendation_of


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
