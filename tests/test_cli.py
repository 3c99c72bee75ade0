"""What a person sees: the commands' conventions (``--version``, help on every option, console
scripts, checks before anything slow), the search's console lines, labelled outputs."""

from __future__ import annotations

import argparse
import pickle
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pyarrow.parquet as pq
import pytest

from search_spaces.searcher import RunStorage
from study import __version__
from study.cli import PARSERS, read
from study.config import StudyError, load_config
from study.config.sources import storage_setting
from study.run.console import EpochLines, Progress, duration, number, time_left
from trainables.trial_lines import TrialLines

SCRIPTS = {
    "unlearning-study": "study.launch",
    "unlearning-forget": "study.forget",
    "unlearning-replay": "study.replay",
    "unlearning-evaluate": "analysis.evaluate",
    "unlearning-report": "analysis.report",
    "unlearning-bench": "study.bench",
}


def _options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every option and positional of ``parser`` and of its subcommands."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _options(sub)
        elif not isinstance(action, argparse._HelpAction):
            found.append(action)
    return found


@pytest.mark.parametrize("command", list(PARSERS))
def test_every_command_has_a_version_and_every_option_a_help_text(command, capsys):
    with pytest.raises(SystemExit) as exit:
        read(command, ["--version"])
    assert exit.value.code == 0 and capsys.readouterr().out.strip().endswith(__version__)
    parser = PARSERS[command]()
    unexplained = [a.dest for a in _options(parser) if not a.help or a.help == argparse.SUPPRESS]
    assert unexplained == []
    texts = [parser.description or "", *(a.help for a in _options(parser))]
    assert not [t for t in texts if "``" in t]  # no reST markup in a terminal
    if command == "study.launch":  # each setting's help names its default
        settings = [
            a for a in _options(parser) if a.dest not in ("version", "verbose", "resume", "resume_or_start")
        ]
        assert [a.dest for a in settings if "default" not in a.help and "demo:" not in a.help] == []


def test_the_console_scripts_are_installed_beside_python():
    for script, command in SCRIPTS.items():
        done = subprocess.run(
            [str(Path(sys.executable).parent / script), "--version"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0 and done.stdout.strip() == f"python -m {command} {__version__}", script


# Run in a fresh interpreter: which modules the early checks loaded before they refused.
CHECK = """
import sys
from study.cli import check_launch
try:
    check_launch(sys.argv[1:])
except Exception as error:
    print(type(error).__name__, error)
print("loaded:", sorted(m for m in ("torch", "ray", "monai", "optuna") if m in sys.modules))
"""


def test_an_existing_run_directory_and_bad_storage_are_refused_before_torch_or_ray_loads(tmp_path: Path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "config.toml").write_text("")
    cases = {
        ("--run-dir", str(taken)): f"run directory {taken} already exists; pass --resume {taken}",
        ("--storage", "sqlite:///optuna.db"): "is a database URL, as Optuna's storage takes",
        ("--storage", "ftp://host/x"): "unknown URI scheme 'ftp'",
        ("--storage", "s3://"): "names no bucket or host",
        ("--resume", str(tmp_path / "nothing")): "is not a study run directory",
    }
    for argv, message in cases.items():
        done = subprocess.run(
            [sys.executable, "-c", CHECK, *argv], capture_output=True, text=True, timeout=60
        )
        said, loaded = done.stdout.strip().splitlines()
        assert said.startswith("StudyError") and message in said, (argv, done.stdout, done.stderr)
        assert loaded == "loaded: []", argv
    # Through the command itself: one line, exit 2.
    done = subprocess.run(
        [sys.executable, "-m", "study.launch", "--run-dir", str(taken)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        f"error: run directory {taken} already exists; pass --resume {taken} to finish that study, "
        "or choose another --run-dir"
    ]


def test_storage_settings_of_known_file_systems_are_kept(tmp_path: Path):
    assert storage_setting("s3://bucket/prefix?endpoint_override=minio:9000") == (
        "s3://bucket/prefix?endpoint_override=minio:9000"
    )
    assert storage_setting(str(tmp_path / "x" / ".." / "y")) == str(tmp_path / "y")
    assert storage_setting("") == ""
    with pytest.raises(StudyError, match="postgresql"):
        storage_setting("postgresql://user@db/optuna")


def test_figures_and_times_read_as_a_person_writes_them():
    assert [number(v) for v in (0.00044303752, 1.9578897, 3, "adam", True)] == [
        "0.000443",
        "1.96",
        "3",
        "adam",
        "True",
    ]
    assert [duration(s) for s in (42.4, 185, 3725)] == ["42 s", "3m05s", "1h02m"]
    assert time_left(2, 8, 30) == "about 1m30s left" and time_left(0, 8, 30) == ""


def test_progress_says_what_is_done_and_the_time_left(capsys):
    progress = Progress("reruns of trial abc", 3, every_s=0)
    progress.step("seed 0 on 070")
    progress.step("seed 1 on 070")
    progress.step("seed 2 on 070")
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("reruns of trial abc: 1/3 done (seed 0 on 070), ") and "left" in lines[0]
    assert lines[2].startswith("reruns of trial abc: 3/3 done (seed 2 on 070), ") and "left" not in lines[2]
    together = Progress("models", 3)  # done within a second of each other: one line, the last
    for name in ("a", "b", "c"):
        together.step(name)
    assert capsys.readouterr().out.splitlines() == [f"models: 3/3 done (c), {duration(0)}"]


def test_a_single_run_prints_its_epochs_and_survives_pickling(capsys):
    lines = pickle.loads(pickle.dumps(EpochLines("unlearning", 30)))  # as a Ray task carries it
    for epoch in (10, 30):
        lines(
            {
                "epoch": epoch,
                "forget_dice": 0.41234,
                "retain_dice": 0.8,
                "seconds_train": 2.0,
                "diverged": 0.0,
            }
        )
    first, last = capsys.readouterr().out.splitlines()
    assert first.startswith("unlearning: epoch 10/30, forget Dice 0.412, retain Dice 0.8, 2 s, about ")
    assert last.startswith("unlearning: epoch 30/30, ") and "left" not in last


def _trial(trial_id: str, strategy: str, status: str, last: dict | None = None) -> SimpleNamespace:
    params = {"strategy": strategy, "trial_number": 0, "lr": 0.00044303752, "noise_level": 1.0}
    return SimpleNamespace(trial_id=trial_id, config=params, status=status, last_result=last or {})


def test_the_search_prints_one_line_per_trial_start_and_end_and_a_status_with_the_front(capsys):
    config = load_config("smoke", overrides={"max_epochs": 4, "horizons": [2, 4]})
    lines = TrialLines(config, every_s=0)
    a, b = _trial("aaaa1111", "noisy_label", "RUNNING"), _trial("bbbb2222", "max_loss", "RUNNING")
    for trial in (a, b):
        lines.on_trial_start(0, [a, b], trial)
    figures = {1: (0.1, 0.9), 2: (0.3, 0.95), 3: (0.5, 0.9), 4: (0.7, 0.85)}
    for epoch, (drop, kept) in figures.items():
        result = {"epoch": epoch, "forget_drop": drop, "retain_kept": kept, "diverged": 0.0}
        lines.on_trial_result(0, [a, b], a, result)
        a.last_result = result
    a.status = "TERMINATED"
    lines.on_trial_complete(0, [a, b], a)
    lines.on_trial_result(0, [a, b], b, {"epoch": 1, "forget_drop": 0.9, "retain_kept": 0.2, "diverged": 0.0})
    b.last_result = {"epoch": 1}
    lines.on_step_end(0, [a, b])
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "trial noisy_label aaaa1111 started: lr 0.000443 noise_level 1"
    assert out[2] == (
        "trial noisy_label aaaa1111 done at epoch 4: @2 forget_drop 0.3 retain_kept 0.95 | "
        "@4 forget_drop 0.7 retain_kept 0.85"
    )
    status = out[3]
    assert status.startswith("search: 1/4 done, 1 running, 2 pending; ") and "left" in status
    # The front over every trial-epoch: (0.3, 0.95), (0.5, 0.9), (0.7, 0.85), (0.9, 0.2).
    assert status.endswith(
        "front of 4: best forget_drop 0.9 (retain_kept 0.2), best retain_kept 0.95 (forget_drop 0.3)"
    )
    restored = pickle_round_trip(lines)
    assert restored.front == [] and restored.total == 4  # a resumed session counts afresh


def pickle_round_trip(obj):
    import pickle

    return pickle.loads(pickle.dumps(obj))


@pytest.mark.slow  # a smoke study, read back
def test_the_study_labels_its_optuna_studies_and_parquet_columns(smoke_study):
    run = smoke_study.run
    trial_ids = set(smoke_study.trials["trial_id"])
    for strategy in smoke_study.config.strategies:
        study = optuna.load_study(
            study_name=strategy, storage=RunStorage(run.optuna_journal)
        )  # as optuna-dashboard loads it
        assert study.metric_names == ["forget_drop", "retain_kept"]
        assert {t.user_attrs["strategy"] for t in study.trials} == {strategy}
        assert {t.user_attrs["tune_trial_id"] for t in study.trials} <= trial_ids
    trials = pq.read_schema(run.trials_file)
    assert trials.field("retain_kept").metadata[b"description"] == b"objective: retain_dice / retain_dice0"
    assert trials.field("param_lr").metadata[b"description"] == b"the trial's hyperparameter of that name"
    assert pq.read_schema(run.pareto_file).field("horizon").type == "int64"
    # The end of the run says what to do next.
    assert f"python -m study.forget {run.path} --subjects " in smoke_study.output
    assert f"optuna-dashboard {run.optuna_journal}" in smoke_study.output
    # 2 trials a strategy, both drawn before GP could learn: random search, and said so.
    (line,) = [line for line in smoke_study.output.splitlines() if line.startswith("sampler: ")]
    assert line.startswith("sampler: random (auto: with ") and "of a strategy's 2 trials in flight" in line
    for trial_id in trial_ids:
        assert (
            f" {trial_id} started: " in smoke_study.output
            and f" {trial_id} done at epoch " in smoke_study.output
        )


@pytest.mark.slow  # a one-trial smoke study on the tests' Ray
def test_verbose_brings_tunes_tables_back(ray_local, cache_env, tmp_path, capsys):
    from study.launch import main

    one = ["--preset", "smoke", "--strategies", "noisy_label", "--num-samples", "1"]
    assert main([*one, "--run-dir", str(tmp_path / "run"), "-v"]) == 0
    out = capsys.readouterr().out
    assert "Trial status:" in out and "Configuration for experiment" in out  # Tune's own
    assert "trial noisy_label " in out and " started: " in out  # and the study's
