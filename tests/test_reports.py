"""A trial's reports go to Tune on a background thread: in order, one at a time, errors kept."""

from __future__ import annotations

import threading
import time

import pytest

from study.run.results import unpacked
from trainables import tune_trainable
from trainables.tune_trainable import BackgroundReports


def test_the_loop_goes_on_while_a_report_is_written_and_reports_stay_in_order(monkeypatch):
    written: list[int] = []
    release = threading.Event()

    def slow_report(metrics, state):
        release.wait(timeout=10)
        written.append(int(metrics["epoch"]))
        return 0.25

    monkeypatch.setattr(tune_trainable, "_report", slow_report)
    reports = BackgroundReports(time.time(), {"node_id": "n"})
    reports.submit({"epoch": 5, "seconds_train": 0.0}, {"epoch": 5})
    assert written == []  # submit returned while the first report is still being written
    release.set()
    reports.submit({"epoch": 10}, None)  # waits for epoch 5 first
    assert written == [5]
    reports.close()
    assert written == [5, 10]


def test_the_next_report_carries_the_time_the_last_one_took(monkeypatch):
    seen: list[dict] = []

    def report(metrics, state):
        seen.append(unpacked(metrics))  # as Tune's results are read back
        return 0.25

    monkeypatch.setattr(tune_trainable, "_report", report)
    reports = BackgroundReports(time.time() - 2.0, {"node_id": "n"})
    reports.submit({"epoch": 5, "seconds_train": 1.0, "seconds_eval": 0.5}, None)
    reports.submit({"epoch": 10}, None)
    reports.close()
    assert seen[0]["seconds_write"] == 0.0 and seen[1]["seconds_write"] == 0.25
    assert seen[0]["seconds_setup"] == pytest.approx(0.5, abs=0.2)  # 2 s since entry - 1.5 s of epoch
    assert seen[1]["seconds_setup"] == 0.0 and seen[1]["node_id"] == "n"


def test_a_failed_report_fails_the_trial_at_its_next_report(monkeypatch):
    def broken(metrics, state):
        raise OSError("storage is gone")

    monkeypatch.setattr(tune_trainable, "_report", broken)
    reports = BackgroundReports(time.time(), {})
    reports.submit({"epoch": 5}, {"epoch": 5})
    with pytest.raises(OSError, match="storage is gone"):
        reports.submit({"epoch": 10}, None)
    reports.submit({"epoch": 15}, None)
    with pytest.raises(OSError):
        reports.close()


def test_tune_sees_the_epoch_divergence_and_objectives_as_numbers_and_the_rest_packed():
    import json

    from study.run.results import FIGURES, packed, trial_rows

    report = {"epoch": 3, "diverged": 0.0, "forget_drop": 0.4, "retain_kept": 0.9, "retrain_match": 0.8}
    report |= {"forget_dice": 0.5, "dice@070": 0.45, "seconds_train": 1.5, "node_id": "n1", "pid": 7}
    sent = packed(report)
    numbers = {k for k, v in sent.items() if isinstance(v, int | float)}
    assert numbers == {"epoch", "diverged", "forget_drop", "retain_kept", "retrain_match"}
    assert sent["node_id"] == "n1" and json.loads(sent[FIGURES])["dice@070"] == 0.45
    assert unpacked(sent) == report  # read back whole
    assert unpacked({"epoch": 1, "forget_dice": 0.2}) == {"epoch": 1, "forget_dice": 0.2}  # an older run's
    row = trial_rows("noisy_label", "t1", {"lr": 0.1}, [unpacked(sent)], "terminated").iloc[0]
    assert row["forget_dice"] == 0.5 and row["dice@070"] == 0.45 and row["param_lr"] == 0.1
