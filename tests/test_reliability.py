"""Interrupted drivers, killed workers, lost checkpoints: the study resumes and loses or
repeats nothing, or says which trial it could not finish."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pandas as pd
import pytest

from study.run.rundir import RunDir

pytestmark = pytest.mark.slow  # whole studies, killed and resumed


def _checkpoints(run_dir: Path) -> dict[Path, int]:
    """Each trial folder under the default storage, and the number of its newest checkpoint + 1
    (the epochs it has saved: the smoke preset checkpoints every epoch)."""
    found = {}
    for trial in Path(RunDir(run_dir).storage.experiment_path).glob("trial_*"):
        indices = [int(c.name.removeprefix("checkpoint_")) for c in trial.glob("checkpoint_*")]
        found[trial] = max(indices, default=-1) + 1
    return found


def _results_in_storage(run_dir: Path) -> dict[Path, str]:
    """Each trial's ``result.json`` as storage holds it (Tune syncs it there now and then, its
    checkpoints as they are made)."""
    return {
        p: p.read_text() for p in Path(RunDir(run_dir).storage.experiment_path).glob("trial_*/result.json")
    }


def _finished_and_running(run_dir: Path, epochs: int) -> bool:
    """One trial's every epoch is in storage's ``result.json``, and another trial is under way."""
    finished = any(len(text.splitlines()) == epochs for text in _results_in_storage(run_dir).values())
    return finished and any(2 <= n < epochs for n in _checkpoints(run_dir).values())


def test_sigterm_stops_the_study_like_ctrl_c_and_resume_finishes_it_without_rerunning_finished_trials(
    studies, tmp_path
):
    """SIGTERM, what Kubernetes sends a pod it deletes, takes Ctrl-C's path (``main`` raises
    SIGINT, Tune's handler saves and returns). A cut-off experiment state is then refused by
    name before Tune could start the study over; put back, the study finishes."""
    # Tune writes result files to storage with its experiment state: every second here, so a
    # finished trial's shows while another trial still runs (a smoke study lasts about 15 s).
    env, run_dir = studies.env(TUNE_GLOBAL_CHECKPOINT_S="1"), tmp_path / "run"
    driver = studies.start(run_dir, env=env)
    studies.wait_until(
        lambda: _finished_and_running(run_dir, studies.EPOCHS),
        driver,
        "one trial finished and another under way",
    )
    driver.send_signal(signal.SIGTERM)
    output, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, output[-3000:]
    assert f"resume with: python -m study.launch --resume {run_dir}" in output
    assert not RunDir(run_dir).trials_file.exists()
    finished = {
        p: text
        for p, text in _results_in_storage(run_dir).items()
        if len(text.splitlines()) == studies.EPOCHS
    }
    assert finished

    state = Path(RunDir(run_dir).storage.newest_experiment_state())
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])  # cut off, as a copy killed mid-file leaves it
    refused = studies.resume(run_dir, env)
    assert refused.returncode == 2, studies.told(refused)
    assert (
        refused.stderr.strip()
        .splitlines()[-1]
        .startswith(f"error: Tune's experiment state {state} is cut off")
    )
    assert (
        "Traceback" not in refused.stdout + refused.stderr and state.read_bytes() == whole[: len(whole) // 2]
    )
    state.write_bytes(whole)

    resumed = studies.resume(run_dir, env)
    assert resumed.returncode == 0, studies.told(resumed)
    studies.assert_complete(run_dir)
    for path, before in finished.items():  # not rerun: no epoch of a finished trial trained again
        after = path.read_text()
        assert after.startswith(before), f"{path} changed:\n{before[-600:]}\n---\n{after[-1200:]}"
        # Stopped between a trial's last report and Tune registering its checkpoint: the trial
        # resumes from the epoch before and reruns its last one (same seed, same figures).
        added = after[len(before) :].splitlines()
        assert all(json.loads(line)["epoch"] == studies.EPOCHS for line in added), added


def test_sigkill_right_after_a_checkpoint_loses_nothing_and_the_same_command_continues(studies, tmp_path):
    """Killing driver and Ray in the instant a trial writes a new checkpoint folder: the
    saved experiment state may still name the previous one, which must still exist. The
    job's one command (``--resume-or-start``, as a retried RayJob runs it) then continues
    the study, and refuses other settings."""
    env, run_dir = studies.env(), tmp_path / "run"
    driver = studies.start(run_dir, "--resume-or-start", env=env)
    studies.wait_until(
        lambda: any(n >= 3 for n in _checkpoints(run_dir).values()), driver, "three epochs of a trial"
    )
    before = _checkpoints(run_dir)
    deadline = time.monotonic() + 60
    while _checkpoints(run_dir) == before and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.communicate(timeout=60)
    assert not RunDir(run_dir).trials_file.exists()

    changed = studies.run(run_dir, "--resume-or-start", "--num-samples", "3", env=env)
    assert changed.returncode == 2, studies.told(changed)
    assert changed.stderr.strip().splitlines() == [
        f"error: --resume-or-start: the study in {run_dir} has other settings (num_samples: 2 -> 3); "
        "give the same ones, or choose another --run-dir"
    ]
    resumed = studies.run(run_dir, "--resume-or-start", env=env)
    assert resumed.returncode == 0, studies.told(resumed)
    assert resumed.stdout.startswith(f"resuming the study in {run_dir}")
    studies.assert_complete(run_dir)


def _unfinished_with_saved_checkpoints(run_dir: Path) -> list[Path]:
    """Folders of trials that Tune's saved state records as unfinished, with a checkpoint."""
    from ray.tune import ExperimentAnalysis

    try:
        trials = ExperimentAnalysis(RunDir(run_dir).storage.experiment_path).trials
    except (ValueError, OSError):
        return []
    return [Path(t.path) for t in trials if t.checkpoint is not None and t.status != "TERMINATED"]


def test_a_trial_whose_checkpoints_were_deleted_is_rerun_on_resume(studies, tmp_path):
    # Tune saves its experiment state every second, so one soon names a mid-trial checkpoint.
    env = studies.env(TUNE_GLOBAL_CHECKPOINT_S="1")
    for attempt in range(3):  # the kill may land just after a save that names none: try again
        run_dir = tmp_path / f"run{attempt}"
        driver = studies.start(run_dir, env=env)
        studies.wait_until(
            lambda d=run_dir: _unfinished_with_saved_checkpoints(d), driver, "a saved mid-trial state"
        )
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=60)
        if lost := _unfinished_with_saved_checkpoints(run_dir):  # what the state says now, for good
            break
    for trial in lost:
        for checkpoint in trial.glob("checkpoint_*"):
            shutil.rmtree(checkpoint)

    resumed = studies.resume(run_dir, env)
    output = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, output[-3000:]
    named = output.split("the checkpoints of trial(s) ")[1].split(" are gone")[0].split(", ")
    assert {f"trial_{t}" for t in named} == {trial.name for trial in lost}
    studies.assert_complete(run_dir)  # they ran again from epoch 1: every epoch once


def test_a_worker_killed_while_tune_saves_its_checkpoint_ends_with_exit_3_and_resume_completes_it(
    studies, tmp_path
):
    """The worker dies after Tune received a result with a checkpoint and before the save
    returned, with no retries left: Tune caches a STOP for the trial and saves it with its
    state. Restored as it is, that STOP ends the rerun trial TERMINATED after one epoch; the
    study drops it, so the trial continues from its last checkpoint to its last epoch."""
    marker = tmp_path / "killed"
    tests = str(Path(__file__).parent)  # kill_hooks.py, imported by the study's driver
    env = studies.env(PYTHONPATH=tests, KILL_MARKER=str(marker), KILL_AT_EPOCH="4")
    hooks = tmp_path / "hooks.toml"
    hooks.write_text('max_failures = 0\ntune_callbacks = ["kill_hooks:KillAfterCheckpointResult"]\n')
    run_dir = tmp_path / "run"
    driver = studies.start(run_dir, "--config", str(hooks), env=env)
    output, _ = driver.communicate(timeout=400)

    # The other trials finish; the study writes what it has, names the failed trial, exits 3.
    assert driver.returncode == 3, output[-3000:]
    killed = marker.read_text()
    failed = re.search(
        r"incomplete: 1 trial\(s\) did not finish: trial (\w+) \((\w+), failed after epoch 4 of", output
    )
    assert failed and failed[1] == killed, output[-3000:]
    assert f"Resume with: python -m study.launch --resume {run_dir}" in output
    trials = pd.read_parquet(RunDir(run_dir).trials_file)
    assert set(trials[trials["trial_id"] == killed]["status"]) == {"error"}
    assert f"trial {killed}: {failed[2]}, failed after epoch" in RunDir(run_dir).report_html.read_text()
    saved = json.loads(Path(RunDir(run_dir).storage.newest_experiment_state()).read_text())
    assert saved["runner_data"]["_cached_trial_decisions"] == {killed: "STOP"}  # what Tune left

    resumed = studies.resume(run_dir, env)
    assert resumed.returncode == 0, studies.told(resumed)
    assert f"dropped Tune's saved decisions for trial(s) {killed} (STOP)" in resumed.stdout
    studies.assert_complete(run_dir)
    # It continued from its checkpoint (epoch 3: epoch 4's save never returned), not from scratch.
    assert "from checkpoint" in resumed.stdout + resumed.stderr
    result = next(Path(RunDir(run_dir).storage.experiment_path).glob(f"trial_{killed}/result.json"))
    epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines()]
    assert epochs == [*range(1, 5), *range(4, studies.EPOCHS + 1)], epochs
