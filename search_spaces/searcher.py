"""One Tune searcher for a whole study: every strategy's own Optuna search, side by side.

Ray runs one Tune experiment per cluster at a time, so a study is a single experiment whose
searcher gives each strategy its own Optuna study (in the run directory's Optuna storage)
and its share of the trials. Strategies take turns, so all of them have trials on the
cluster at once and no GPU waits for one strategy's stragglers; a cap on each strategy's
running trials keeps room for its searcher to learn from finished ones.
"""

from __future__ import annotations

import contextlib
import math
import os
import pickle
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import optuna
from optuna.storages.journal import JournalFileBackend
from ray.tune.search import ConcurrencyLimiter, Searcher, SearchGenerator
from ray.tune.search.optuna import OptunaSearch

from search_spaces.space import DefineByRun, SearchSpace, starting_point
from study.config import OBJECTIVES, StudyConfig
from study.run.results import is_diverged


def sampler_settings(name: str, budget: int, parallel: int) -> dict[str, Any]:
    """The settings of Optuna's sampler ``name`` ("tpe", "nsga2", "gp" or "random") fitted to
    ``budget`` trials of which up to ``parallel`` run at once.

    TPE's default start-up phase (10 random trials) would spend most of a small budget at
    random: a quarter of the budget (at least 2) is random here, and with trials in flight
    the constant liar keeps TPE from proposing the same point twice. TPE is multivariate, one
    joint density over a strategy's space (each strategy's is fixed): a suggestion splits the
    trials into good and bad once, not once per hyperparameter as Optuna's default for two
    objectives does: a third of the time a suggestion (README, Performance). NSGA-II's
    default population (50) would never reach a second generation: a population of a
    quarter of the budget (at least 4) gets several. The Gaussian-process sampler ("gp") has
    TPE's random start; it conditions on the trials in flight itself (its q-batch
    acquisition).
    """
    if name == "tpe":
        return {
            "n_startup_trials": min(10, max(2, budget // 4)),
            "constant_liar": parallel > 1,
            "multivariate": True,
        }
    if name == "gp":
        return {"n_startup_trials": min(10, max(2, budget // 4)), "warn_independent_sampling": False}
    if name == "nsga2":
        return {"population_size": max(4, budget // 4)}
    if name == "random":
        return {}
    raise ValueError(f"unknown sampler {name!r}")


#: The sampler of each name.
SAMPLERS = {
    "tpe": optuna.samplers.TPESampler,
    "nsga2": optuna.samplers.NSGAIISampler,
    "gp": optuna.samplers.GPSampler,
    "random": optuna.samplers.RandomSampler,
}


class HeldJournal(JournalFileBackend):
    """Optuna's journal file, whose appends inside ``held()`` are written at its end, together.

    Optuna writes each change of a trial (its creation, each hyperparameter, each attribute,
    its values) as an append of its own, each locked and ``fsync``-ed: about a dozen per
    trial, a fifth of the driver's time per trial at a thousand of them (``python -m
    study.bench scale``). The searcher holds a suggestion's appends until it hands the trial
    to Tune: one locked, synced append, written before Tune can save a state that names the
    trial (a driver killed before that leaves no trial, or an open one that the next
    restore closes). Meanwhile the held logs are read back as if written (Optuna replays
    each of its own writes at once). Only one writer may append while logs are held: the run
    directory's driver.
    """

    def __init__(self, file_path: str) -> None:
        super().__init__(file_path)
        self._held: list[dict[str, Any]] | None = None
        self._held_from = 0  # the log number of the first held log: the file's logs then

    def read_logs(self, log_number_from: int) -> Iterator[dict[str, Any]]:
        if self._held is None:
            yield from super().read_logs(log_number_from)
            return
        if log_number_from < self._held_from:
            yield from super().read_logs(log_number_from)  # the file ends there: no other writer
        yield from self._held[max(0, log_number_from - self._held_from) :]

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        if self._held is None:
            super().append_logs(logs)
        else:
            self._held.extend(logs)

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        """Appends inside the ``with`` block are written as one as it ends, however it ends."""
        if self._held is not None:  # already held by an outer block
            yield
            return
        for _ in super().read_logs(max(self._log_number_offset)):
            pass  # to the file's end: its number of logs is then the largest offset known
        self._held_from, self._held = max(self._log_number_offset), []
        try:
            yield
        finally:
            held, self._held = self._held, None
            if held:
                super().append_logs(held)


class RunStorage(optuna.storages.JournalStorage):
    """The Optuna storage of a run directory: its journal (``optuna.journal``), Optuna's
    append-only file storage, which a reader replays in memory. SQLite's storage read every
    trial back from the database at each suggestion, which made the searcher the driver's
    largest cost at a thousand trials (``python -m study.bench scale``). Inside ``held()``,
    its writes reach the file as one append (``HeldJournal``).

    Opened by the study's one driver (the run directory's lock), the journal is first made
    whole (``mend_journal``). Tune pickles the searcher, and Optuna's studies with it, into
    the experiment's saved state. Pickled, this storage is a name only: unpickled, it is the
    storage of the run directory being driven then (``RunDir.driven``), so that a copied or
    moved run directory resumes into its own journal, never into the one it came from.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        mend_journal(self.path)
        self._journal = HeldJournal(str(self.path))
        super().__init__(self._journal)

    def held(self) -> contextlib.AbstractContextManager[None]:
        """The ``with`` block's writes go to the journal as one append, as the block ends."""
        return self._journal.held()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_storage_of_driven_run, ())


def mend_journal(path: Path) -> None:
    """The journal as a killed driver may leave it, made whole: a last line cut off mid-append
    is dropped (Optuna's reader skips it, but the next append would follow it and leave the
    file unreadable), and the append lock that driver held is freed (no other writer exists:
    the run directory has one driver)."""
    Path(f"{path}.lock").unlink(missing_ok=True)
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as journal:
        journal.seek(-1, os.SEEK_END)
        if journal.read(1) == b"\n":
            return
        journal.seek(0)
        data = journal.read()
        journal.truncate(data.rfind(b"\n") + 1)


def _storage_of_driven_run() -> RunStorage:
    from study.run.rundir import RunDir

    return RunStorage(RunDir.driven().optuna_journal)


def make_sampler(name: str, seed: int, budget: int, parallel: int) -> optuna.samplers.BaseSampler:
    """Optuna's sampler ``name``, seeded, with ``sampler_settings``."""
    settings = sampler_settings(name, budget, parallel)  # an unknown name is a ValueError here
    return SAMPLERS[name](seed=seed, **settings)


def strategy_share(total: int, strategies: int, num_samples: int, per_strategy: int = 0) -> int:
    """Trials of one strategy in flight at most when ``total`` are: ``per_strategy`` when set,
    else an even share of ``total``, at least a quarter of ``num_samples`` (so that a search
    keeps learning from finished trials while the others wait)."""
    return per_strategy or max(math.ceil(num_samples / 4), math.ceil(total / strategies))


def choose_sampler(name: str, budget: int, in_flight: int) -> tuple[str, str]:
    """``(sampler, why)`` for a search of ``budget`` trials with up to ``in_flight`` asked and
    not yet told: ``name`` itself, unless it is ``"auto"``.

    ``"auto"`` is the Gaussian-process sampler, ahead of TPE and random search at 2 and 8 of
    16 in flight (``python -m study.bench search``; README, Performance), except where no
    suggestion could learn from anything: trial ``i`` is asked when ``i - in_flight + 1``
    trials have been told, and GP draws at random until ``n_startup_trials`` have, so with
    ``in_flight > budget - n_startup_trials`` every trial is drawn at random whatever the
    sampler. Random search is then what the search is, said so, and free of GP's cost.
    """
    if name != "auto":
        return name, "set in the config"
    startup = sampler_settings("gp", budget, in_flight)["n_startup_trials"]
    k = min(in_flight, budget)
    if k > budget - startup:
        return "random", (
            f"auto: with {k} of a strategy's {budget} trials in flight, each is asked before "
            f"{startup} have finished, so any sampler draws at random; a larger num_samples or a "
            "smaller concurrent_per_strategy lets the search learn"
        )
    return "gp", f"auto: up to {k} of a strategy's {budget} trials in flight"


class StrategySearcher(Searcher):
    """Suggests the study's trials, ``num_samples`` per strategy, strategies taking turns.

    A suggested config carries ``strategy`` (which objective the trial trains) and
    ``trial_number`` (its Optuna trial number, which seeds it) beside the hyperparameters.
    A trial that fails stays open in its Optuna study: ``--resume`` reruns it and its
    result is told then. A trial that diverged finished, and its result is a failure: its
    Optuna trial is told ``FAIL`` without values (its figures are its last finite model's),
    so the sampler does not learn from them.
    """

    #: Seconds between two readings of how many trials the cluster takes.
    REFRESH_S = 5.0

    def __init__(
        self,
        searchers: dict[str, OptunaSearch],
        num_samples: int,
        in_flight: int | Callable[[], int],
        objectives: tuple[str, str] = OBJECTIVES["reference"],
        per_strategy: int = 0,
    ) -> None:
        """``in_flight``: how many trials may be in flight (running or pending) at once, or a
        callable read again every ``REFRESH_S`` seconds (``study.run.cluster.Capacity``: the
        cluster as it grows); ``per_strategy``: one strategy's share of them (0: an even
        share, at least a quarter of ``num_samples``)."""
        super().__init__(metric=list(objectives), mode=["max", "max"])
        self._searchers = searchers
        self._num_samples = num_samples
        self._in_flight = in_flight
        self._per_strategy = per_strategy
        self._strategy_of: dict[str, str] = {}  # Tune trial id -> strategy
        self._number_of: dict[str, int] = {}  # Tune trial id -> Optuna trial number
        self._running: dict[str, set[str]] = {s: set() for s in searchers}
        self._started = dict.fromkeys(searchers, 0)
        self._turn = 0
        self._tune_limit = sys.maxsize
        self._limit, self._read_at = 1, -math.inf
        self.sampler = ("", "")  # (the strategies' Optuna sampler, why it): set by build_searcher

    def set_search_properties(self, metric: Any, mode: Any, config: dict, **spec: Any) -> bool:
        return True  # every strategy's search is set up already

    def set_max_concurrency(self, max_concurrent: int) -> bool:
        """Takes ``TuneConfig(max_concurrent_trials)`` on itself, so that Tune's
        ``ConcurrencyLimiter`` passes every completion through, a resumed trial's included."""
        self._tune_limit = max_concurrent
        return True

    def limits(self) -> tuple[int, int]:
        """``(trials in flight at most, of one strategy at most)`` now."""
        if time.monotonic() - self._read_at >= self.REFRESH_S:
            self._limit = self._in_flight() if callable(self._in_flight) else self._in_flight
            self._read_at = time.monotonic()
        total = max(1, min(self._limit, self._tune_limit))
        return total, strategy_share(total, len(self._searchers), self._num_samples, self._per_strategy)

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        strategies = list(self._searchers)
        total, per_strategy = self.limits()
        if sum(map(len, self._running.values())) >= total:
            return None
        for offset in range(len(strategies)):
            strategy = strategies[(self._turn + offset) % len(strategies)]
            full = self._started[strategy] >= self._num_samples
            if full or len(self._running[strategy]) >= per_strategy:
                continue
            search = self._searchers[strategy]
            with _held_writes(search):  # the trial, each of its parameters and attributes: one append
                config = search.suggest(trial_id)
                # Optuna's trial names the Tune trial (its rows in trials.parquet, its folder).
                asked = search._ot_trials[trial_id]  # OptunaSearch's ask()ed trial
                asked.set_user_attr("tune_trial_id", trial_id)
                asked.set_user_attr("strategy", strategy)
            self._turn = (self._turn + offset + 1) % len(strategies)
            self._started[strategy] += 1
            self._running[strategy].add(trial_id)
            self._strategy_of[trial_id] = strategy
            self._number_of[trial_id] = int(config["trial_number"])
            return {**config, "strategy": strategy}
        if all(n >= self._num_samples for n in self._started.values()):
            return Searcher.FINISHED
        return None  # every strategy with trials left is at its cap: Tune asks again later

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        if trial_id in self._strategy_of:
            self._searchers[self._strategy_of[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        strategy = self._strategy_of.get(trial_id)
        if strategy is None:
            return
        self._running[strategy].discard(trial_id)
        if error:
            return
        if result is not None and is_diverged(result):
            # OptunaSearch tells FAIL when it gets no values and an error, and marks the trial
            # done in its own records (``_completed_trials``), which Tune saves with it.
            self._searchers[strategy].on_trial_complete(trial_id, None, error=True)
        else:
            self._searchers[strategy].on_trial_complete(trial_id, result)

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__.copy(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))
        self._read_at = -math.inf  # another process's clock: read the cluster again now
        self._close_lost_trials()

    def _close_lost_trials(self) -> None:
        """Fails Optuna trials asked for after the experiment state was last saved.

        A study killed between a suggestion and the next save of Tune's experiment state
        leaves an Optuna trial that no Tune trial will ever report on. It is marked failed;
        a hand-picked starting point among them is queued again so that it still runs. Only
        open (``RUNNING``) trials are looked at: a diverged trial, told ``FAIL``, is left as it is.
        """
        for strategy in self._searchers:
            study = optuna.load_study(study_name=strategy, storage=_storage_of_driven_run())
            known = {n for t, n in self._number_of.items() if self._strategy_of[t] == strategy}
            for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
                if trial.number in known:
                    continue
                study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
                if "fixed_params" in trial.system_attrs:
                    study.enqueue_trial(trial.system_attrs["fixed_params"])


def _held_writes(search: OptunaSearch) -> contextlib.AbstractContextManager[None]:
    """``search``'s writes to its Optuna storage inside the ``with`` block as one append, where
    that storage is a run directory's journal."""
    storage = getattr(search._ot_study, "_storage", None)
    return storage.held() if isinstance(storage, RunStorage) else contextlib.nullcontext()


def build_searcher(
    config: StudyConfig,
    spaces: Mapping[str, SearchSpace],
    journal: Path,
    in_flight: int | Callable[[], int],
) -> StrategySearcher:
    """A fresh searcher for ``config``'s strategies (``spaces``: each one's search space),
    ``in_flight`` trials at once (a number, or a callable read as the study runs); earlier
    Optuna studies of the same names in the ``journal`` (left by a study that was killed
    before Tune saved anything) are dropped."""
    storage = RunStorage(journal)
    existing = {summary.study_name for summary in optuna.get_all_study_summaries(storage)}
    parallel = in_flight() if callable(in_flight) else in_flight
    share = strategy_share(
        parallel, len(config.strategies), config.num_samples, config.concurrent_per_strategy
    )
    sampler, why = choose_sampler(config.sampler, config.num_samples, share)
    searchers = {}
    for strategy in config.strategies:
        if strategy in existing:
            optuna.delete_study(study_name=strategy, storage=storage)
        bounds = tuple((name, *low_high) for name, low_high in config.search_bounds.items())
        start = [starting_point(spaces[strategy], config.search_bounds)] if config.warm_start else None
        searchers[strategy] = OptunaSearch(
            space=DefineByRun(spaces[strategy].function, bounds),
            metric=list(OBJECTIVES[config.objective]),
            mode=["max", "max"],
            sampler=make_sampler(sampler, config.seed, config.num_samples, share),
            study_name=strategy,
            storage=storage,
            seed=config.seed,
            points_to_evaluate=start,
        )
        # optuna-dashboard and load_study show the objectives by name, not "Objective 0/1".
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # since Optuna 3.2
            optuna.load_study(study_name=strategy, storage=storage).set_metric_names(
                list(OBJECTIVES[config.objective])
            )
    searcher = StrategySearcher(
        searchers,
        config.num_samples,
        in_flight,
        OBJECTIVES[config.objective],
        config.concurrent_per_strategy,
    )
    searcher.sampler = (sampler, why)
    return searcher


class StudySearchGenerator(SearchGenerator):
    """Tune's wrapper of the searcher, except that, restored, it creates the remaining trials
    in the experiment where the study is now.

    Ray 2.60 saves the ``Experiment`` (its storage included) with the search state and
    restores it as saved: a study whose run directory was copied or moved, or whose
    experiment was copied to other storage, would create its new trials in the old place,
    the original's experiment. Restored here, the experiment's storage is the driven run's
    (``RunDir.driven``).
    """

    def set_state(self, state: dict) -> None:
        import copy

        from study.run.rundir import RunDir

        super().set_state(state)
        storage = RunDir.driven().storage
        # As Tune moves the trials it restores (``TuneController._restore_trials``).
        here = copy.copy(self._experiment.storage)
        here.storage_filesystem, here.storage_fs_path = storage.filesystem()
        here.experiment_dir_name = storage.name
        self._experiment.storage = self._experiment.spec["storage"] = here


def search_algorithm(searcher: StrategySearcher, total: int) -> StudySearchGenerator:
    """What ``TuneConfig(search_alg=...)`` gets: ``searcher``, as Tune would wrap it for
    ``max_concurrent_trials=total`` (up to ``total`` trials pending, which the searcher keeps
    to the cluster's capacity), in a ``StudySearchGenerator``."""
    return StudySearchGenerator(ConcurrencyLimiter(searcher, max_concurrent=total))
