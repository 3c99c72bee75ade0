"""Shared fixtures: a synthetic cohort written once per session, a real local Ray, a tiny
network, and ``python -m study.launch`` run as a user would, in a process of its own."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import optuna
import pandas as pd
import pytest
import ray.cloudpickle
import toy_strategy

# Token authentication is for real clusters; a test's throwaway local Ray runs without it.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that needs the real local Ray (``ray_local``) is ``slow``, in whichever file it is:
    starting Ray alone takes several seconds. Other slow tests carry the marker themselves."""
    for item in items:
        if "ray_local" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def cache_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An ``XDG_CACHE_HOME`` holding the default synthetic cohort, as ``study.launch`` lays it out."""
    from study.cohort import synthetic

    home = tmp_path_factory.mktemp("cache")
    synthetic.write_cohort(synthetic.cohort_folder(home / "mri-unlearning-study"))
    return home


@pytest.fixture(scope="session")
def cohort_root(cache_home: Path) -> Path:
    """The folder of the synthetic cohort, in MRBrainS18's layout (10 subjects)."""
    from study.cohort import synthetic

    return synthetic.cohort_folder(cache_home / "mri-unlearning-study")


@pytest.fixture
def cache_env(cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """This process's cache is the tests' (``XDG_CACHE_HOME``): the cohort is written already."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_home))
    return cache_home


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray with 2 CPUs, temporary files in a short folder (Unix socket limit)."""
    temp_dir = tempfile.mkdtemp(prefix="ray-")
    ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp_dir, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def tiny_cohort(cohort_root: Path):
    """Forget 070, retain 1 and 4, holdout 101, preprocessed to 8 x 32 x 32."""
    from study.cohort import find_subjects, load_cohort, resolve_split

    split = resolve_split(find_subjects(cohort_root), ["070"], ["1", "4"], ["101"], "test")
    return load_cohort(cohort_root, split, (8, 32, 32), "4class")


@pytest.fixture
def tiny_model() -> Callable:
    """Builds the smoke preset's network (ResNet-10, width 0.125, 4 classes), the same
    initialisation every time it is called."""
    import torch

    from study.model import MedicalNetSegmentation

    def build():
        torch.manual_seed(0)
        return MedicalNetSegmentation(depth=10, n_classes=4, width=0.125)

    return build


@pytest.fixture
def synthetic_evidence() -> Callable:
    """``synthetic_evidence(seed)``: membership ``Evidence`` of made-up reference models on
    subjects s0..s9, of whom s0 and s1 are forgotten: the original, three retrain seeds and
    eight shadow models. A subject's statistic is its own level, +1.5 when trained on, noise
    0.3; its Dice 0.7, +0.1 when trained on, noise 0.01."""
    import numpy as np

    from study.metrics.evidence import Evidence
    from study.metrics.membership import shadow_subsets

    subjects = [f"s{i}" for i in range(10)]

    def made(seed: int) -> Evidence:
        rng = np.random.default_rng(seed)
        level = {s: rng.normal(0, 1) for s in subjects}
        retained = frozenset(subjects[2:])
        members = {"original": frozenset(subjects), "retrain": retained}
        members |= {f"retrain_seed_{k}": retained for k in (1, 2)}
        members |= {f"shadow_{m}": frozenset(s) for m, s in enumerate(shadow_subsets(subjects, 8, 0))}
        trained = {m: {s: s in inside for s in subjects} for m, inside in members.items()}
        statistics = {
            m: {s: level[s] + 1.5 * t + 0.3 * rng.normal() for s, t in row.items()}
            for m, row in trained.items()
        }
        dice = {
            m: {s: 0.7 + 0.1 * t + 0.01 * rng.normal() for s, t in row.items()} for m, row in trained.items()
        }
        return Evidence(statistics, dice, members)

    return made


@pytest.fixture
def toy_registered() -> Iterator[None]:
    """The toy strategies registered as a built-in is; shipped to Ray's workers by value."""
    from search_spaces import STRATEGIES, register

    register(toy_strategy.ToyBackground, toy_strategy.toy_background)
    register(toy_strategy.ToyNaN, toy_strategy.toy_nan)
    ray.cloudpickle.register_pickle_by_value(toy_strategy)
    yield
    ray.cloudpickle.unregister_pickle_by_value(toy_strategy)
    del STRATEGIES["toy_background"], STRATEGIES["toy_nan"]


class StudyProcesses:
    """``python -m study.launch`` run as a user would, in its own process group (for the tests
    that kill, resume or join clusters), and what the study stored, read back."""

    EPOCHS = 12  # long enough to interrupt a trial in the middle, short enough for the suite

    def __init__(self, cache_home: Path) -> None:
        self.cache_home = cache_home

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of a study process: the tests' cache, no inherited cluster address."""
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        return env | {"XDG_CACHE_HOME": str(self.cache_home), "RAY_AUTH_MODE": "disabled"} | extra

    def command(self, run_dir: Path, *extra: str) -> list[str]:
        """``python -m study.launch`` for a smoke study of ``EPOCHS`` epochs per trial in ``run_dir``."""
        epochs = ["--max-epochs", str(self.EPOCHS), "--horizons", f"{self.EPOCHS // 2},{self.EPOCHS}"]
        launch = [sys.executable, "-m", "study.launch", "--preset", "smoke"]
        return [*launch, *epochs, "--run-dir", str(run_dir), *extra]

    def start(self, run_dir: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen:
        """That study, started in the background."""
        return subprocess.Popen(
            self.command(run_dir, *extra),
            env=env or self.env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: the driver and any Ray it starts
        )

    def run(
        self, run_dir: Path, *extra: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess:
        """That study, run to its end."""
        return self._finished(self.command(run_dir, *extra), env)

    def resume(
        self, run_dir: Path, env: dict[str, str] | None = None, *extra: str
    ) -> subprocess.CompletedProcess:
        """``python -m study.launch --resume run_dir *extra``, run to its end."""
        return self._finished([sys.executable, "-m", "study.launch", "--resume", str(run_dir), *extra], env)

    def _finished(self, argv: list[str], env: dict[str, str] | None) -> subprocess.CompletedProcess:
        return subprocess.run(
            argv,
            env=env or self.env(),
            capture_output=True,
            text=True,
            timeout=420,
            start_new_session=True,
        )

    @staticmethod
    def told(done: subprocess.CompletedProcess) -> str:
        """What a finished study said, for a failed assertion: the CLI's own verdict lines
        (``error:``, ``incomplete:``, ``interrupted``), Tune's lines on trials, and the tails of
        both streams (a crashing Ray worker's dump would otherwise hide the cause)."""
        ours = [
            line
            for line in (done.stdout + done.stderr).splitlines()
            if line.startswith(("error:", "incomplete:", "interrupted"))
            or ("Trial " in line and any(w in line for w in ("completed", "errored", "failed")))
        ]
        return "\n".join([*ours, "--- stdout:", done.stdout[-2000:], "--- stderr:", done.stderr[-1500:]])

    @staticmethod
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

    def assert_complete(
        self, run_dir: Path, strategies: tuple[str, ...] = ("noisy_label", "max_loss")
    ) -> pd.DataFrame:
        """Every (trial, epoch) of the smoke study once, every trial finished, Optuna's studies clean."""
        from search_spaces.searcher import RunStorage
        from study.run.rundir import RunDir

        run = RunDir(run_dir)
        trials = pd.read_parquet(run.trials_file)
        assert len(trials) == len(strategies) * 2 * self.EPOCHS  # 2 trials per strategy, every epoch once
        assert not trials.duplicated(["trial_id", "epoch"]).any()
        assert set(trials["status"]) == {"terminated"}
        for strategy in strategies:
            study = optuna.load_study(study_name=strategy, storage=RunStorage(run.optuna_journal))
            states = [t.state for t in study.trials]
            assert states.count(optuna.trial.TrialState.COMPLETE) == 2
            # no trial queued or asked for and then forgotten
            assert (
                optuna.trial.TrialState.WAITING not in states
                and optuna.trial.TrialState.RUNNING not in states
            )
            starts = [t for t in study.trials if t.state.name == "COMPLETE" and t.params.get("lr") == 3e-4]
            assert len(starts) == 1  # the hand-picked start ran exactly once
        assert run.report_html.is_file()
        return trials


@pytest.fixture
def studies(cache_home: Path) -> StudyProcesses:
    """Starts, resumes and checks smoke studies in processes of their own."""
    return StudyProcesses(cache_home)


class SmokeStudy:
    """A finished smoke study, run through ``python -m study.launch``'s entry point on the
    tests' local Ray, with the reruns of its recommendation on (off in the preset)."""

    def __init__(self, run_dir: Path, code: int, output: str) -> None:
        from study.run.rundir import RunDir

        self.run_dir, self.code, self.output = run_dir, code, output
        self.run, self.config = RunDir.open(run_dir)
        self.trials = pd.read_parquet(self.run.trials_file)


@pytest.fixture(scope="session")
def smoke_study(ray_local, cache_home: Path, tmp_path_factory: pytest.TempPathFactory) -> SmokeStudy:
    """The smoke study (2 strategies x 2 trials x 2 epochs, 2 fresh seeds, both other
    bn_modes, MRBrainS18's scoring at the end), run once for every test that reads it."""
    import contextlib
    import io

    from study.launch import main

    folder = tmp_path_factory.mktemp("smoke-study")
    reruns = folder / "reruns.toml"
    reruns.write_text("seed_reruns = 2\nbn_mode_reruns = true\nnative_scores = true\n")
    output = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(output):
        patch.setenv("XDG_CACHE_HOME", str(cache_home))
        code = main(["--preset", "smoke", "--config", str(reruns), "--run-dir", str(folder / "run")])
    return SmokeStudy(folder / "run", code, output.getvalue())
