"""Running ``python -m study.launch`` as a user would, in its own process group, for the
tests that kill, resume or join clusters, and reading back what the study stored."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd

from study.run.rundir import RunDir

EPOCHS = 12  # long enough to interrupt a trial in the middle, short enough for the suite


def study_env(cache_home: Path, **extra: str) -> dict[str, str]:
    """The environment of a study process: the tests' cache, no inherited cluster address."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return env | {"XDG_CACHE_HOME": str(cache_home), "RAY_AUTH_MODE": "disabled"} | extra


def start_study(run_dir: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    """A smoke study of ``EPOCHS`` epochs per trial, started in the background."""
    args = ["--preset", "smoke", "--max-epochs", str(EPOCHS), "--horizons", f"{EPOCHS // 2},{EPOCHS}"]
    return subprocess.Popen(
        [sys.executable, "-m", "study.launch", *args, "--run-dir", str(run_dir), *extra],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the driver and any Ray it starts
    )


def resume_study(run_dir: Path, env: dict[str, str], timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "study.launch", "--resume", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        start_new_session=True,
    )


def wait_until(
    condition: Callable[[], bool], process: subprocess.Popen, what: str, timeout: float = 240
) -> None:
    """Polls ``condition`` until it holds; fails if ``process`` ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process.poll() is not None:
            raise AssertionError(f"the study ended before {what}:\n{process.stdout.read()[-3000:]}")
        time.sleep(0.3)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def assert_complete(run_dir: Path, strategies: tuple[str, ...] = ("noisy_label", "max_loss")) -> pd.DataFrame:
    """Every (trial, epoch) of the smoke study once, every trial finished, Optuna's studies clean."""
    trials = pd.read_parquet(RunDir(run_dir).trials_file)
    assert len(trials) == len(strategies) * 2 * EPOCHS  # 2 trials per strategy, every epoch once
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert set(trials["status"]) == {"terminated"}
    storage = f"sqlite:///{run_dir / 'optuna.db'}"
    for strategy in strategies:
        study = optuna.load_study(study_name=strategy, storage=storage)
        states = [t.state for t in study.trials]
        assert states.count(optuna.trial.TrialState.COMPLETE) == 2
        # no trial queued or asked for and then forgotten
        assert optuna.trial.TrialState.WAITING not in states and optuna.trial.TrialState.RUNNING not in states
        starts = [t for t in study.trials if t.state.name == "COMPLETE" and t.params.get("lr") == 3e-4]
        assert len(starts) == 1  # the hand-picked start ran exactly once
    assert RunDir(run_dir).report_html.is_file()
    return trials
