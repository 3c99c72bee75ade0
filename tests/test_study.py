"""A whole study through ``python -m study.launch``'s entry point on a real local Ray."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pandas as pd
import pytest

from analysis.study_state import load_study
from search_spaces import STRATEGIES
from search_spaces.searcher import RunStorage
from study.cohort import open_cohort, with_other_forget
from study.config import EpochSchedule, StudyError, config_from_toml, load_config
from study.launch import main
from study.metrics import METRICS
from study.replay import replay_trial
from study.run.results import FIGURES
from study.run.rundir import RunDir
from trainables.recipes import cache_key, load_cached, recipes


def test_the_smoke_study_writes_one_row_per_trial_and_epoch(smoke_study):
    """2 strategies x 2 trials x 2 epochs, parameters within their ranges."""
    trials = smoke_study.trials
    assert smoke_study.code == 0
    assert len(trials) == 8
    assert trials.groupby("strategy")["trial_id"].nunique().to_dict() == {"noisy_label": 2, "max_loss": 2}
    assert not trials.duplicated(["trial_id", "epoch"]).any()
    assert sorted(trials["epoch"].unique()) == [1, 2]
    assert set(trials["status"]) == {"terminated"}
    noisy = trials[trials["strategy"] == "noisy_label"]
    assert noisy["param_noise_level"].between(0.1, 1.0).all()
    assert noisy["param_lr"].between(1e-5, 1e-2).all()
    assert trials[trials["strategy"] == "max_loss"]["param_loss_ceiling"].between(1.0, 10.0).all()
    for column in ("retain_dice", "forget_dice", "holdout_dice"):
        assert trials[column].between(0.0, 1.0).all()
    row = trials.iloc[0]
    assert row["dice_gap"] == pytest.approx(row["retain_dice"] - row["forget_dice"])
    assert row["score"] == pytest.approx(0.5 * row["forget_drop"] + 0.5 * row["retain_kept"])
    finals = trials[trials["epoch"] == 2]
    assert all(math.isfinite(v) for v in finals["forget_drop"])
    assert trials.groupby("strategy")["trial_number"].apply(lambda n: sorted(set(n))).tolist() == [[0, 1]] * 2


def test_the_baselines_and_the_resolved_config_are_recorded(smoke_study):
    """Both baselines' metrics and weights, and a config.toml that reads back as the study's config."""
    run = smoke_study.run
    baseline = json.loads(run.baseline_metrics_file.read_text())
    assert set(baseline["original"]) == set(baseline["retrain"]) == set(METRICS)
    assert baseline["retrain"]["forget_gap_to_retrain"] == 0.0 and baseline["retrain"]["retrain_match"] == 1.0
    assert baseline["original"]["forget_drop"] == 0.0 and baseline["original"]["retain_kept"] == 1.0
    assert baseline["original"]["forget_gap_to_retrain"] == pytest.approx(
        abs(baseline["original"]["forget_dice"] - baseline["retrain"]["forget_dice"])
    )
    assert run.baseline_model("original").is_file() and run.baseline_model("retrain").is_file()
    saved = config_from_toml(run.config_file)
    reruns = {"seed_reruns": 2, "bn_mode_reruns": True, "native_scores": True}  # the study's --config file
    given = load_config("smoke", overrides={"run_dir": str(smoke_study.run_dir), **reruns})
    assert saved == dataclasses.replace(given, run_dir="")  # its own path is not kept in it
    assert RunDir.open(smoke_study.run_dir)[1].run_dir == str(smoke_study.run_dir)  # where it is now
    assert saved.strategies == ["noisy_label", "max_loss"] and saved.max_epochs == 2  # the preset's


def test_tune_keeps_each_trials_last_checkpoint_and_optuna_each_trial(smoke_study):
    """Tune's experiment in the default storage keeps each trial's last checkpoint only;
    each strategy's Optuna study holds its 2 trials, complete, with both objectives."""
    run_dir, trials = smoke_study.run_dir, smoke_study.trials
    experiment = smoke_study.run.storage
    assert experiment.experiment_path == str(run_dir.resolve() / "ray_results" / run_dir.name)
    for trial_id in trials["trial_id"].unique():
        assert [index for index, _ in experiment.checkpoints(experiment.trial_path(trial_id))] == [1]
        # Its results once, in result.json: no CSV or TensorBoard copy of each (and the
        # setting that turned those off is gone from this process again).
        files = {p.name for p in Path(experiment.trial_path(trial_id)).iterdir() if p.is_file()}
        assert "result.json" in files and "progress.csv" not in files
        assert not any(name.startswith("events.out.tfevents") for name in files)
    assert "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS" not in os.environ
    # What Tune's saved state keeps of a finished trial: its last epoch and objectives, its
    # checkpoint; no running statistics, no figures (they are in trials.parquet).
    from ray.tune.utils.serialization import _loads_with_cloudpickle  # how Tune reads it back

    state = json.loads(experiment.read_bytes(experiment.newest_experiment_state()))
    assert len(state["trial_data"]) == 4
    for _, saved in state["trial_data"]:
        metadata = _loads_with_cloudpickle(saved)
        assert metadata["metric_analysis"] == {} and metadata["metric_n_steps"] == {}
        last = metadata["last_result"]
        assert last["epoch"] == 2 and {"forget_drop", "retain_kept", "config"} <= last.keys()
        assert FIGURES not in last
        manager = metadata["checkpoint_manager"]
        assert manager.latest_checkpoint_result.metrics["epoch"] == 2
        for checkpoint in manager.best_checkpoint_results:
            assert not {FIGURES, "config"} & checkpoint.metrics.keys()
    assert trials[["forget_dice", "retain_dice", "holdout_dice", "mia_auc"]].notna().all().all()
    for strategy in ("noisy_label", "max_loss"):
        study = optuna.load_study(study_name=strategy, storage=RunStorage(smoke_study.run.optuna_journal))
        complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        assert len(complete) == 2 and all(len(t.values) == 2 for t in complete)


def test_the_console_and_the_report_name_the_recommendation(smoke_study):
    run, out = smoke_study.run, smoke_study.output
    recommended = load_study(smoke_study.run_dir).recommendation
    assert "non-dominated trials" in out and f"run directory: {smoke_study.run_dir}" in out
    assert f"report: {run.report_html}" in out
    assert (
        f"recommended: {recommended.strategy} trial {recommended.trial_id} at {recommended.epoch} epochs"
        in out
    )
    assert run.pareto_file.is_file() and run.report_markdown.is_file()
    page = run.report_html.read_text()
    assert page.count("data:image/png;base64,") == 4  # a front per view, curves, overlays
    assert "is not saved" not in page  # the recommended model's overlay is there
    assert f"python -m study.replay {smoke_study.run_dir} {recommended.trial_id} --epochs" in page


def test_the_recommendation_is_rerun_with_fresh_seeds_on_two_forget_sets_and_other_bn_modes(
    smoke_study, cache_env
):
    """The 2 fresh seeds on the study's forget set and on the first 2 retain subjects, and the
    2 other bn_modes, every epoch, the same trial; each set against its own retrain reference."""
    run, config = smoke_study.run, smoke_study.config
    trial_id = load_study(smoke_study.run_dir).recommendation.trial_id
    seeds, bn_modes = run.read_seed_runs(), run.read_bn_mode_runs()
    assert set(seeds["trial_id"]) == set(bn_modes["trial_id"]) == {trial_id}
    for forget in ("070,148", "1,14"):
        on = seeds[seeds["forget"] == forget]
        assert sorted(zip(on["seed"], on["epoch"], strict=True)) == [(0, 1), (0, 2), (1, 1), (1, 2)]
    references = seeds.groupby("forget")["retrain_forget_dice"].agg(["min", "max"])
    assert (references["min"] == references["max"]).all() and references["max"].nunique() == 2
    assert seeds["forget_gap_to_retrain"].to_numpy() == pytest.approx(
        (seeds["forget_dice"] - seeds["retrain_forget_dice"]).abs().to_numpy(), abs=1e-6
    )
    other = with_other_forget(open_cohort(config), config.other_forget)
    assert (
        load_cached(config, cache_key(config, other, recipes(config, other)["retrain"])) is not None
    )  # trained once, cached
    # ... in the baselines phase, beside the study's own models; the reruns phase finds it.
    baselines, search = smoke_study.output.index("== baselines"), smoke_study.output.index("== search")
    reruns = smoke_study.output.index("== reruns")
    assert smoke_study.output.find("training retrain for forget set 1,14", baselines, search) >= 0
    assert smoke_study.output.find("for forget set 1,14, cached in", reruns) >= 0
    recommended = smoke_study.trials.query("trial_id == @trial_id")["param_bn_mode"].iloc[0]
    assert set(bn_modes["bn_mode"]) == {"train", "frozen", "recalibrate"} - {recommended}
    assert seeds["forget_dice"].between(0, 1).all() and bn_modes["mia_forget"].between(0, 1).all()
    page = run.report_html.read_text()
    assert "forget set (070,148), 2 seeds" in page and "another forget set (1,14;" in page
    assert "(the trial itself)" in page


def test_knees_reruns_run_as_one_batch_and_join_the_rows_already_in_seeds_parquet(
    smoke_study, cache_env, tmp_path, capsys
):
    """Two more knees' reruns (fresh seeds on the study's forget set, no bn_modes) asked with
    the searched knee's, already done: the two run as one batch, and no trial's rows are lost."""
    import shutil

    import ray

    from search_spaces import classes_of
    from study.model import initial_state
    from trainables.baseline import reference_models
    from trainables.reruns import RerunOf, rerun_recommendations
    from trainables.tune_trainable import Handover

    shutil.copytree(smoke_study.run_dir, tmp_path / "run")
    run, config = RunDir.open(tmp_path / "run")
    cohort = open_cohort(config)
    start, _ = initial_state(config, cohort.n_classes)
    references = reference_models(config, cohort, start).result()  # cached by the smoke study
    original = ray.put(references.states["original"])
    handover = Handover(
        config, classes_of(config.strategies), ray.put(cohort), original, references.reference
    )
    chosen = load_study(run.path).recommendation
    searched = chosen.trial_id
    second, third = [t for t in dict.fromkeys(smoke_study.trials["trial_id"]) if t != searched][:2]
    before, modes_before = run.read_seed_runs(), run.read_bn_mode_runs()
    capsys.readouterr()
    asked = [
        RerunOf(searched, chosen.epoch),
        RerunOf(second, 1, False, False),
        RerunOf(third, 1, False, False),
    ]
    rerun_recommendations(config, run, asked, handover, None, start)
    printed = capsys.readouterr().out
    assert f"rerunning trial {searched}" not in printed  # its reruns are in the tables already
    assert f"reruns of trial {second}, {third}: 4/4 done" in printed  # one batch of four
    seeds = run.read_seed_runs()
    assert set(seeds["trial_id"]) == {searched, second, third}
    kept = seeds[seeds["trial_id"] == searched].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept[before.columns], before)
    for trial in (second, third):
        added = seeds[seeds["trial_id"] == trial]
        assert sorted(zip(added["seed"], added["epoch"], added["forget"], strict=True)) == [
            (0, 1, "070,148"),
            (1, 1, "070,148"),
        ]
    pd.testing.assert_frame_equal(run.read_bn_mode_runs(), modes_before)


def test_a_trial_replayed_without_ray_lands_on_its_recorded_figures(smoke_study):
    finals = smoke_study.trials[smoke_study.trials["epoch"] == 2]
    trial = finals[finals["strategy"] == "noisy_label"].iloc[1]
    replayed = replay_trial(smoke_study.run_dir, trial["trial_id"], quiet=True)
    assert [int(r["epoch"]) for r in replayed.reports] == [1, 2]
    for metric in ("forget_dice", "retain_dice", "forget_drop"):
        assert replayed.last[metric] == pytest.approx(trial[metric], abs=1e-4)


@pytest.mark.slow  # starts the local Ray
def test_existing_run_directory_is_refused(ray_local, cache_env, tmp_path: Path, capsys):
    run_dir = tmp_path / "taken"
    run_dir.mkdir()
    RunDir(run_dir).trials_file.write_bytes(b"earlier results")
    assert main(["--preset", "smoke", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: run directory") and "--resume" in err and "\n" not in err
    assert RunDir(run_dir).trials_file.read_bytes() == b"earlier results"


@pytest.mark.slow  # one study of every strategy, an added one and one that diverges at epoch 1
def test_every_strategy_an_added_one_and_a_diverging_one_run_as_tune_trials(
    ray_local, cache_env, tmp_path: Path, toy_registered, capsys
):
    built_in = [s for s in STRATEGIES if not s.startswith("toy_")]
    run_dir = tmp_path / "all"
    argv = ["--preset", "smoke", "--strategies", ",".join([*built_in, "toy_background", "toy_nan"])]
    assert main([*argv, "--num-samples", "1", "--run-dir", str(run_dir)]) == 0
    run = RunDir(run_dir)
    trials = pd.read_parquet(run.trials_file)
    finished = trials[trials["strategy"] != "toy_nan"]
    assert sorted(finished["strategy"].unique()) == sorted([*built_in, "toy_background"])
    assert set(finished["status"]) == {"terminated"} and set(finished["epoch"]) == {1, 2}
    assert finished["forget_dice"].between(0, 1).all() and finished["retain_dice"].between(0, 1).all()
    learn_others = trials[trials["strategy"] == "learn_others"]
    assert learn_others["param_target"].iloc[0] == "others"  # the hand-picked start
    assert trials[trials["strategy"] == "finetune"].filter(like="param_noise_level").isna().all().all()

    # Added by one file and one register call: its own hyperparameter, its default the start.
    toy = trials[trials["strategy"] == "toy_background"]
    assert toy["param_forget_weight"].tolist() == [0.5, 0.5] and toy["param_noise_level"].isna().all()
    start = optuna.load_study(study_name="toy_background", storage=RunStorage(run.optuna_journal)).trials[0]
    assert start.params["forget_weight"] == 0.5 and start.state.name == "COMPLETE"

    # Diverged at epoch 1: failed in Optuna, never recommended, named in the report.
    nan = trials[trials["strategy"] == "toy_nan"]
    assert set(nan["status"]) == {"diverged"} and set(nan["epoch"]) == {1}
    (failed,) = optuna.load_study(study_name="toy_nan", storage=RunStorage(run.optuna_journal)).trials
    assert failed.state.name == "FAIL"
    assert "toy_nan" not in set(pd.read_parquet(run.pareto_file)["strategy"])
    recommended = capsys.readouterr().out.split("recommended: ")[1].split()[0]
    assert recommended in built_in or recommended == "toy_background"
    page = run.report_html.read_text()
    assert "1 diverged, 0 failed" in page and page.count("diverged at epoch 1") == 1


@pytest.mark.slow
def test_an_exploding_learning_rate_ends_trials_as_diverged_and_the_study_completes(
    ray_local, cache_env, tmp_path: Path
):
    config = tmp_path / "explode.toml"
    config.write_text('strategies = ["noisy_label"]\nnum_samples = 2\n\n[search_bounds]\nlr = [1e20, 1e21]\n')
    run_dir = tmp_path / "explode"
    assert main(["--preset", "smoke", "--config", str(config), "--run-dir", str(run_dir)]) == 0
    trials = pd.read_parquet(RunDir(run_dir).trials_file)
    assert trials["trial_id"].nunique() == 2
    assert set(trials["status"]) == {"diverged"}
    assert (trials["param_lr"] >= 1e20).all()
    # The last finite metrics: the original model's, so nothing forgotten and all retained.
    assert trials["forget_drop"].tolist() == pytest.approx([0.0] * len(trials))
    assert trials["retain_kept"].tolist() == pytest.approx([1.0] * len(trials))
    saved = config_from_toml(RunDir(run_dir).config_file)  # the --config file's settings, kept
    assert saved.search_bounds == {"lr": [1e20, 1e21]}
    assert saved.strategies == ["noisy_label"] and saved.num_samples == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--preset", "paper"], "needs real data"),
        (["--strategies", "noisy_label,forget_everything"], "unknown forget_everything"),
        (["--horizons", "5,50", "--max-epochs", "20"], "horizons"),
        (["--max-epochs", "0"], "max_epochs must be a positive integer"),
        (["--forget", "999"], "unknown subject"),
        (["--data", "/nonexistent/MRBrainS18"], "does not exist"),
        (["--forget", "070", "--retain", "070,1"], "in both --forget and --retain"),
        (["--forget", ","], "forget set is empty"),
        (["--resume", "/nonexistent/run"], "is not a study run directory"),
        (["--shadow-models", "1"], "the membership test needs shadow_models >= 2 and retrain_seeds >= 2"),
        (["--shadow-models", "8", "--retrain-seeds", "1", "--preset", "smoke"], "(got 8 and 1)"),
        (["--retrain-seeds", "0"], "retrain_seeds must be at least 1"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(cache_env, tmp_path: Path, capsys, argv, message):
    run_dir = tmp_path / "never"
    assert main([*argv, "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not run_dir.exists()


def test_the_presets_resolve_to_their_strategies_and_schedules():
    demo = load_config("demo").validate(tuple(STRATEGIES))
    assert demo.strategies == list(STRATEGIES)  # none named: every registered strategy
    demo_schedule = EpochSchedule.of(demo)
    assert demo_schedule.reported_epochs() == [5, 10, 15, 20, 25, 30]
    assert [e for e in range(1, 31) if demo_schedule.checkpoints(e)] == [15, 30]  # the horizons only
    smoke = load_config("smoke").validate(tuple(STRATEGIES))
    assert smoke.strategies == ["noisy_label", "max_loss"]
    assert EpochSchedule.of(smoke).reported_epochs() == [1, 2] and smoke.dashboard is False
    paper = load_config("paper", overrides={"data": "/data/MRBrainS18/training"}).validate(tuple(STRATEGIES))
    assert paper.model_depth == 50 and paper.input_size == [48, 240, 240] and paper.gpus_per_trial == 1
    assert [e for e in range(1, 51) if EpochSchedule.of(paper).checkpoints(e)] == [20, 50]
    with pytest.raises(StudyError, match="unknown setting"):
        load_config("demo", overrides={"learning_rate": 1})


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        ("lr = [1e-2, 1e-5]", "low < high"),
        ("learning_rate = [1e-4, 1e-3]", "not a numeric hyperparameter"),
        ("lr = [0.0, 1e-3]", "log scale"),
        ('lr = ["a", "b"]', "number pairs"),
    ],
)
def test_bad_search_bounds_are_refused(cache_env, tmp_path: Path, capsys, bounds: str, message: str):
    config = tmp_path / "bounds.toml"
    config.write_text(f"[search_bounds]\n{bounds}\n")
    assert main(["--preset", "smoke", "--config", str(config), "--run-dir", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_search_bounds_narrow_the_space_and_clip_the_start():
    import optuna

    from search_spaces import DefineByRun, starting_point

    study = optuna.create_study(directions=["maximize", "maximize"])
    noisy = STRATEGIES["noisy_label"].search
    space = DefineByRun(noisy.function, (("lr", 1e-4, 2e-4), ("noise_level", 0.9, 1.0)))
    for _ in range(5):
        trial = study.ask()
        space(trial)
        assert 1e-4 <= trial.params["lr"] <= 2e-4 and 0.9 <= trial.params["noise_level"] <= 1.0
        study.tell(trial, [0.0, 0.0])
    start = starting_point(noisy, {"lr": [1e-3, 1e-2]})
    assert start["lr"] == 1e-3 and start["noise_level"] == 1.0


def test_a_local_ray_binds_its_dashboard_to_this_machine(monkeypatch, tmp_path):
    import ray

    from study.run.cluster import Connection, connect

    calls = []

    class Context:
        dashboard_url = "127.0.0.1:8265"

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs) or Context())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    config = load_config("demo", overrides={"run_dir": str(tmp_path), "dashboard": True})
    connection = connect(config, Path("/tmp/r"))
    assert connection == Connection("http://127.0.0.1:8265", local=True)
    assert calls[0]["dashboard_host"] == "127.0.0.1" and calls[0]["include_dashboard"] is True
    assert calls[0]["_temp_dir"] == "/tmp/r/ray"  # inside the run directory: short enough


# Every module of the tool imported, then a local Ray started (``ray.init`` stood in for):
# what the process's environment and ``ray.init`` hold of token authentication afterwards.
_AUTHENTICATION = """
import importlib, json, os, pathlib, pkgutil, sys
import ray
for package in ("study", "trainables", "search_spaces", "analysis"):
    for found in pkgutil.walk_packages(importlib.import_module(package).__path__, package + "."):
        importlib.import_module(found.name)
calls = []
ray.is_initialized = lambda: False
ray.init = lambda **kwargs: calls.append(sorted(kwargs)) or type("Context", (), {"dashboard_url": ""})
from study.config import load_config
from study.run.cluster import connect
run_dir = pathlib.Path(sys.argv[1])
connect(load_config("demo", overrides={"run_dir": str(run_dir)}), run_dir)
print(json.dumps({"RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "unset"), "init": calls}))
"""


def test_no_module_of_the_tool_turns_token_authentication_off(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}  # as a user's shell
    done = subprocess.run(
        [sys.executable, "-c", _AUTHENTICATION, str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen == {"RAY_AUTH_MODE": "unset", "init": [["_temp_dir", "dashboard_host", "include_dashboard"]]}


@pytest.mark.parametrize(("cores", "dashboard"), [(2, False), (4, True), (64, True)])
def test_unless_asked_a_local_ray_starts_its_dashboard_on_machines_with_four_cores(
    monkeypatch, tmp_path, cores, dashboard
):
    import ray

    from study.run.cluster import connect

    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(
        ray, "init", lambda **kwargs: calls.append(kwargs) or SimpleNamespace(dashboard_url="")
    )
    monkeypatch.setattr(os, "cpu_count", lambda: cores)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    connect(load_config("demo", overrides={"run_dir": str(tmp_path)}), Path("/tmp/r"))
    assert calls[0]["include_dashboard"] is dashboard


def test_cluster_settings_round_trip_through_the_run_directorys_config(tmp_path: Path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = load_config(
        "smoke",
        overrides={
            "run_dir": str(tmp_path / "run"),
            "storage": "shared/results",
            "trial_resources": {"accelerator_type:H100": 0.001},
            "resource_wait_s": 600,
        },
    )
    assert config.storage == str(tmp_path / "shared" / "results")  # the same path on every node
    (tmp_path / "run").mkdir()
    RunDir.of(config).write_config(config)
    run, saved = RunDir.open(tmp_path / "run")
    assert saved.trial_resources == {"accelerator_type:H100": 0.001} and saved.resource_wait_s == 600
    assert run.storage.experiment_path == str(tmp_path / "shared" / "results" / "run")
    uri = load_config("smoke", overrides={"storage": "s3://bucket/studies?region=eu-west-1"}).storage
    assert uri == "s3://bucket/studies?region=eu-west-1"  # URIs are kept as given
    for bad, message in [
        ({"trial_resources": {"GPU": 1}}, "cpus_per_trial and gpus_per_trial"),
        ({"gpus_per_trial": 1.5}, "whole number"),
    ]:
        with pytest.raises(StudyError, match=message):
            load_config("smoke", overrides=bad).validate(tuple(STRATEGIES))


def test_a_trial_that_errored_before_its_first_report_is_named():
    from study.run.results import never_reported

    grid = [
        SimpleNamespace(error=RuntimeError("killed"), metrics={"trial_id": "a1"}, path="/r/trial_a1"),
        SimpleNamespace(error=None, metrics={"trial_id": "b2", "epoch": 3}, path="/r/trial_b2"),
        SimpleNamespace(error=RuntimeError("killed"), metrics={"epoch": 2}, path="/r/trial_c3"),
        SimpleNamespace(error=RuntimeError("killed"), metrics=None, path="/r/trial_d4"),
    ]
    assert never_reported(grid) == {
        "a1": "failed before its first epoch",
        "d4": "failed before its first epoch",
    }


def test_one_command_starts_a_study_or_resumes_it_and_resume_may_move_it_to_another_cluster(tmp_path: Path):
    from study.launch import config_from_args
    from study.run.rundir import RunDir

    run_dir = tmp_path / "job"
    command = ["--preset", "smoke", "--run-dir", str(run_dir), "--resume-or-start", "--address", "auto"]
    config, resuming = config_from_args(command)
    assert not resuming and config.address == "auto"  # nothing there yet: it starts
    run_dir.mkdir()
    RunDir(run_dir).write_config(config)  # as the first attempt did before it was killed
    config, resuming = config_from_args(command)  # a retried job: it resumes
    assert resuming and config.run_dir == str(run_dir) and config.num_samples == 2
    moved, resuming = config_from_args([*command[:-1], "10.0.0.7:6379"])  # another head: the same study
    assert resuming and moved.address == "10.0.0.7:6379"
    with pytest.raises(StudyError, match=r"has other settings \(max_epochs: 2 -> 3; num_samples: 2 -> 5\)"):
        config_from_args([*command, "--num-samples", "5", "--max-epochs", "3"])
    with pytest.raises(StudyError, match="needs --run-dir"):
        config_from_args(["--preset", "smoke", "--resume-or-start"])

    config, resuming = config_from_args(["--resume", str(run_dir), "--address", "10.0.0.7:6379"])
    assert resuming and config.address == "10.0.0.7:6379"
    with pytest.raises(
        StudyError, match=r"only --address and --storage may be given with it, not --num-samples"
    ):
        config_from_args(["--resume", str(run_dir), "--num-samples", "5"])
    # --storage as saved: take the experiment over; another: copy it there, and keep it there
    config, resuming = config_from_args(["--resume", str(run_dir), "--storage", ""])
    assert resuming.claim and resuming.copy_from is None and config.storage == ""
    config, resuming = config_from_args(["--resume", str(run_dir), "--storage", str(tmp_path / "own")])
    assert not resuming.claim and config.storage == str(tmp_path / "own")
    assert resuming.copy_from.experiment_path == str(run_dir.resolve() / "ray_results" / "job")


def test_the_quiet_console_leaves_out_optunas_warning_that_a_suggestion_was_slow(monkeypatch):
    """OptunaSearch warns when its define-by-run space takes over a second: GP's suggestion
    does on a loaded 2-core machine; it is not work a user can move into the trial."""
    import warnings

    from study.launch import quiet_libraries

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")  # set by quiet_libraries: put back after
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_libraries(verbose=False)
        slow = "Define-by-run function passed in the `space` argument took 1.1 seconds to run. Ensure"
        warnings.warn(slow, UserWarning, stacklevel=1)
        warnings.warn("a trial's own warning", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a trial's own warning"]
