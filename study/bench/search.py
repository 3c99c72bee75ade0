"""``python -m study.bench search``: what Optuna's sampler buys over random search.

For each strategy and seed, two searches of the same budget over the strategy's own space,
both starting from its hand-picked configuration as a study does: the study's sampler
(``search_spaces.searcher.make_sampler``) and random search (Optuna's ``RandomSampler``,
which draws every hyperparameter independently from its range, as Ray Tune's random search
does; Tune's own cannot take a define-by-run space). Trials are asked ``parallel`` at a
time before any is told, as on a cluster with that many slots per strategy, and run
in-process (no Ray) on a small preset: the smoke cohort, its original model trained longer.
The score is the hypervolume of (forget_drop, retain_kept) above (0, 0) after the budget.
"""

from __future__ import annotations

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


def search(s: Setting, strategy: str, sampler: str, seed: int, budget: int, parallel: int) -> dict[str, Any]:
    """One search: its hypervolume after ``budget`` trials, the objectives of each trial that
    completed (``points``, in trial order) and the sampler's seconds per suggestion."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = STRATEGIES[strategy].search
    study = optuna.create_study(
        directions=["maximize", "maximize"], sampler=make_sampler(sampler, seed, budget, parallel)
    )
    study.enqueue_trial(starting_point(space))
    asking, done = 0.0, 0
    while done < budget:
        started = time.perf_counter()
        trials = [study.ask() for _ in range(min(parallel, budget - done))]
        for trial in trials:
            space.function(trial)
        asking += time.perf_counter() - started
        for trial in trials:
            values = _trial(s, strategy, {**trial.params, "trial_number": trial.number})
            study.tell(trial, values, state=optuna.trial.TrialState.FAIL if values is None else None)
        done += len(trials)
    points = [t.values for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    return {"hypervolume": hypervolume(points), "points": points, "seconds_per_suggestion": asking / budget}


def run(
    strategies: list[str], seeds: int, budget: int, parallel: int, sampler: str = "tpe"
) -> list[dict[str, Any]]:
    """Per strategy and seed: both searches' hypervolumes and their ratio; then a median row."""
    s = setting()
    torch.set_num_threads(1)
    rows = []
    for strategy in strategies:
        for seed in range(seeds):
            found = {name: search(s, strategy, name, seed, budget, parallel) for name in (sampler, "random")}
            print(f"search bench: {strategy} seed {seed}: {found}", flush=True)
            rows.append(
                {
                    "strategy": strategy,
                    "seed": seed,
                    f"hypervolume_{sampler}": found[sampler]["hypervolume"],
                    "hypervolume_random": found["random"]["hypervolume"],
                    "ratio": found[sampler]["hypervolume"] / max(found["random"]["hypervolume"], 1e-12),
                    f"ms_per_suggestion_{sampler}": 1e3 * found[sampler]["seconds_per_suggestion"],
                    "ms_per_suggestion_random": 1e3 * found["random"]["seconds_per_suggestion"],
                }
            )
    ratios = [row["ratio"] for row in rows]
    rows.append(
        {
            "strategy": "median over all",
            "seed": len(rows),
            "ratio": statistics.median(ratios),
            "wins": sum(r >= 1.0 for r in ratios),
            f"ms_per_suggestion_{sampler}": statistics.median(
                r[f"ms_per_suggestion_{sampler}"] for r in rows
            ),
        }
    )
    return rows
