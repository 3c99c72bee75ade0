"""A run directory is a portable record with one writer: a copy resumes as its own study and
never touches the original, a moved one resumes where it is, two drivers never share one,
and a stop signal in any phase ends the driver with the command that resumes it."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from study.config import StudyError
from study.run.lock import Holder, OwnerRecord
from study.run.rundir import RunDir


def _hashes(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder``, by relative path."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


# A driver of a new study in argv[1] that waits for the file argv[2] before it takes the run
# directory (so that two of them race to it within a millisecond), then holds it until its
# stdin closes.
DRIVER = """
import sys, time
from pathlib import Path
from study.config import StudyError
from study.run.rundir import RunDir

run, go = RunDir(Path(sys.argv[1])), Path(sys.argv[2])
print("ready", flush=True)
while not go.exists():
    time.sleep(0.001)
try:
    with run.driving(resuming=False) as set_up:
        run.write_identity()
        set_up()
        print("driving", flush=True)
        sys.stdin.readline()
except StudyError as error:
    print(f"error: {error}", flush=True)
    sys.exit(2)
"""


def _drivers(run_dir: Path, go: Path, n: int = 2) -> list[subprocess.Popen]:
    return [
        subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(run_dir), str(go)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(n)
    ]


@pytest.mark.slow  # 20 processes
def test_two_drivers_racing_to_one_new_run_directory_one_drives_the_other_is_told_who(tmp_path: Path):
    """Run 10 times: each time exactly one takes the directory and the other exits 2 naming it."""
    for attempt in range(10):
        run_dir, go = tmp_path / f"run{attempt}", tmp_path / f"go{attempt}"
        drivers = _drivers(run_dir, go)
        assert [d.stdout.readline().strip() for d in drivers] == ["ready", "ready"]  # imported, waiting
        go.touch()
        lines = {d.pid: d.stdout.readline().strip() for d in drivers}
        winners = [d for d in drivers if lines[d.pid] == "driving"]
        assert len(winners) == 1, lines
        (loser,) = [d for d in drivers if d is not winners[0]]
        assert loser.wait(timeout=10) == 2
        assert lines[loser.pid].startswith(f"error: run directory {run_dir} is in use by another driver (")
        assert f"pid {winners[0].pid} on {socket.gethostname()} since " in lines[loser.pid]
        winners[0].communicate("\n", timeout=10)
        assert winners[0].returncode == 0
        assert RunDir(run_dir).identity()["experiment"] == run_dir.name  # the winner's study, whole


def test_a_lock_left_by_a_killed_driver_is_taken_over_with_a_message(tmp_path: Path, capsys):
    run_dir, go = tmp_path / "run", tmp_path / "go"
    go.touch()
    (driver,) = _drivers(run_dir, go, n=1)
    assert [driver.stdout.readline().strip() for _ in "12"] == ["ready", "driving"]
    driver.kill()  # SIGKILL: no cleanup; the kernel drops its flock
    driver.wait()
    with RunDir(run_dir).driving(resuming=True) as set_up:
        set_up()
        out = capsys.readouterr().out
        assert f"the run directory's lock was left by a driver that is gone (pid {driver.pid} on " in out
        refused = pytest.raises(StudyError, match=rf"is in use by another driver \(pid {os.getpid()} on")
        with refused, RunDir(run_dir).driving(resuming=True):
            pass  # a second driver in this very process is refused too
    with RunDir(run_dir).driving(resuming=True):  # released at the end: free, and no message
        assert "taking it over" not in capsys.readouterr().out


def test_a_copy_sharing_its_originals_storage_is_refused_and_a_moved_one_takes_it_over(
    tmp_path: Path, capsys
):
    shared = tmp_path / "shared"
    original = RunDir(tmp_path / "study", str(shared))
    original.path.mkdir()
    original.write_identity()
    with original.owning_experiment():
        record = OwnerRecord.from_bytes(original.storage.read_owner_record())
        assert record.driver is not None and record.driver.pid == os.getpid()
        assert record.run_dir == str(original.path.resolve())
    assert OwnerRecord.from_bytes(original.storage.read_owner_record()).driver is None  # released

    copy = RunDir(tmp_path / "copy" / "study", str(shared))
    shutil.copytree(original.path, copy.path)
    refused = pytest.raises(StudyError, match=rf"this run directory is a copy of {original.path.resolve()}")
    with refused, copy.owning_experiment():
        pass
    original.path.rename(tmp_path / "elsewhere")  # now the copy is the only one: a move
    with copy.owning_experiment():
        assert f"the run directory moved here from {original.path.resolve()}" in capsys.readouterr().out
    assert OwnerRecord.from_bytes(copy.storage.read_owner_record()).run_dir == str(copy.path.resolve())


def test_an_experiment_last_run_from_another_host_or_driven_now_is_not_taken_silently(tmp_path: Path):
    shared = tmp_path / "shared"
    run = RunDir(tmp_path / "study", str(shared))
    run.path.mkdir()
    run.write_identity()
    study_id = run.identity()["study_id"]
    fs_path = Path(run.storage.experiment_path)
    fs_path.mkdir(parents=True)
    record = OwnerRecord(study_id, "head-node-7", "/home/ray/runs/study")
    (fs_path / "study-owner.json").write_bytes(record.to_bytes())
    refused = pytest.raises(
        StudyError, match=r"belongs to the run directory head-node-7:/home/ray/runs/study"
    )
    with refused, run.owning_experiment():
        pass
    with run.owning_experiment(claim=True):  # --storage given as saved: it moved here
        pass

    sleeper = subprocess.Popen(["sleep", "30"])  # a live driver of another run directory, on this host
    try:
        busy = OwnerRecord(
            study_id, "x", "/elsewhere", Holder(socket.gethostname(), sleeper.pid, "then"), time.time()
        )
        (fs_path / "study-owner.json").write_bytes(busy.to_bytes())
        refused = pytest.raises(StudyError, match=rf"is in use by another driver \(pid {sleeper.pid} on")
        with refused, run.owning_experiment(claim=True):
            pass
        far = OwnerRecord(study_id, "x", "/elsewhere", Holder("far-host", 1, "then"), time.time() - 600)
        (fs_path / "study-owner.json").write_bytes(far.to_bytes())
        with run.owning_experiment(claim=True):  # its heartbeat stopped ten minutes ago: gone
            pass
    finally:
        sleeper.kill()


class _Driver:
    """A study process whose output is read as it comes, to stop it in a chosen phase."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.process.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, marker: str, then: Callable[[], bool] = lambda: True) -> None:
        """Returns once a line starts with ``marker`` and ``then()`` holds."""
        deadline = time.monotonic() + 300
        while not (any(line.startswith(marker) for line in self.lines) and then()):
            assert self.process.poll() is None, "".join(self.lines)[-3000:]
            assert time.monotonic() < deadline, f"no {marker!r} within 300 s"
            time.sleep(0.05)

    def stop_at(
        self, marker: str, sig: int, then: Callable[[], bool] = lambda: True
    ) -> tuple[int, str, float]:
        """Sends ``sig`` once a line starts with ``marker`` and ``then()`` holds; ``(exit code,
        output, seconds from the signal to the exit)``."""
        self.wait_for(marker, then)
        self.process.send_signal(sig)
        sent = time.monotonic()
        code = self.process.wait(timeout=120)
        self._reader.join(timeout=10)
        return code, "".join(self.lines), time.monotonic() - sent


def _saved_epochs(run_dir: Path) -> int:
    """The most checkpoints any trial has in the run directory's storage."""
    if not RunDir(run_dir).config_file.is_file():
        return 0
    trials = Path(RunDir.open(run_dir)[0].storage.experiment_path).glob("trial_*")
    return max((len(list(t.glob("checkpoint_*"))) for t in trials), default=0)


def _stopped_mid_search(studies, run_dir: Path, env: dict[str, str], *extra: str, sig=signal.SIGINT) -> None:
    """A smoke study started in ``run_dir`` and stopped by ``sig`` with trials half done;
    meanwhile a ``--resume`` beside it is refused, naming the driver."""
    driver = _Driver(studies.command(run_dir, *extra), env)
    driver.wait_for("== baselines")  # it holds the run directory now
    beside = subprocess.run(
        [sys.executable, "-m", "study.launch", "--resume", str(run_dir)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert beside.returncode == 2, beside.stdout[-2000:] + beside.stderr[-2000:]
    assert beside.stderr.strip().splitlines() == [
        f"error: run directory {run_dir} is in use by another driver (pid {driver.process.pid} on "
        f"{socket.gethostname()} since {json.loads(RunDir(run_dir).lock_file.read_text())['since']}); "
        "wait for it to end, or stop it first"
    ]
    code, output, _ = driver.stop_at("== search", sig, lambda: _saved_epochs(run_dir) >= 2)
    assert code == 130, output[-3000:]
    assert f"resume with: python -m study.launch --resume {run_dir}" in output
    assert not RunDir(run_dir).trials_file.exists()


@pytest.mark.slow  # a study stopped, copied, moved and resumed twice
def test_a_copied_run_directory_resumes_as_its_own_study_and_a_moved_one_where_it_is(studies, tmp_path):
    studies.EPOCHS = 30  # the trials outlast a --resume started beside them
    env, run_dir = studies.env(), tmp_path / "run"
    _stopped_mid_search(studies, run_dir, env)
    before = _hashes(run_dir)

    copy = tmp_path / "José" / "copy"  # a path that is not ASCII, too
    shutil.copytree(run_dir, copy)
    resumed = studies.resume(copy, env)
    assert resumed.returncode == 0, studies.told(resumed)
    studies.assert_complete(copy)
    assert _hashes(run_dir) == before  # the original: not one byte changed

    moved = tmp_path / "moved"
    run_dir.rename(moved)
    resumed = studies.resume(moved, env)
    assert resumed.returncode == 0, studies.told(resumed)
    studies.assert_complete(moved)

    again = studies.resume(moved, env)  # finished: says so, changes nothing
    assert again.returncode == 0 and "finished at" in again.stdout and "nothing to resume" in again.stdout


@pytest.mark.slow  # a study on storage outside its run directory, stopped, copied and resumed
def test_a_copy_sharing_storage_with_its_original_is_refused_until_given_its_own(studies, tmp_path):
    studies.EPOCHS = 30  # the trials outlast a --resume started beside them
    env, run_dir, shared = studies.env(), tmp_path / "run", tmp_path / "shared"
    _stopped_mid_search(studies, run_dir, env, "--storage", str(shared), sig=signal.SIGTERM)
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    before = _hashes(run_dir) | {f"shared/{k}": v for k, v in _hashes(shared).items()}

    refused = studies.resume(copy, env)
    assert refused.returncode == 2, studies.told(refused)
    assert refused.stderr.strip().splitlines() == [
        f"error: this run directory is a copy of {run_dir}, whose experiment in {shared} it would share; "
        "resume the copy with its own --storage (the experiment is copied there), or resume the original"
    ]
    own = tmp_path / "own"
    resumed = studies.resume(copy, env, "--storage", str(own))
    assert resumed.returncode == 0, studies.told(resumed)
    assert f"copying the experiment from {shared} to {own}" in resumed.stdout
    studies.assert_complete(copy)
    assert RunDir.open(copy)[1].storage == str(own)
    assert _hashes(run_dir) | {f"shared/{k}": v for k, v in _hashes(shared).items()} == before


@pytest.mark.slow  # one study stopped in each of its phases and resumed each time
@pytest.mark.parametrize("first", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT-first", "SIGTERM-first"])
def test_a_stop_signal_in_any_phase_ends_the_driver_and_the_resume_command_finishes_the_study(
    studies, tmp_path, first
):
    """Phases alternate the signals; the other parametrisation swaps them, so each phase
    meets both. Before the run directory holds a study, nothing is kept and the same
    command starts again; after, the resume command redoes the phase that was cut."""
    env, run_dir = studies.env(TUNE_GLOBAL_CHECKPOINT_S="1"), tmp_path / "run"
    other = signal.SIGTERM if first == signal.SIGINT else signal.SIGINT
    start = studies.command(run_dir, "--seed-reruns", "1")
    resume = [sys.executable, "-m", "study.launch", "--resume", str(run_dir)]
    phases = [  # (command, the line to stop at, what must hold too)
        (start, "", lambda: True),  # while Python loads torch and Ray
        (start, "== cohort", lambda: True),
        (start, "== baselines", lambda: True),
        (resume, "== search", lambda: _saved_epochs(run_dir) >= 2),
        (resume, "== reruns", lambda: True),
        (resume, "== report", lambda: True),
    ]
    for n, (argv, marker, then) in enumerate(phases):
        sig = first if n % 2 == 0 else other
        code, output, took = _Driver(argv, env).stop_at(marker, sig, then)
        assert code == 130, f"{marker or 'start'}: {output[-3000:]}"
        assert "Traceback" not in output and took < 60, (marker, took)
        told = output.strip().splitlines()[-1]
        if RunDir(run_dir).config_file.is_file():
            assert told == f"interrupted: resume with: python -m study.launch --resume {run_dir}", marker
        else:  # a new study stopped before its run directory held it: nothing left behind
            assert told.endswith("nothing was kept: run the same command again") and not run_dir.exists()
    done = studies.resume(run_dir, env)
    assert done.returncode == 0, studies.told(done)
    trials = studies.assert_complete(run_dir)
    seeds = RunDir(run_dir).read_seed_runs()
    assert (
        seeds is not None
        and not seeds.empty
        and not seeds.duplicated(["trial_id", "forget", "seed", "epoch"]).any()
    )
    assert len(trials) == 2 * 2 * studies.EPOCHS
