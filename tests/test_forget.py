"""``python -m study.forget``: a deletion request honoured with a finished study, and its audit."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from analysis.audit import audit_html
from study.data import open_cohort
from study.forget import Thresholds, checks, main
from study.forget_sets import with_forget
from study.metrics import evaluate
from study.run import RunDir
from study.weights import load_medicalnet_weights
from trainables.baseline import baseline_key, build_model, load_cached, measure_baselines


def test_the_verdict_checks_retain_loss_and_membership_inference():
    after = {"retain_kept": 0.93, "mia_forget": 0.25}
    found = {c["name"]: c for c in checks(after, Thresholds(max_retain_loss=0.1, max_mia=0.5))}
    assert found["retain_loss"]["value"] == pytest.approx(0.07) and found["retain_loss"]["passed"]
    assert found["mia_forget"]["passed"]
    strict = checks(after, Thresholds(max_retain_loss=0.05, max_mia=0.2))
    assert [c["passed"] for c in strict] == [False, False]
    # No holdout subjects, no attack: unmeasured, which only a limit of 1 accepts.
    unmeasured = {"retain_kept": 0.93, "mia_forget": math.nan}
    assert not checks(unmeasured, Thresholds())[1]["passed"]
    assert checks(unmeasured, Thresholds(max_mia=1.0))[1]["passed"]


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
        "verdict": {"passed": False, "checks": [{"name": "mia_forget", "value": 1.0, "limit": 0.5}]},
        "model_written": False,
    }


def test_the_audit_page_escapes_every_user_string_and_loads_nothing_from_outside():
    for check in (record := _record("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>'))[
        "verdict"
    ]["checks"]:
        check |= {"option": "--max-mia", "passed": False}
    page = audit_html(record)
    assert "<script>" not in page and "<img" not in page and "<b>" not in page and "<i>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page.replace("src=x", "")
    assert "Verdict: failed" in page and "withheld" in page and "n/a" in page  # the retrain's missing figure


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_a_deletion_request_is_honoured(run_dir: Path, tmp_path: Path, capsys) -> None:
    """On a finished smoke study (forget set 070,148; holdout 101-103): forget subject 1, a
    retain subject of the study, and check the model and the audit record against each other."""
    lenient = ["--max-retain-loss", "1", "--max-mia", "1"]  # a 2-epoch smoke trial forgets little
    first = tmp_path / "first"
    assert main([str(run_dir), "--subjects", "1", "--out", str(first), *lenient]) == 0
    record = json.loads((first / "audit.json").read_text())
    assert record["verdict"]["passed"] and record["model_written"]
    assert record["sha256"]["unlearned_model"] == _sha256(first / "unlearned.pt")
    assert record["sha256"]["original_model"] == _sha256(RunDir(run_dir).baseline_model("original"))
    assert len(record["sha256"]["input_files"]) == 4 * 10  # 3 modalities + labels, 10 subjects

    # The model loads with the project's MedicalNet loader and has the figures the record gives.
    config = RunDir.open(run_dir)[1]
    request = with_forget(open_cohort(config), ["1"])
    model = build_model(config, request.n_classes)
    loaded = load_medicalnet_weights(model, first / "unlearned.pt")
    assert loaded["missing"] == [] and loaded["unexpected"] == []
    retrain = load_cached(config.cache_path, baseline_key(config, request, "retrain"))[0]
    original = RunDir(run_dir).load_baseline("original")
    reference = measure_baselines(config, request, {"original": original, "retrain": retrain})
    figures = evaluate(model.eval(), request, torch.device("cpu"), reference)
    for name, values in record["figures"].items():
        assert values["unlearned"] == pytest.approx(figures[name], abs=1e-5), name
        assert values["original"] == pytest.approx(reference.original[name], abs=1e-5), name
    assert record["figures"]["forget_gap_to_retrain"]["retrain"] == 0.0

    # Not a training subject: one line, exit 2, nothing written.
    capsys.readouterr()
    for subject, message in (("101", "holdout subject"), ("999", "not in this study's cohort")):
        refused = tmp_path / f"refused-{subject}"
        assert main([str(run_dir), "--subjects", subject, "--out", str(refused)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and not refused.exists()

    # An impossible threshold withholds the model and says which; --force writes it anyway,
    # and the same request gives the same model, byte for byte.
    withheld = tmp_path / "withheld"
    impossible = ["--max-retain-loss", "-1", "--max-mia", "1"]
    assert main([str(run_dir), "--subjects", "1", "--out", str(withheld), *impossible]) == 4
    assert "retain_loss over --max-retain-loss -1.0" in capsys.readouterr().out
    record = json.loads((withheld / "audit.json").read_text())
    assert not record["verdict"]["passed"] and not record["model_written"]
    assert not (withheld / "unlearned.pt").exists() and (withheld / "audit.html").is_file()
    assert main([str(run_dir), "--subjects", "1", "--out", str(withheld), *impossible, "--force"]) == 0
    assert _sha256(withheld / "unlearned.pt") == _sha256(first / "unlearned.pt")


def test_a_request_no_node_of_the_cluster_can_hold_is_refused_before_any_task(ray_local, tmp_path):
    import ray

    from study import forget
    from study.config import load_config
    from study.errors import StudyError

    config = load_config(
        "smoke", overrides={"run_dir": str(tmp_path), "trial_resources": {"trial_slot": 1.0}}
    )
    address = ray.get_runtime_context().gcs_address  # the tests' local Ray: no trial_slot anywhere
    with pytest.raises(StudyError, match="no node of the cluster has 1 trial_slot"):
        forget._compute(config, address, tmp_path)
    assert ray.is_initialized()  # a Ray this process had stays up
