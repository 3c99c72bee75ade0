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
from pathlib import Path

import pytest

from study.config import StudyError, load_config
from study.run.lock import Holder, OwnerRecord
from study.run.rundir import RunDir
from trainables.checkpoints import saved_trials, unfinished_trials


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
from study.config import StudyError, load_config
from study.run.rundir import RunDir
from trainables.checkpoints import unfinished_trials

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
    """Three races (the suite's share; see the README for the loop of ten): each time exactly
    one takes the directory and the other exits 2 naming it."""
    for attempt in range(3):
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


def test_a_new_study_on_a_directory_a_live_driver_has_set_up_names_that_driver(tmp_path: Path):
    """The loser of a race that looks late (the winner has written its study already) is told
    who drives it, not to resume it; once that driver ends, it is told to resume."""
    run_dir, go = tmp_path / "run", tmp_path / "go"
    go.touch()
    (driver,) = _drivers(run_dir, go, n=1)
    assert [driver.stdout.readline().strip() for _ in "12"] == ["ready", "driving"]
    lock_before = (run_dir / "driver.lock").read_bytes()
    in_use = pytest.raises(StudyError, match=rf"is in use by another driver \(pid {driver.pid} on ")
    with in_use, RunDir(run_dir).driving(resuming=False):
        pass
    assert (run_dir / "driver.lock").read_bytes() == lock_before  # the probe wrote nothing
    driver.communicate("\n", timeout=10)
    with pytest.raises(StudyError, match="already exists; pass --resume"), RunDir(run_dir).driving(False):
        pass
    with RunDir(run_dir).driving(resuming=True) as set_up:  # and the study is whole for its resume
        set_up()
    assert RunDir(run_dir).identity()["experiment"] == run_dir.name


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


def _saved_epochs(run_dir: Path) -> int:
    """The most checkpoints any trial has in the run directory's storage."""
    if not RunDir(run_dir).config_file.is_file():
        return 0
    trials = Path(RunDir.open(run_dir)[0].storage.experiment_path).glob("trial_*")
    return max((len(list(t.glob("checkpoint_*"))) for t in trials), default=0)


def _launch(
    monkeypatch, capsys, argv: list[str], stop_at: str = "", sig: int = signal.SIGINT, when=lambda: True
) -> tuple[int, str]:
    """``python -m study.launch`` 's ``main(argv)`` in this process, on the tests' Ray; with
    ``stop_at``, ``sig`` comes to this process (from another thread, as a Ctrl-C or
    Kubernetes' SIGTERM does) once that phase has started and ``when()`` holds. Returns the
    exit code and the last line on stderr; ``_launch.out`` is what it printed."""
    import study.launch as launch

    announce = launch.phase

    def phase(name: str, what: str) -> None:
        announce(name, what)
        if name == stop_at:

            def send() -> None:
                while not when():
                    time.sleep(0.05)
                os.kill(os.getpid(), sig)

            threading.Thread(target=send, daemon=True).start()

    monkeypatch.setattr(launch, "phase", phase)
    code = launch.main(argv)
    time.sleep(0.2 if stop_at else 0)  # a signal sent as the study ended has arrived by now
    monkeypatch.setattr(launch, "phase", announce)
    said = capsys.readouterr()
    _launch.out = said.out
    err = said.err.strip()
    return code, err.splitlines()[-1] if err else ""


def _stopped_mid_search(monkeypatch, capsys, argv: list[str], run_dir: Path, sig: int) -> None:
    code, told = _launch(monkeypatch, capsys, argv, "search", sig, lambda: _saved_epochs(run_dir) >= 2)
    assert (code, told) == (130, f"interrupted: resume with: python -m study.launch --resume {run_dir}")
    assert not RunDir(run_dir).trials_file.exists()


def test_a_resume_beside_a_running_driver_is_refused_naming_it(cache_env, tmp_path: Path):
    """Through the command line, while this process drives the run directory."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    RunDir(run_dir).write_config(load_config("smoke"))
    with RunDir(run_dir).driving(resuming=True):
        beside = subprocess.run(
            [sys.executable, "-m", "study.launch", "--resume", str(run_dir)],
            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"},
            capture_output=True,
            text=True,
            timeout=120,
        )
    since = json.loads(RunDir(run_dir).lock_file.read_text() or "{}").get("since")
    assert beside.returncode == 2, beside.stderr[-2000:]
    (line,) = beside.stderr.strip().splitlines()
    assert line.startswith(
        f"error: run directory {run_dir} is in use by another driver (pid {os.getpid()} on "
    )
    assert since is None  # released: the file names no driver once the study ends
    assert not (run_dir / "ray").exists() and not RunDir(run_dir).identity()


@pytest.mark.slow  # a study stopped, copied, moved and resumed twice
def test_a_copied_run_directory_resumes_as_its_own_study_and_a_moved_one_where_it_is(
    ray_local, studies, cache_env, monkeypatch, capsys, tmp_path
):
    studies.EPOCHS = 6  # short trials: the suite's time
    run_dir = tmp_path / "run"
    _stopped_mid_search(monkeypatch, capsys, studies.command(run_dir)[3:], run_dir, signal.SIGINT)
    before = _hashes(run_dir)

    copy = tmp_path / "José" / "copy"  # a path that is not ASCII, too
    shutil.copytree(run_dir, copy)
    # The copy loses its unfinished trials' checkpoints (deleted by hand, a lifecycle rule):
    # they run again from epoch 1, and the original keeps its own. Those the saved state names
    # are told as gone; one written after Tune's last save was never going to be restored.
    storage = RunDir.open(copy)[0].storage
    unfinished = unfinished_trials(storage)
    lost = [t.trial_id for t in saved_trials(storage) if t.trial_id in unfinished and t.checkpoint]
    for trial in unfinished:
        for checkpoint in (copy / "ray_results" / "run" / f"trial_{trial}").glob("checkpoint_*"):
            shutil.rmtree(checkpoint)
    assert lost and _launch(monkeypatch, capsys, ["--resume", str(copy)])[0] == 0
    named = _launch.out.split("the checkpoints of trial(s) ")[1].split(" are gone")[0].split(", ")
    assert sorted(named) == sorted(lost)
    studies.assert_complete(copy)  # they ran again from epoch 1: every epoch once
    assert _hashes(run_dir) == before  # the original: not one byte changed

    # Moved, it resumes as in a Ray session of its own, which a user's command has: drivers of
    # a copy and its original in one Ray session on one host share Tune's staging folder (see
    # README, What it writes), so the copy's is cleared from the tests' session first.
    from ray.train._internal.storage import _get_ray_train_session_dir

    for staged in Path(_get_ray_train_session_dir()).glob("*/run"):
        shutil.rmtree(staged)
    moved = tmp_path / "moved"
    run_dir.rename(moved)
    assert _launch(monkeypatch, capsys, ["--resume", str(moved)])[0] == 0
    studies.assert_complete(moved)
    assert RunDir(moved).finished

    started = time.monotonic()  # finished: says so at once, changes nothing
    finished = _hashes(moved)
    assert _launch(monkeypatch, capsys, ["--resume", str(moved)]) == (0, "")
    assert f"the study in {moved} finished at {RunDir(moved).finished}: nothing to resume" in _launch.out
    assert time.monotonic() - started < 5 and _hashes(moved) == finished


@pytest.mark.slow  # a study on storage outside its run directory, stopped, copied and resumed
def test_a_copy_sharing_storage_with_its_original_is_refused_until_given_its_own(
    ray_local, studies, cache_env, monkeypatch, capsys, tmp_path
):
    studies.EPOCHS = 6  # short trials: the suite's time
    run_dir, shared, copy, own = tmp_path / "run", tmp_path / "shared", tmp_path / "copy", tmp_path / "own"
    argv = [*studies.command(run_dir)[3:], "--storage", str(shared)]
    _stopped_mid_search(monkeypatch, capsys, argv, run_dir, signal.SIGTERM)
    shutil.copytree(run_dir, copy)
    before = _hashes(run_dir) | {f"shared/{k}": v for k, v in _hashes(shared).items()}

    assert _launch(monkeypatch, capsys, ["--resume", str(copy)]) == (
        2,
        f"error: this run directory is a copy of {run_dir}, whose experiment in {shared} it would share; "
        "resume the copy with its own --storage (the experiment is copied there), or resume the original",
    )
    assert _launch(monkeypatch, capsys, ["--resume", str(copy), "--storage", str(own)])[0] == 0
    studies.assert_complete(copy)
    assert RunDir.open(copy)[1].storage == str(own)
    assert _hashes(run_dir) | {f"shared/{k}": v for k, v in _hashes(shared).items()} == before


def _results(run_dir: Path) -> dict[Path, str]:
    """Each trial's ``result.json`` as storage holds it (Tune syncs it there with its state)."""
    experiment = Path(RunDir.open(run_dir)[0].storage.experiment_path)
    return {p: p.read_text() for p in experiment.glob("trial_*/result.json")}


def _reached(text: str, epochs: int) -> bool:
    """Whether a ``result.json`` holds its trial's last epoch. Counting its lines would not
    do: a trial resumed from the epoch before the one it last reported reports that epoch
    twice, so its file has ``epochs`` lines one epoch short of its end."""
    return any(json.loads(line)["epoch"] == epochs for line in text.splitlines())


def _finished_and_running(run_dir: Path, epochs: int) -> bool:
    """One trial's every epoch is in storage's ``result.json``, and another trial is under way."""
    if not RunDir(run_dir).config_file.is_file():
        return False
    done = any(_reached(text, epochs) for text in _results(run_dir).values())
    trials = Path(RunDir.open(run_dir)[0].storage.experiment_path).glob("trial_*")
    return done and any(2 <= len(list(t.glob("checkpoint_*"))) < epochs for t in trials)


def _refused_while_cut_off(monkeypatch, capsys, run_dir: Path) -> None:
    """A cut-off experiment state is refused by name, untouched, before Tune could start the
    study over; then put back."""
    state = Path(RunDir.open(run_dir)[0].storage.newest_experiment_state())
    whole = state.read_bytes()
    state.write_bytes(whole[: len(whole) // 2])  # as a copy killed mid-file leaves it
    code, told = _launch(monkeypatch, capsys, ["--resume", str(run_dir)])
    assert code == 2 and told.startswith(f"error: Tune's experiment state {state} is cut off"), told
    assert state.read_bytes() == whole[: len(whole) // 2]
    state.write_bytes(whole)


def _stopped_while_loading(argv: list[str], sig: int) -> tuple[int, str]:
    """``python -m study.launch argv`` stopped half a second in, while it imports torch and Ray."""
    process = subprocess.Popen(
        [sys.executable, "-m", "study.launch", *argv],
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    )
    time.sleep(0.5)
    process.send_signal(sig)
    _, err = process.communicate(timeout=60)
    return process.returncode, err.strip()


@pytest.mark.slow  # one study stopped in each of its phases by each signal, and resumed each time
def test_a_stop_signal_in_any_phase_ends_the_driver_and_the_resume_command_finishes_the_study(
    ray_local, studies, cache_env, monkeypatch, capsys, tmp_path
):
    """SIGINT and SIGTERM in turn, one per phase, both in the search (they take one path once
    the driver's handlers are in). Before the run directory holds the study, nothing is kept
    and the same command starts again; after, the resume command redoes the phase that was cut."""
    studies.EPOCHS = 6  # short trials: the suite's time
    # Tune writes result files to storage with its experiment state: every second here, so a
    # finished trial's shows while another trial still runs.
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "1")
    run_dir = tmp_path / "run"
    start = [*studies.command(run_dir, "--seed-reruns", "1")[3:]]
    resume = ["--resume", str(run_dir)]
    nothing_kept = "interrupted: before the study started, so nothing was kept: run the same command again"
    resumable = f"interrupted: resume with: python -m study.launch --resume {run_dir}"
    for sig in (signal.SIGINT, signal.SIGTERM):  # while Python loads torch and Ray
        assert _stopped_while_loading(start, sig) == (130, nothing_kept)
        assert not run_dir.exists()
    sigint, sigterm = signal.SIGINT, signal.SIGTERM
    phases = [  # (phase, the signals that stop it in turn, what must hold too)
        ("cohort", (sigint,), lambda: True),
        ("baselines", (sigterm,), lambda: True),
        ("search", (sigint, sigterm), lambda: _saved_epochs(run_dir) >= 2),
        ("reruns", (sigint,), lambda: True),
        ("report", (sigterm,), lambda: True),
    ]
    finished: dict[Path, str] = {}
    for name, signals, when in phases:
        for sig in signals:
            argv = resume if RunDir(run_dir).config_file.is_file() else start
            started = time.monotonic()
            code, told = _launch(monkeypatch, capsys, argv, name, sig, when)
            assert code == 130 and time.monotonic() - started < 120, (name, sig, code, told)
            assert told == (resumable if RunDir(run_dir).config_file.is_file() else nothing_kept), (name, sig)
            if told == nothing_kept:
                assert not run_dir.exists()
            if name == "search" and sig == signal.SIGINT:  # SIGTERM next: one trial done, one under way
                when = lambda: _finished_and_running(run_dir, studies.EPOCHS)  # noqa: E731
            elif name == "search":
                finished = {p: t for p, t in _results(run_dir).items() if _reached(t, studies.EPOCHS)}
                _refused_while_cut_off(monkeypatch, capsys, run_dir)
    assert finished
    assert _launch(monkeypatch, capsys, resume) == (0, "")
    for path, before in finished.items():  # not rerun: no epoch of a finished trial trained again
        after = path.read_text()
        assert after.startswith(before), f"{path} changed"
        # Stopped between a trial's last report and Tune registering its checkpoint, a trial
        # resumes from the epoch before and reruns its last one (same seed, same figures).
        assert all(json.loads(line)["epoch"] == studies.EPOCHS for line in after[len(before) :].splitlines())
    trials = studies.assert_complete(run_dir)
    seeds = RunDir(run_dir).read_seed_runs()
    assert seeds is not None and not seeds.empty
    assert not seeds.duplicated(["trial_id", "forget", "seed", "epoch"]).any()
    assert len(trials) == 2 * 2 * studies.EPOCHS


def test_rays_temporary_files_go_inside_a_short_ascii_run_directory_and_elsewhere_otherwise(tmp_path: Path):
    from study.run.cluster import _temp_dir

    short = Path("/tmp/r1")
    assert _temp_dir(short) == short / "ray"
    outside = _temp_dir(Path("/tmp/José/r"))  # Ray encodes its session paths as ASCII
    assert str(outside).isascii() and outside.name.startswith("ray-")
    outside.rmdir()


def test_a_run_directory_of_an_earlier_version_with_optuna_db_is_refused_naming_it(tmp_path: Path):
    run = RunDir(tmp_path / "old")
    run.path.mkdir()
    run.refuse_older_optuna_storage()  # neither: a new study
    (run.path / "optuna.db").write_bytes(b"SQLite format 3\0")
    with pytest.raises(StudyError, match=r"keeps its searches in optuna\.db, as earlier versions"):
        run.refuse_older_optuna_storage()
    run.optuna_journal.write_text("")  # begun with the journal already: this version's
    run.refuse_older_optuna_storage()
