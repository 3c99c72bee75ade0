"""``python -m study.forget``: a deletion request honoured with a finished study, and its audit."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from analysis.audit import audit_html
from study.cohort import open_cohort, with_forget
from study.config import StudyError, load_config
from study.forget import Thresholds, checks, main, membership_checks
from study.metrics import SubjectFigures, evaluate
from study.metrics.evidence import Evidence
from study.model import load_medicalnet_weights, model_from
from study.run.cluster import joined
from trainables.baseline import measure
from trainables.recipes import cache_key, load_cached, recipes
from trainables.settings import Compute

#: The smoke study runs no membership test (no shadow models): the verdict cannot pass, and
#: its 2-epoch trials forget little; the model is written with --force.
LENIENT = ["--max-retain-loss", "1", "--force"]


def test_the_verdict_checks_retain_loss():
    [check] = checks({"retain_kept": 0.93}, Thresholds(max_retain_loss=0.1))
    assert check["value"] == pytest.approx(0.07) and check["passed"]
    assert not checks({"retain_kept": 0.93}, Thresholds(max_retain_loss=0.05))[0]["passed"]


def _figures(evidence, model: str) -> dict[str, SubjectFigures]:
    """``model``'s figures on the forget subjects s0, s1, as the forget command measures them."""
    return {
        s: SubjectFigures(evidence.dice[model][s], 0.0, np.zeros((1, 4)), evidence.statistics[model][s])
        for s in ("s0", "s1")
    }


def test_the_membership_verdict_names_each_subject_and_its_direction(synthetic_evidence):
    evidence = synthetic_evidence(0)
    original = membership_checks(evidence, ["s0", "s1"], _figures(evidence, "original"), 0.05)
    assert [c["verdict"] for c in original] == ["distinguishable (under)"] * 2
    assert [c["name"] for c in original] == ["membership s0", "membership s1"] and not any(
        c["passed"] for c in original
    )
    assert all(c["value"] < 0.025 == c["limit"] for c in original)
    # A retrain seed measured against the others: indistinguishable.
    held_out = Evidence(
        evidence.statistics,
        evidence.dice,
        {m: i for m, i in evidence.members.items() if m != "retrain_seed_2"},
    )
    seed = membership_checks(held_out, ["s0", "s1"], _figures(evidence, "retrain_seed_2"), 0.05)
    assert [c["verdict"] for c in seed] == ["indistinguishable"] * 2 and all(c["passed"] for c in seed)
    few = Evidence(
        evidence.statistics,
        evidence.dice,
        {m: i for m, i in evidence.members.items() if m not in {f"shadow_{k}" for k in range(2, 8)}},
    )
    [s0, _] = membership_checks(few, ["s0", "s1"], _figures(evidence, "original"), 0.05)
    assert s0["verdict"].startswith("insufficient evidence: 2 shadow models") and not s0["passed"]


def _record(subject: str, requested_on: str) -> dict:
    figure = {"original": 0.8, "unlearned": 0.1, "retrain": None}
    return {
        "request": {
            "subjects": [subject],
            "requested_on": requested_on,
            "honoured_at": "2026-11-27T00:00:00",
        },
        "study": {"run_dir": "/runs/<b>study</b>"},
        "unlearning": {"trial_id": "t1", "epochs": 2, "seed": 0, "params": {"strategy": "noisy_label"}},
        "software": {"package": "p", "version": "1"},
        "sha256": {"original_model": "a", "unlearned_model": "b", "input_files": {"x/<i>.nii.gz": "c"}},
        "figures": {"forget_dice": figure},
        "verdict": {"passed": False, "checks": [{"name": "membership <u>", "value": 0.01, "limit": 0.025}]},
        "model_written": False,
    }


def test_the_audit_page_escapes_every_user_string_and_loads_nothing_from_outside():
    for check in (record := _record("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'))[
        "verdict"
    ]["checks"]:
        check |= {"option": "privacy_level", "passed": False, "verdict": "distinguishable (<em>over</em>)"}
    page = audit_html(record)
    assert "<script>" not in page and "<img" not in page and "<b>" not in page and "<i>" not in page
    assert "<u>" not in page and "<em>" not in page and "distinguishable (&lt;em&gt;over&lt;/em&gt;)" in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page.replace("src=x", "")
    assert "Verdict: failed" in page and "withheld" in page and "n/a" in page  # the retrain's missing figure


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def forgotten(smoke_study, cache_home, tmp_path_factory) -> Path:
    """The output folder of a request to forget subject 1, a retain subject of the smoke study."""
    out = tmp_path_factory.mktemp("forget") / "first"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("XDG_CACHE_HOME", str(cache_home))
        assert main([str(smoke_study.run_dir), "--subjects", "1", "--out", str(out), *LENIENT]) == 0
    return out


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_audit_record_names_the_inputs_and_the_model_written(smoke_study, forgotten):
    record = json.loads((forgotten / "audit.json").read_text())
    assert not record["verdict"]["passed"] and record["model_written"]  # --force: no membership test ran
    [retain, membership] = record["verdict"]["checks"]
    assert retain["passed"] and membership["name"] == "membership 1" and not membership["passed"]
    assert membership["verdict"].startswith("insufficient evidence: 0 shadow models and 1 retrain seeds")
    assert set(record["sha256"]["reference_models"]) == {"original", "retrain"}
    assert record["sha256"]["unlearned_model"] == _sha256(forgotten / "unlearned.pt")
    assert record["sha256"]["original_model"] == _sha256(smoke_study.run.baseline_model("original"))
    assert len(record["sha256"]["input_files"]) == 4 * 10  # 3 modalities + labels, 10 subjects
    assert record["unlearning"]["computed_on"].startswith("this process on ")


def test_the_unlearned_model_has_the_figures_the_record_gives(smoke_study, forgotten, cache_env):
    config = smoke_study.config
    request = with_forget(open_cohort(config), ["1"])
    model = model_from(config, request.n_classes)
    loaded = load_medicalnet_weights(model, forgotten / "unlearned.pt")  # the project's MedicalNet loader
    assert loaded["missing"] == [] and loaded["unexpected"] == []
    retrain = load_cached(config, cache_key(config, request, recipes(config, request)["retrain"]))[
        0
    ]  # trained once, cached
    states = {"original": smoke_study.run.load_baseline("original"), "retrain": retrain}
    reference, _ = measure(config, request, states, Compute.of(config))
    figures = evaluate(model.eval(), request, torch.device("cpu"), reference)
    record = json.loads((forgotten / "audit.json").read_text())
    for name, values in record["figures"].items():
        assert values["unlearned"] == pytest.approx(figures[name], abs=1e-5), name
        assert values["original"] == pytest.approx(reference.original[name], abs=1e-5), name
    assert record["figures"]["forget_gap_to_retrain"]["retrain"] == 0.0


@pytest.mark.parametrize(
    ("subject", "message"), [("101", "holdout subject"), ("999", "not in this study's cohort")]
)
def test_a_subject_the_original_model_never_trained_on_is_refused(
    smoke_study, cache_env, tmp_path, capsys, subject, message
):
    refused = tmp_path / f"refused-{subject}"
    assert main([str(smoke_study.run_dir), "--subjects", subject, "--out", str(refused)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not refused.exists()


def test_a_failed_verdict_withholds_the_model_and_force_writes_the_same_bytes(
    smoke_study, forgotten, cache_env, tmp_path, capsys
):
    withheld, run_dir = tmp_path / "withheld", str(smoke_study.run_dir)
    impossible = ["--max-retain-loss", "-1"]
    assert main([run_dir, "--subjects", "1", "--out", str(withheld), *impossible]) == 4
    out = capsys.readouterr().out
    assert "retain_loss: over the limit" in out and "membership 1: insufficient evidence" in out
    record = json.loads((withheld / "audit.json").read_text())
    assert not record["verdict"]["passed"] and not record["model_written"]
    assert not (withheld / "unlearned.pt").exists() and (withheld / "audit.html").is_file()
    assert main([run_dir, "--subjects", "1", "--out", str(withheld), *impossible, "--force"]) == 0
    assert _sha256(withheld / "unlearned.pt") == _sha256(forgotten / "unlearned.pt")  # one request, one model


def test_a_request_no_node_of_the_cluster_can_hold_is_refused_before_any_task(ray_local, tmp_path):
    config = load_config(
        "smoke", overrides={"run_dir": str(tmp_path), "trial_resources": {"trial_slot": 1.0}}
    )
    address = ray_local.get_runtime_context().gcs_address  # the tests' local Ray: no trial_slot anywhere
    entered = []
    with (
        pytest.raises(StudyError, match="no node of the cluster has 1 trial_slot"),
        joined(config, address, tmp_path),
    ):
        entered.append(True)
    assert not entered and ray_local.is_initialized()  # nothing ran; a Ray this process had stays up


@pytest.mark.slow  # a deletion request in a process of its own, killed, then run again
def test_a_request_killed_after_its_retrain_model_was_trained_reuses_it(smoke_study, cache_home, tmp_path):
    models = cache_home / "mri-unlearning-study" / "models"
    before = set(models.glob("*.pt"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"XDG_CACHE_HOME": str(cache_home)}
    out = tmp_path / "out"
    command = [sys.executable, "-m", "study.forget", str(smoke_study.run_dir), "--subjects", "7"]
    command += [*LENIENT, "--out", str(out)]
    request = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 240
    while not set(models.glob("*.pt")) - before and request.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    request.kill()  # the instant its retrain model is in the cache
    told = request.communicate(timeout=60)[0]
    assert request.returncode == -signal.SIGKILL, told  # killed before the request was honoured
    assert "training retrain for forget set 7" in told and not (out / "audit.json").exists()

    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "for forget set 7, cached in " in again.stdout and "training retrain" not in again.stdout
    assert "unlearning: epoch 2/2, forget Dice " in again.stdout  # the unlearning run's progress
    assert json.loads((out / "audit.json").read_text())["model_written"]
