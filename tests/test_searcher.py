"""The study's one searcher: strategies take turns, each with its own Optuna study, a
restore after a kill leaves no Optuna trial queued twice or open forever, and a diverged
trial reaches Optuna as a failure."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import optuna
import pytest
from ray.tune.search import Searcher

from search_spaces import check_config, spaces_of
from search_spaces.searcher import RunStorage, build_searcher, choose_sampler, make_sampler, sampler_settings
from study.config import load_config
from study.run.rundir import RunDir

RESULT = {"forget_drop": 0.5, "retain_kept": 0.9}


def _config(tmp_path: Path, strategies: list[str], num_samples: int = 2):
    overrides = {"strategies": strategies, "num_samples": num_samples, "run_dir": str(tmp_path / "run")}
    return check_config(load_config("smoke", overrides=overrides))


def _searcher(tmp_path: Path, strategies: list[str], journal: Path, in_flight: int):
    config = _config(tmp_path, strategies)
    return build_searcher(config, spaces_of(config.strategies), journal, in_flight)


def _states(journal: Path, strategy: str) -> list[str]:
    return [t.state.name for t in optuna.load_study(study_name=strategy, storage=RunStorage(journal)).trials]


def test_strategies_take_turns_within_their_cap_and_budget(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    searcher = _searcher(tmp_path, ["noisy_label", "max_loss", "finetune"], journal, in_flight=3)
    first = [searcher.suggest(f"t{i}") for i in range(3)]
    assert [c["strategy"] for c in first] == ["noisy_label", "max_loss", "finetune"]
    assert all(c["trial_number"] == 0 and c["lr"] == 3e-4 for c in first)  # each search's hand-picked start
    assert searcher.suggest("t3") is None  # every strategy is at its cap of one running trial

    searcher.on_trial_complete("t1", RESULT)
    second = searcher.suggest("t4")
    assert second["strategy"] == "max_loss" and second["trial_number"] == 1
    assert "noise_level" not in second and {"forget_weight", "loss_ceiling"} <= second.keys()
    for trial_id in ("t0", "t2", "t4"):
        searcher.on_trial_complete(trial_id, RESULT)
    assert [searcher.suggest(f"t{i}")["strategy"] for i in (5, 6)] == ["finetune", "noisy_label"]
    assert searcher.suggest("t7") == Searcher.FINISHED  # two trials per strategy handed out
    assert _states(journal, "max_loss") == ["COMPLETE", "COMPLETE"]


def test_a_failed_trial_stays_open_until_its_rerun_reports(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    searcher = _searcher(tmp_path, ["noisy_label"], journal, in_flight=2)
    searcher.suggest("a")
    searcher.on_trial_complete("a", RESULT, error=True)
    assert _states(journal, "noisy_label") == ["RUNNING"]  # not told: --resume reruns it
    searcher.on_trial_complete("a", RESULT)  # the rerun finished
    assert _states(journal, "noisy_label") == ["COMPLETE"]


def test_a_diverged_trial_is_told_fail_and_a_restore_leaves_it_so(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    config = _config(tmp_path, ["noisy_label"], num_samples=3)
    searcher = build_searcher(config, spaces_of(config.strategies), journal, in_flight=2)
    assert searcher.suggest("blew")["lr"] == 3e-4  # the hand-picked start
    # Its last finite figures would be the best possible point: they must not reach Optuna.
    searcher.on_trial_complete("blew", {**RESULT, "forget_drop": 1.0, "retain_kept": 1.0, "diverged": 1.0})
    (trial,) = optuna.load_study(study_name="noisy_label", storage=RunStorage(journal)).trials
    assert trial.state == optuna.trial.TrialState.FAIL and trial.values is None

    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = build_searcher(config, spaces_of(config.strategies), tmp_path / "unused.journal", in_flight=2)
    with RunDir(tmp_path).driving(resuming=True):  # as launch restores it: in its run directory
        restored.restore(str(tmp_path / "searcher.pkl"))  # closing lost trials leaves a told one alone
    restored.on_trial_complete("blew", {**RESULT, "diverged": 1.0})  # Tune may say it once more
    assert _states(journal, "noisy_label") == ["FAIL"]
    nxt = restored.suggest("next")  # the search goes on: a sampled trial, the start not requeued
    assert nxt["trial_number"] == 1 and 1e-5 <= nxt["lr"] <= 1e-2 and nxt["lr"] != 3e-4
    restored.on_trial_complete("next", {**RESULT, "diverged": 0.0})
    assert _states(journal, "noisy_label") == ["FAIL", "COMPLETE"]


@pytest.mark.parametrize("lost", ["the hand-picked start", "a sampled trial"])
def test_restore_closes_trials_asked_for_after_the_last_save(tmp_path: Path, lost: str):
    journal = RunDir(tmp_path).optuna_journal
    config = _config(tmp_path, ["noisy_label"], num_samples=3)
    searcher = build_searcher(config, spaces_of(config.strategies), journal, in_flight=3)
    if lost == "a sampled trial":
        searcher.suggest("kept")
    searcher.save(str(tmp_path / "searcher.pkl"))
    searcher.suggest("lost")  # asked for after the save; the kill comes before the next one

    # As Tune does: a searcher object, then the saved state (which names its Optuna storage).
    restored = build_searcher(config, spaces_of(config.strategies), tmp_path / "unused.journal", in_flight=3)
    with RunDir(tmp_path).driving(resuming=True):
        restored.restore(str(tmp_path / "searcher.pkl"))
    assert _states(journal, "noisy_label").count("FAIL") == 1
    nxt = restored.suggest("next")
    if lost == "the hand-picked start":  # queued again, so the start still runs once
        assert nxt["lr"] == 3e-4 and nxt["noise_level"] == 1.0
    states = _states(journal, "noisy_label")
    assert "WAITING" not in states and states.count("RUNNING") == (2 if lost == "a sampled trial" else 1)


def test_a_searcher_restored_in_a_copied_run_directory_works_on_the_copys_journal(tmp_path: Path):
    """Tune pickles the searcher with its Optuna storage; restored while another run directory
    is driven (a copy of the first), it reads and writes that one's ``optuna.journal`` alone."""
    import shutil

    original, copy = RunDir(tmp_path / "original"), RunDir(tmp_path / "José" / "copy")
    original.path.mkdir()
    config = _config(tmp_path, ["noisy_label"], num_samples=3)
    searcher = build_searcher(config, spaces_of(config.strategies), original.optuna_journal, in_flight=2)
    searcher.suggest("a")
    searcher.on_trial_complete("a", RESULT)
    searcher.suggest("b")
    searcher.save(str(original.path / "searcher.pkl"))
    shutil.copytree(original.path, copy.path)
    before = original.optuna_journal.read_bytes()

    with copy.driving(resuming=True):
        unused = tmp_path / "unused.journal"  # as Tune does: a searcher, then its saved state
        restored = build_searcher(config, spaces_of(config.strategies), unused, in_flight=2)
        restored.restore(str(copy.path / "searcher.pkl"))
        restored.on_trial_complete("b", RESULT)
        restored.suggest("c")
    assert _states(copy.optuna_journal, "noisy_label") == ["COMPLETE", "COMPLETE", "RUNNING"]
    assert original.optuna_journal.read_bytes() == before
    assert _states(original.optuna_journal, "noisy_label") == ["COMPLETE", "RUNNING"]
    with pytest.raises(RuntimeError, match="no run directory is being driven"):
        restored.restore(str(copy.path / "searcher.pkl"))  # outside a driven run: nowhere to go


def test_a_fresh_search_drops_studies_left_by_a_run_tune_never_saved(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    config = _config(tmp_path, ["noisy_label"])
    build_searcher(config, spaces_of(config.strategies), journal, in_flight=1).suggest("orphan")
    searcher = build_searcher(config, spaces_of(config.strategies), journal, in_flight=1)
    assert _states(journal, "noisy_label") == ["WAITING"]  # only the hand-picked start, queued once
    assert searcher.suggest("x")["lr"] == 3e-4


def test_tune_hands_it_the_concurrency_limit_and_every_completion(tmp_path: Path):
    from ray.tune.search import ConcurrencyLimiter

    journal = RunDir(tmp_path).optuna_journal
    limited = ConcurrencyLimiter(_searcher(tmp_path, ["noisy_label", "max_loss"], journal, 4), 3)
    assert [limited.suggest(t) is not None for t in "abcd"] == [True, True, True, False]  # 3 at once
    limited.on_trial_complete("a", RESULT, error=True)  # failed: Tune forgets it...
    limited.on_trial_complete("a", RESULT)  # ...until --resume reruns it and it reports
    assert "COMPLETE" in _states(journal, "noisy_label")


def test_the_default_sampler_is_gp_unless_a_strategys_trials_in_flight_leave_it_nothing_to_learn():
    # Budget 16, 4 of them random start-up trials: trial i is asked after i - k + 1 are told.
    assert choose_sampler("auto", 16, 2)[0] == "gp"
    assert choose_sampler("auto", 16, 8)[0] == "gp"
    assert choose_sampler("auto", 16, 12)[0] == "gp"  # the last trial learns from 4
    sampler, why = choose_sampler("auto", 16, 13)
    assert sampler == "random" and "13 of a strategy's 16 trials in flight" in why
    assert choose_sampler("auto", 16, 40)[0] == "random"
    assert choose_sampler("tpe", 16, 16) == ("tpe", "set in the config")  # a named one is kept


def test_a_study_sizes_its_sampler_by_one_strategys_share_of_the_trials_in_flight(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    config = _config(tmp_path, ["noisy_label", "max_loss"], num_samples=16)
    spaces = spaces_of(config.strategies)

    def samplers(searcher):
        return {type(o._sampler).__name__ for o in searcher._searchers.values()}

    searcher = build_searcher(config, spaces, journal, in_flight=8)  # 4 of each strategy's 16
    assert samplers(searcher) == {"GPSampler"} and searcher.sampler[0] == "gp"
    assert searcher._searchers["noisy_label"]._sampler._n_startup_trials == 4
    assert samplers(build_searcher(config, spaces, journal, in_flight=24)) == {"GPSampler"}  # 12 of 16
    wide = build_searcher(config, spaces, journal, in_flight=32)  # 16 of 16 at once
    assert samplers(wide) == {"RandomSampler"} and "draws at random" in wide.sampler[1]
    capped = dataclasses.replace(config, concurrent_per_strategy=4)
    assert samplers(build_searcher(capped, spaces, journal, in_flight=32)) == {"GPSampler"}
    tpe = build_searcher(dataclasses.replace(config, sampler="tpe"), spaces, journal, in_flight=32)
    assert samplers(tpe) == {"TPESampler"} and tpe._searchers["noisy_label"]._sampler._constant_liar


def _drawn(sampler: optuna.samplers.BaseSampler, budget: int, in_flight: int) -> list[float]:
    """Points a toy two-objective search draws with ``in_flight`` asked and not yet told."""
    study = optuna.create_study(directions=["maximize", "maximize"], sampler=sampler)
    asked, drawn = [], []
    while len(drawn) < budget or asked:
        while len(drawn) < budget and len(asked) < in_flight:
            trial = study.ask()
            drawn.append(trial.suggest_float("x", 0.0, 1.0))
            asked.append(trial)
        trial = asked.pop(0)
        x = trial.params["x"]
        study.tell(trial, [x, (1 - x) ** 2])
    return drawn


def test_with_that_many_in_flight_gp_draws_exactly_what_random_search_does():
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    random = _drawn(make_sampler("random", 3, 16, 1), 16, 13)
    assert _drawn(make_sampler("gp", 3, 16, 13), 16, 13) == random  # choose_sampler's "random in effect"
    learning = _drawn(make_sampler("gp", 3, 16, 12), 16, 12)
    assert learning[:15] == random[:15] and learning[15] != random[15]  # one more told: GP's own


def test_the_samplers_fit_the_budget():
    assert sampler_settings("tpe", budget=16, parallel=2) == {
        "n_startup_trials": 4,
        "constant_liar": True,
        "multivariate": True,
    }
    assert sampler_settings("tpe", budget=4, parallel=1)["constant_liar"] is False
    assert (
        sampler_settings("tpe", budget=200, parallel=8)["n_startup_trials"] == 10
    )  # Optuna's default at most
    assert sampler_settings("nsga2", budget=32, parallel=4) == {"population_size": 8}
    assert sampler_settings("nsga2", budget=8, parallel=4) == {"population_size": 4}
    assert isinstance(make_sampler("tpe", 0, 16, 2), optuna.samplers.TPESampler)
    assert isinstance(make_sampler("random", 0, 8, 2), optuna.samplers.RandomSampler)
    assert isinstance(make_sampler("gp", 0, 16, 8), optuna.samplers.GPSampler)
    assert sampler_settings("gp", budget=16, parallel=8)["n_startup_trials"] == 4
    with pytest.raises(ValueError, match="unknown sampler 'grid'"):
        make_sampler("grid", 0, 8, 2)


def test_tpe_suggests_a_strategys_hyperparameters_jointly_once_its_start_is_told(tmp_path: Path):
    """Multivariate TPE: after its random start, each suggestion of the study's searcher is
    one draw from a joint density (Optuna keeps it as the trial's relative parameters, for
    the constant liar), not one fit per hyperparameter."""
    config = dataclasses.replace(_config(tmp_path, ["noisy_label"], num_samples=12), sampler="tpe")
    journal = RunDir(tmp_path).optuna_journal
    searcher = build_searcher(config, spaces_of(config.strategies), journal, in_flight=2)
    sampler = searcher._searchers["noisy_label"]._sampler
    assert sampler._n_startup_trials == 3 and sampler._multivariate and sampler._constant_liar
    for i in range(8):
        config_i = searcher.suggest(f"t{i}")
        assert config_i["trial_number"] == i
        searcher.on_trial_complete(f"t{i}", {"forget_drop": 0.1 * (i % 4), "retain_kept": 1.0 - 0.05 * i})
    study = optuna.load_study(study_name="noisy_label", storage=RunStorage(journal))
    joint = [any(k.startswith("tpe:relative_params") for k in t.system_attrs) for t in study.trials]
    assert joint == [False] * 3 + [True] * 5  # the start-up (the hand-picked start, 2 random), then TPE
    (last,) = [t for t in study.trials if t.number == 7]
    relative = json.loads(last.system_attrs["tpe:relative_params:0"])
    assert relative.keys() == last.params.keys()  # every hyperparameter from the joint draw


class _Growing:
    """A cluster that takes one more trial at every reading (picklable, as Tune saves it)."""

    def __init__(self) -> None:
        self.readings = 0

    def __call__(self) -> int:
        self.readings += 1
        return self.readings


def test_trials_in_flight_follow_the_cluster_as_it_grows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    from search_spaces.searcher import StrategySearcher

    monkeypatch.setattr(StrategySearcher, "REFRESH_S", 0.0)  # read the cluster at every suggestion
    journal = RunDir(tmp_path).optuna_journal
    config = _config(tmp_path, ["noisy_label", "max_loss"], num_samples=4)
    searcher = build_searcher(config, spaces_of(config.strategies), journal, _Growing())
    # Readings 2, 3, 4, 5 (the first sized the sampler): one more trial fits each time.
    handed = [searcher.suggest(f"t{i}") is not None for i in range(4)]
    assert handed == [True, True, True, True]
    assert searcher.limits() == (6, 3)  # 6 in flight; a strategy's share: half, rounded up
    searcher.set_max_concurrency(4)  # Tune's own limit caps it
    assert searcher.limits()[0] == 4 and searcher.suggest("t4") is None

    searcher.save(str(tmp_path / "searcher.pkl"))
    restored = build_searcher(config, spaces_of(config.strategies), journal, 1)
    with RunDir(tmp_path).driving(resuming=True):
        restored.restore(str(tmp_path / "searcher.pkl"))
    restored.set_max_concurrency(sys.maxsize)
    assert restored.limits()[0] > 6  # the cluster is read again after a restore, not the saved figure


def test_a_journal_cut_off_by_a_killed_driver_is_mended_when_the_next_driver_opens_it(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    searcher = _searcher(tmp_path, ["noisy_label"], journal, in_flight=1)
    searcher.suggest("a")
    searcher.on_trial_complete("a", RESULT)
    whole = journal.read_bytes()
    journal.write_bytes(whole + b'{"op_code": 5, "worker_id": "x", "trial_id": 1, "par')  # killed mid-append
    (tmp_path / "optuna.journal.lock").symlink_to(journal)  # the append lock it held, never freed
    assert _states(journal, "noisy_label") == ["COMPLETE"]  # opened: mended
    assert journal.read_bytes() == whole and not (tmp_path / "optuna.journal.lock").exists()
    study = optuna.load_study(study_name="noisy_label", storage=RunStorage(journal))
    study.tell(study.ask(), [0.1, 0.2])  # appends follow a whole line: the journal stays readable
    assert _states(journal, "noisy_label") == ["COMPLETE", "COMPLETE"]


def test_a_suggestion_reaches_the_journal_as_one_synced_append_before_it_is_handed_to_tune(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """Optuna appends each change of a trial on its own (created, each hyperparameter, each
    attribute); the searcher holds them and writes one synced append per suggestion."""
    import os

    journal = RunDir(tmp_path).optuna_journal
    searcher = _searcher(tmp_path, ["noisy_label"], journal, in_flight=2)
    syncs, fsync = [], os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs.append(fd), fsync(fd))[1])
    lines = len(journal.read_bytes().splitlines())
    start, sampled = searcher.suggest("a"), searcher.suggest("b")  # the hand-picked start, then TPE's
    assert len(syncs) == 2
    written = journal.read_bytes().splitlines()[lines:]
    assert len(written) >= 2 * 4  # each: its trial (or start), 3 parameters and 2 attributes, at least
    # Read by another process's storage: both trials, as they were handed to Tune.
    study = optuna.load_study(study_name="noisy_label", storage=RunStorage(journal))
    trials = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    for tune_id, config in (("a", start), ("b", sampled)):
        trial = trials[tune_id]
        assert trial.state.name == "RUNNING" and trial.number == config["trial_number"]
        assert trial.user_attrs["strategy"] == "noisy_label"
        assert len(trial.params) >= 3 and trial.params == {k: config[k] for k in trial.params}
    searcher.on_trial_complete("a", RESULT)
    assert len(syncs) == 3 and _states(journal, "noisy_label") == ["COMPLETE", "RUNNING"]


def test_writes_held_by_a_block_that_raises_still_reach_the_journal(tmp_path: Path):
    journal = RunDir(tmp_path).optuna_journal
    storage = RunStorage(journal)
    study = optuna.create_study(study_name="s", storage=storage, directions=["maximize", "maximize"])
    with pytest.raises(RuntimeError), storage.held():
        trial = study.ask()
        trial.suggest_float("lr", 1e-5, 1e-2, log=True)
        assert trial.number == 0 and study.trials[0].params.keys() == {"lr"}  # read back, held
        assert _states(journal, "s") == []  # not in the file yet
        raise RuntimeError
    (written,) = optuna.load_study(study_name="s", storage=RunStorage(journal)).trials
    assert written.state.name == "RUNNING" and written.params == {"lr": trial.params["lr"]}
    study.tell(0, [0.1, 0.2])  # appends go on after the held ones
    assert _states(journal, "s") == ["COMPLETE"]
