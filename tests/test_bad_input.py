"""Bad data, weights and configuration: one line naming the culprit, exit code 2, nothing written."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from study.launch import main
from study.model import MedicalNetSegmentation


@pytest.fixture
def data_dir(cohort_root: Path, tmp_path: Path) -> Path:
    """A copy of four synthetic subjects, to break."""
    root = tmp_path / "MRBrainS18"
    for subject in ("1", "4", "070", "148"):
        shutil.copytree(cohort_root / subject, root / subject)
    return root


def _rewrite(path: Path, change) -> None:
    image = nib.load(path)
    data = change(np.asarray(image.dataobj).astype(np.float32))
    nib.save(nib.Nifti1Image(data, image.affine), path)


FAULTS = {
    "a missing modality": (
        lambda r: (r / "070/pre/FLAIR.nii.gz").unlink(),
        "070/pre/FLAIR.nii.gz is missing",
    ),
    "a truncated file": (
        lambda r: (r / "070/pre/reg_T1.nii.gz").write_bytes(
            (r / "070/pre/reg_T1.nii.gz").read_bytes()[:5000]
        ),
        "070/pre/reg_T1.nii.gz is not a readable NIfTI file",
    ),
    "a corrupt file": (
        lambda r: (r / "148/segm.nii.gz").write_bytes(b"\x1f\x8b garbage"),
        "148/segm.nii.gz is not a readable NIfTI file",
    ),
    "volumes of different shapes": (
        lambda r: _rewrite(r / "4/pre/reg_IR.nii.gz", lambda a: a[:, :, :40]),
        "subject 4",
    ),
    "label values outside 0..10": (
        lambda r: _rewrite(r / "1/segm.nii.gz", lambda a: np.where(a == 3, 12, a)),
        "1/segm.nii.gz holds label values outside",
    ),
    "NaN voxels": (
        lambda r: _rewrite(r / "1/pre/FLAIR.nii.gz", lambda a: np.where(a > 500, np.nan, a)),
        "1/pre/FLAIR.nii.gz contains NaN or infinite voxels",
    ),
}


@pytest.mark.parametrize("fault", list(FAULTS))
def test_bad_data_is_refused_before_anything_runs(data_dir: Path, tmp_path: Path, capsys, fault: str):
    damage, message = FAULTS[fault]
    damage(data_dir)
    run_dir = tmp_path / "run"
    argv = ["--preset", "smoke", "--data", str(data_dir), "--forget", "070", "--run-dir", str(run_dir)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert message in err
    assert not run_dir.exists()


def _checkpoint(path: Path, depth: int, poison: bool = False) -> Path:
    model = MedicalNetSegmentation(depth=depth, n_classes=2, in_channels=1, width=0.125)
    state = {f"module.{k}": v for k, v in model.state_dict().items() if not k.startswith("conv_seg.")}
    if poison:  # one NaN weight, as a diverged fine-tuning leaves them
        state["module.conv1.weight"].view(-1)[7] = float("nan")
    torch.save({"state_dict": state}, path)
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: p, "does not exist"),
        (lambda p: p.write_bytes(b"not torch") and p, "cannot be loaded safely"),
        (lambda p: _checkpoint(p, depth=34), "ResNet-34 checkpoint"),
        (lambda p: torch.save({"weights": [1, 2]}, p) or p, "no state dict"),
        (
            lambda p: _checkpoint(p, depth=10, poison=True),
            "1 tensor(s) hold NaN or infinite values (conv1.weight)",
        ),
    ],
)
def test_bad_weights_are_refused_before_anything_runs(
    cohort_root, tmp_path: Path, capsys, monkeypatch, make, message
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cohort_root.parent.parent))
    weights = tmp_path / "resnet.pth"
    make(weights)
    run_dir = tmp_path / "run"
    assert main(["--preset", "smoke", "--weights", str(weights), "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not run_dir.exists()


@pytest.mark.slow  # the local Ray
@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--cpus-per-trial", "64"], "--cpus-per-trial 64: no node of the cluster has 64 CPU"),
        (["--address", "127.0.0.1:1"], "--address 127.0.0.1:1: no Ray cluster answers there"),
        (["--address", "ray://127.0.0.1:1"], "--address ray://127.0.0.1:1: no Ray cluster answers there"),
        (["--run-dir", "/proc/no-such-process/run"], "cannot be created"),
    ],
)
def test_a_study_the_cluster_cannot_run_is_refused_at_once(
    ray_local, cohort_root, tmp_path: Path, capsys, monkeypatch, argv, message
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cohort_root.parent.parent))
    run_dir = tmp_path / "run"
    started = time.monotonic()
    assert main(["--preset", "smoke", "--run-dir", str(run_dir), *argv]) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert not run_dir.exists()


@pytest.mark.slow  # a study process that starts its own Ray
def test_asking_for_a_gpu_on_a_machine_without_one_is_refused_and_leaves_nothing(cohort_root, tmp_path: Path):
    """Through the command line, with the local Ray it starts: refused in seconds, Ray shut
    down, no run directory (Ray's own files would have gone inside it)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env |= {"XDG_CACHE_HOME": str(cohort_root.parent.parent), "RAY_AUTH_MODE": "disabled"}
    run_dir = tmp_path / "run"
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "study.launch",
            "--preset",
            "smoke",
            "--gpus-per-trial",
            "1",
            "--run-dir",
            str(run_dir),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert time.monotonic() - started < 60
    assert done.returncode == 2, done.stderr[-2000:]
    assert (
        done.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --gpus-per-trial 1: no node of the cluster has 1 GPU")
    )
    assert not run_dir.exists()


def test_weights_fine_tuned_for_other_classes_load_the_encoder_and_train_the_head_afresh(tmp_path: Path):
    from study.config import load_config
    from study.model import initial_state

    torch.manual_seed(1)
    other = MedicalNetSegmentation(depth=10, n_classes=2, in_channels=1, width=0.125)
    torch.save(
        {"state_dict": {f"module.{k}": v for k, v in other.state_dict().items()}}, tmp_path / "two.pth"
    )
    config = load_config("smoke", overrides={"weights": str(tmp_path / "two.pth")})

    state, note = initial_state(config, n_classes=4)
    assert (
        "segmentation head trained afresh (the checkpoint's head has 2 outputs, this study needs 4)" in note
    )
    assert torch.equal(state["layer4.0.conv1.weight"], other.state_dict()["layer4.0.conv1.weight"])
    assert state["conv_seg.6.weight"].shape[0] == 4

    same = MedicalNetSegmentation(depth=10, n_classes=4, in_channels=3, width=0.125)
    torch.save({"state_dict": same.state_dict()}, tmp_path / "four.pth")
    state, note = initial_state(load_config("smoke", overrides={"weights": str(tmp_path / "four.pth")}), 4)
    assert "head loaded from the checkpoint" in note
    assert torch.equal(state["conv_seg.6.weight"], same.state_dict()["conv_seg.6.weight"])


@pytest.mark.slow  # the local Ray, and a 6 s wait
def test_on_an_autoscaling_cluster_the_study_waits_for_a_fitting_node_then_gives_up(ray_local, capsys):
    from study.config import StudyError, load_config
    from study.run.cluster import check_resources

    config = load_config("smoke", overrides={"trial_resources": {"tpu": 1.0}, "resource_wait_s": 6})
    started = time.monotonic()
    with pytest.raises(StudyError, match=r"trial_resources.tpu 1: no node of the cluster has 1 tpu"):
        check_resources(config)
    assert 6 <= time.monotonic() - started < 30
    assert "waiting up to 6 s for the autoscaler to add a node with CPU 1, tpu 1" in capsys.readouterr().out
    config.trial_resources = {}
    assert check_resources(config) == 2  # the fixture's Ray: two 1-CPU trials at a time


SETTINGS = {
    "a seed below 0": (["--seed", "-1"], "", "seed must lie in 0..4294967295, got -1"),
    "a seed numpy cannot take": (["--seed", str(2**32)], "", "seed must lie in 0..4294967295"),
    "a noise level above 1": (
        [],
        "[search_bounds]\nnoise_level = [0.5, 2]\n",
        "search_bounds.noise_level = [0.5, 2.0] leaves the range where noise_level means anything, [0, 1]",
    ),
    "a fraction of the weights below 0": (
        [],
        "[search_bounds]\nmask_ratio = [-0.5, 0.5]\n",
        "search_bounds.mask_ratio = [-0.5, 0.5] leaves the range where mask_ratio means anything, [0, 1]",
    ),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_settings_out_of_range_are_refused_before_anything_runs(
    cohort_root, tmp_path: Path, capsys, monkeypatch, case: str
):
    monkeypatch.setenv("XDG_CACHE_HOME", str(cohort_root.parent.parent))
    flags, toml, message = SETTINGS[case]
    config = tmp_path / "study.toml"
    config.write_text(toml)
    run_dir = tmp_path / "run"
    started = time.monotonic()
    assert main(["--preset", "smoke", "--config", str(config), "--run-dir", str(run_dir), *flags]) == 2
    assert time.monotonic() - started < 10  # before any training
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not run_dir.exists()


def test_every_searched_number_has_a_range_where_it_means_anything():
    from search_spaces import STRATEGIES, numeric_bounds
    from search_spaces.spaces import VALID_RANGES

    searched = numeric_bounds(entry.search for entry in STRATEGIES.values())
    assert set(searched) <= set(VALID_RANGES), set(searched) - set(VALID_RANGES)
    for name, (low, high, _) in searched.items():  # the default bounds lie inside
        assert VALID_RANGES[name][0] <= low < high <= VALID_RANGES[name][1], name


def test_a_damaged_model_in_the_cache_is_reported_and_trained_again(tmp_path: Path, capsys):
    from study.config import load_config
    from trainables.recipes import cache_file, load_cached, store

    config = load_config("smoke", overrides={"cache_dir": str(tmp_path)})
    store(config, "k1", {"w": torch.ones(3)}, {"dice": 0.5})
    assert load_cached(config, "k1")[1] == {"dice": 0.5}
    path = cache_file(config, "k1")
    path.write_bytes(path.read_bytes()[:100])  # cut off, as a full disk leaves it
    assert load_cached(config, "k1") is None  # so the caller trains it again
    out = capsys.readouterr().out
    assert f"the cached model {path} is damaged" in out and "training it again" in out
    assert not path.exists()


@pytest.mark.slow  # reads the session's smoke study
def test_a_deletion_request_with_a_file_for_its_output_folder_is_refused(smoke_study, tmp_path, capsys):
    from study.forget import main as forget

    taken = tmp_path / "audit.json"
    taken.write_text("an earlier record")
    subject = smoke_study.config.forget[0]
    assert forget([str(smoke_study.run_dir), "--subjects", subject, "--out", str(taken)]) == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {taken} is a file; --out names the folder the audit record is written to\n"
    assert taken.read_text() == "an earlier record"


@pytest.mark.slow  # reads the session's smoke study
def test_a_report_of_a_cut_off_results_table_is_refused_in_one_line(smoke_study, tmp_path, capsys):
    from analysis.report import main as report

    copy = tmp_path / "copy"
    shutil.copytree(smoke_study.run_dir, copy, ignore=shutil.ignore_patterns("ray"))
    table = copy / "trials.parquet"
    table.write_bytes(table.read_bytes()[:-200])
    assert report([str(copy), "--no-overlays"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {table} cannot be read (") and err.count("\n") == 1, err
    assert "the file is damaged; --resume the study to write it again" in err
