"""The reruns of the recommended configuration: which it asks for, and which a resumed study
still has to run (the reruns themselves run in the smoke study, ``tests/test_study.py``)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd

from study.config import load_config
from study.run.rundir import RunDir
from trainables.reruns import Rerun, done_reruns, pending_reruns, planned_reruns
from trainables.trial import FRESH_SEEDS

#: The figures a rerun's row carries, made up.
FIGURES = {"forget_dice": 0.2, "retain_dice": 0.7, "mia_forget": 0.1}


def test_the_reruns_asked_for_are_fresh_seeds_on_both_forget_sets_and_every_other_bn_mode():
    config = dataclasses.replace(load_config("smoke"), seed_reruns=2, bn_mode_reruns=True)
    planned = planned_reruns(config, "train", "070,148", "1,4")
    assert [(r.column, r.value, r.forget) for r in planned] == [
        ("seed", 0, "070,148"),
        ("seed", 1, "070,148"),
        ("seed", 0, "1,4"),
        ("seed", 1, "1,4"),
        ("bn_mode", "frozen", "070,148"),
        ("bn_mode", "recalibrate", "070,148"),
    ]
    assert planned[0].changes == {"trial_number": FRESH_SEEDS}
    assert planned[-1].changes == {"bn_mode": "recalibrate"}
    assert [r.forget for r in planned_reruns(config, "frozen", "070,148", None)] == ["070,148"] * 4
    assert (
        planned_reruns(dataclasses.replace(config, seed_reruns=0, bn_mode_reruns=False), "train", "a", "b")
        == []
    )


def test_a_resumed_study_reruns_only_what_its_tables_lack(tmp_path: Path):
    run = RunDir(tmp_path)
    config = dataclasses.replace(load_config("smoke"), seed_reruns=2, bn_mode_reruns=True)
    planned = planned_reruns(config, "train", "070,148", "1,4")
    assert pending_reruns(planned, done_reruns(run, "t", "070,148")) == planned  # no tables yet

    # Seeds written before other forget sets were rerun (no forget column) count as the study's own;
    # another trial's rows do not count.
    seeds = [{"trial_id": "t", "seed": k, "epoch": 4, **FIGURES} for k in (0, 1)]
    run.write_seed_runs(pd.DataFrame([*seeds, {"trial_id": "other", "seed": 0, "epoch": 4, **FIGURES}]))
    run.write_bn_mode_runs(pd.DataFrame([{"trial_id": "other", "bn_mode": "frozen", "epoch": 4, **FIGURES}]))
    done = done_reruns(run, "t", "070,148")
    assert [row["forget"] for row in done["seed"]] == ["070,148", "070,148"] and done["bn_mode"] == []
    assert pending_reruns(planned, done) == planned[2:]
    finished = {**done, "bn_mode": [{"bn_mode": "frozen", "forget": "070,148"}]}
    assert pending_reruns(planned, finished) == [*planned[2:4], Rerun("bn_mode", "recalibrate", "070,148")]
