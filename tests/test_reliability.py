"""A killed worker: the study says which trial it could not finish, and resumes it losing or
repeating nothing. (A killed driver and cluster: test_cluster; stop signals, cut-off states
and lost checkpoints: test_portable.)"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from study.run.rundir import RunDir

pytestmark = pytest.mark.slow  # a whole study, killed and resumed


def test_a_worker_killed_while_tune_saves_its_checkpoint_ends_with_exit_3_and_resume_completes_it(
    studies, tmp_path
):
    """The worker dies after Tune received a result with a checkpoint and before the save
    returned, with no retries left: Tune caches a STOP for the trial and saves it with its
    state. Restored as it is, that STOP ends the rerun trial TERMINATED after one epoch; the
    study drops it, so the trial continues from its last checkpoint to its last epoch."""
    studies.EPOCHS = 8  # the kill comes at epoch 4 of one trial, whatever the machine's speed
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
