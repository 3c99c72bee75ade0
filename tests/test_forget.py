"""``python -m study.forget``: a deletion request honoured with a finished study, and its audit."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from analysis.audit import audit_html
from study.cohort import open_cohort, with_forget
from study.config import StudyError, load_config
from study.forget import Thresholds, checks, main
from study.metrics import evaluate
from study.model import load_medicalnet_weights, model_from
from study.run.cluster import joined
from trainables.baseline import measure
from trainables.recipes import cache_key, load_cached, recipes
from trainables.settings import Compute

#: A 2-epoch smoke trial forgets little: the verdict's limits opened, so the model is written.
LENIENT = ["--max-retain-loss", "1", "--max-mia", "1"]


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
    assert record["verdict"]["passed"] and record["model_written"]
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
    impossible = ["--max-retain-loss", "-1", "--max-mia", "1"]
    assert main([run_dir, "--subjects", "1", "--out", str(withheld), *impossible]) == 4
    assert "retain_loss over --max-retain-loss -1.0" in capsys.readouterr().out
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
