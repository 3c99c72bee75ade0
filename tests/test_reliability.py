"""Interrupted drivers and killed workers: the study resumes and loses or repeats nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest

EPOCHS = 12


def _env(cache_home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {"XDG_CACHE_HOME": str(cache_home), "RAY_AUTH_MODE": "disabled"}


def _start(run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    args = ["--preset", "smoke", "--max-epochs", str(EPOCHS), "--horizons", f"{EPOCHS // 2},{EPOCHS}"]
    return subprocess.Popen(
        [sys.executable, "-m", "study.launch", *args, "--run-dir", str(run_dir), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the driver and the Ray it starts
    )


def _wait_for_epochs(
    run_dir: Path, epochs: int, process: subprocess.Popen, strategy: str = "*", timeout: float = 180
) -> None:
    """Waits until some trial (of ``strategy``) has reported ``epochs`` epochs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        results = run_dir.glob(f"ray_results/{strategy}/trial_*/result.json")
        counts = [len(p.read_text().splitlines()) for p in results]
        if counts and max(counts) >= epochs:
            return
        assert process.poll() is None, process.stdout.read()
        time.sleep(0.5)
    raise AssertionError(f"no trial reached {epochs} epochs in {timeout} s")


def _assert_complete(run_dir: Path) -> None:
    trials = pd.read_parquet(run_dir / "trials.parquet")
    assert len(trials) == 2 * 2 * EPOCHS  # 2 strategies x 2 trials x every epoch, once each
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert set(trials["status"]) == {"terminated"}
    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    for strategy in ("noisy_label", "max_loss"):
        study = optuna.load_study(study_name=strategy, storage=storage)
        assert [t.state for t in study.trials].count(optuna.trial.TrialState.COMPLETE) == 2
    assert (run_dir / "report.html").is_file()


@pytest.mark.parametrize("how", ["SIGINT to the driver", "SIGKILL to driver and Ray"])
def test_an_interrupted_study_resumes_without_losing_or_repeating_epochs(cache_home, tmp_path, how):
    env, run_dir = _env(cache_home), tmp_path / "run"
    driver = _start(run_dir, env)
    _wait_for_epochs(run_dir, 3, driver, strategy="max_loss")  # noisy_label's trials are done
    finished = {p: p.read_text() for p in run_dir.glob("ray_results/noisy_label/trial_*/result.json")}
    if how.startswith("SIGINT"):
        driver.send_signal(signal.SIGINT)
        output, _ = driver.communicate(timeout=120)
        assert driver.returncode == 130, output
        assert f"resume with: python -m study.launch --resume {run_dir}" in output
    else:
        os.killpg(driver.pid, signal.SIGKILL)
        driver.communicate(timeout=60)
    assert not (run_dir / "trials.parquet").exists()

    resumed = subprocess.run(
        [sys.executable, "-m", "study.launch", "--resume", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        start_new_session=True,
    )
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    _assert_complete(run_dir)
    assert len(finished) == 2
    assert all(path.read_text() == text for path, text in finished.items())  # not rerun


def test_a_killed_trial_worker_restarts_from_its_checkpoint(cache_home, tmp_path):
    env, run_dir = _env(cache_home), tmp_path / "run"
    driver = _start(run_dir, env)
    _wait_for_epochs(run_dir, 5, driver)
    # Trial workers run in sessions of their own, as children of this study's raylet.
    pgrep = lambda *args: subprocess.run(["pgrep", *args], capture_output=True, text=True).stdout.split()  # noqa: E731
    raylets = pgrep("-g", str(os.getpgid(driver.pid)), "-f", "raylet/raylet")
    workers = [w for raylet in raylets for w in pgrep("-P", raylet, "-f", "ImplicitFunc")]
    assert workers, "no trial worker process found"
    os.kill(int(workers[0]), signal.SIGKILL)
    output, _ = driver.communicate(timeout=600)
    assert driver.returncode == 0, output[-3000:]
    _assert_complete(run_dir)
    # Restarted from its checkpoint, not from scratch: at most the epoch in flight is rerun.
    assert "from checkpoint" in output
    for result in run_dir.glob("ray_results/*/trial_*/result.json"):
        epochs = [json.loads(line)["epoch"] for line in result.read_text().splitlines()]
        assert len(epochs) - len(set(epochs)) <= 1
