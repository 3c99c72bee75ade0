"""``python -m study.bench search``: what Optuna's sampler buys over random search.

For each strategy and seed, searches of the same budget over the strategy's own space, all
starting from its hand-picked configuration as a study does: each sampler asked for
(``search_spaces.searcher.make_sampler``: TPE with the constant liar, the Gaussian-process
sampler, NSGA-II) at each number of trials in flight, and random search (Optuna's
``RandomSampler``, which draws every hyperparameter independently from its range, as Ray
Tune's random search does; Tune's own cannot take a define-by-run space; what it draws does
not depend on the trials in flight). ``K`` in flight: ``K`` trials are asked before the
first is told, then one more is asked as each is told, as Tune keeps a cluster's ``K`` slots
busy with trials of equal length. Trials run in-process (no Ray) on a small preset: the
smoke cohort, its original model trained longer. The score is the hypervolume of
(forget_drop, retain_kept) above (0, 0) after the budget.
"""

from __future__ import annotations

import collections
import dataclasses
import statistics
import time
from typing import Any

import optuna
import torch

from analysis.pareto import hypervolume
from search_spaces import STRATEGIES, check_config, starting_point
from search_spaces.searcher import make_sampler
from study.cohort import Cohort, open_cohort
from study.config import OBJECTIVES, StudyConfig, load_config
from study.metrics import Reference
from study.model import initial_state
from trainables.baseline import reference_models
from trainables.trial import TrialSpec, run_trial

#: The small preset: the smoke preset's cohort and network, a longer-trained original model.
SMALL = {"baseline_epochs": 40, "max_epochs": 6, "horizons": [6], "eval_every": 6}


@dataclasses.dataclass(frozen=True)
class Setting:
    """What every trial of the bench shares."""

    config: StudyConfig
    cohort: Cohort
    original: dict[str, torch.Tensor]
    reference: Reference


def setting(cache_dir: str = "", **changes: Any) -> Setting:
    """The small preset (with ``changes``): its cohort, its original model and retrain
    reference (trained once, cached) and their ``Reference``."""
    overrides = {"run_dir": "unused", "cache_dir": cache_dir or None, **SMALL, **changes}
    config = check_config(load_config("smoke", overrides=overrides))
    cohort = open_cohort(config)
    start, _ = initial_state(config, cohort.n_classes)
    references = reference_models(config, cohort, start).result()
    return Setting(config, cohort, references.states["original"], references.reference)


def _trial(s: Setting, strategy: str, params: dict[str, Any]) -> tuple[float, float] | None:
    """The trial's objectives after its epochs, or ``None`` when it diverged."""
    spec = TrialSpec.of(s.config, STRATEGIES[strategy].strategy, {**params, "strategy": strategy})
    last = run_trial(spec, s.cohort, s.original, s.reference).last
    return None if last["diverged"] else tuple(last[o] for o in OBJECTIVES["reference"])  # type: ignore[return-value]


def search(s: Setting, strategy: str, sampler: str, seed: int, budget: int, in_flight: int) -> dict[str, Any]:
    """One search with ``in_flight`` trials asked and not yet told at any time: its
    hypervolume after ``budget`` trials, the objectives of each trial that completed
    (``points``, in trial order) and the sampler's seconds per suggestion."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = STRATEGIES[strategy].search
    study = optuna.create_study(
        directions=["maximize", "maximize"], sampler=make_sampler(sampler, seed, budget, in_flight)
    )
    study.enqueue_trial(starting_point(space))
    asking, asked, running = 0.0, 0, collections.deque()
    while asked < budget or running:
        while asked < budget and len(running) < in_flight:
            started = time.perf_counter()
            trial = study.ask()
            space.function(trial)
            asking += time.perf_counter() - started
            running.append(trial)
            asked += 1
        trial = running.popleft()  # the oldest finishes first: trials of equal length
        values = _trial(s, strategy, {**trial.params, "trial_number": trial.number})
        study.tell(trial, values, state=optuna.trial.TrialState.FAIL if values is None else None)
    points = [t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"hypervolume": hypervolume(points), "points": points, "seconds_per_suggestion": asking / budget}


def run(
    strategies: list[str], seeds: int, budget: int, in_flight: list[int], samplers: list[str]
) -> list[dict[str, Any]]:
    """Per strategy, seed and number in flight: each sampler's hypervolume, random search's,
    their ratio and the sampler's time per suggestion; then per number in flight and sampler,
    a median row."""
    s = setting()
    torch.set_num_threads(1)
    rows = []
    for strategy in strategies:
        for seed in range(seeds):
            random = search(s, strategy, "random", seed, budget, 1)
            for k in in_flight:
                for name in samplers:
                    found = search(s, strategy, name, seed, budget, k)
                    ratio = found["hypervolume"] / max(random["hypervolume"], 1e-12)
                    print(
                        f"search bench: {strategy} seed {seed}, {k} in flight: {name} "
                        f"{found['hypervolume']:.4f}, random {random['hypervolume']:.4f}, ratio {ratio:.3f}",
                        flush=True,
                    )
                    rows.append(
                        {
                            "strategy": strategy,
                            "seed": seed,
                            "in_flight": k,
                            "sampler": name,
                            "hypervolume": found["hypervolume"],
                            "hypervolume_random": random["hypervolume"],
                            "ratio": ratio,
                            "ms_per_suggestion": 1e3 * found["seconds_per_suggestion"],
                            "ms_per_suggestion_random": 1e3 * random["seconds_per_suggestion"],
                        }
                    )
    medians = []
    for k in in_flight:
        for name in samplers:
            mine = [r for r in rows if r["in_flight"] == k and r["sampler"] == name]
            ratios = [r["ratio"] for r in mine]
            medians.append(
                {
                    "strategy": "median over all",
                    "seed": len(mine),
                    "in_flight": k,
                    "sampler": name,
                    "ratio": statistics.median(ratios),
                    "wins": sum(r >= 1.0 for r in ratios),
                    "ms_per_suggestion": statistics.median(r["ms_per_suggestion"] for r in mine),
                }
            )
    return rows + medians
