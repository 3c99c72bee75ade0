"""``python -m trainables.replay RUN_DIR TRIAL_ID``: rerun one trial of a study, without Ray.

Reads the study's configuration, the trial's hyperparameters and seed from
``trials.parquet`` and the original model from ``baseline/``, then runs the same epoch
loop in this process and prints each epoch's figures beside the recorded ones. With
``--out`` the unlearned model is saved in the format of ``<run_dir>/recommended.pt``
(``{"trial_id", "epoch", "model"}``) that the report reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from study.cli import run_cli
from study.config import StudyConfig
from study.data import Cohort, open_cohort
from study.errors import StudyError
from study.metrics import Reference
from study.results import params_of
from study.run import RunDir
from trainables import STRATEGIES
from trainables.baseline import BASELINES, measure_baselines
from trainables.loop import run_epochs
from trainables.strategy import Strategy
from trainables.trial import build_trial, loop_settings


def trial_params(trials: pd.DataFrame, trial_id: str) -> dict[str, Any]:
    """The config ``trial_id`` received: ``strategy``, ``trial_number`` and its hyperparameters."""
    rows = trials[trials["trial_id"] == trial_id]
    if rows.empty:
        raise StudyError(f"trial {trial_id!r} is not in the study's results; see its trial_id column")
    first = rows.iloc[0]
    return {**params_of(first), "strategy": first["strategy"], "trial_number": int(first["trial_number"])}


def replayed_state(
    strategy: type[Strategy],
    params: dict[str, Any],
    epochs: int,
    study: StudyConfig,
    cohort: Cohort,
    original_state: dict[str, torch.Tensor],
    reference: Reference,
    device: str = "",
    report: Callable[[dict[str, float]], None] | None = None,
) -> tuple[nn.Module, dict[str, float]]:
    """The model after ``epochs`` epochs of the ``strategy`` trial with config ``params``, and
    its last report: the metrics with ``epoch`` (the last epoch run) and ``diverged``.

    Everything comes in as objects, so a Ray task on any node can run it.
    """
    torch.set_num_threads(study.cpus_per_trial)
    model, unlearning = build_trial(strategy, params, study, cohort, original_state)
    settings = dataclasses.replace(loop_settings(params, study, reference, device), max_epochs=epochs)
    last: dict[str, float] = {}

    def on_report(metrics: dict[str, float], state: Any) -> None:
        last.clear()
        last.update(metrics)
        if report is not None:
            report(metrics)

    run_epochs(model, unlearning, cohort, settings, on_report)
    return model, last


#: Fresh seeds are trial numbers from here on, which no search reaches.
FRESH_SEEDS = 1_000_000


def rerun(
    strategy: type[Strategy],
    params: dict[str, Any],
    epochs: int,
    study: StudyConfig,
    cohort: Cohort,
    original_state: dict[str, torch.Tensor],
    reference: Reference,
    changes: dict[str, Any],
    device: str = "",
) -> list[dict[str, float]]:
    """Every epoch's report of the trial ``params`` rerun with ``changes`` to its config: a fresh
    seed (``{"trial_number": FRESH_SEEDS + k}``, which seeds the loop and the strategy) or
    another ``bn_mode``."""
    reports: list[dict[str, float]] = []
    changed = {**params, **changes}
    replayed_state(
        strategy, changed, epochs, study, cohort, original_state, reference, device, reports.append
    )
    return reports


def replay_trial(
    run_dir: Path, trial_id: str, epochs: int | None = None, quiet: bool = False
) -> tuple[nn.Module, dict[str, float]]:
    """Reruns ``trial_id`` for ``epochs`` (default: all it ran); returns the model and its last
    report (metrics, ``epoch``, ``diverged``)."""
    run, study = RunDir.open(Path(run_dir))
    trials = run.read_trials()
    if trials is None:
        raise StudyError(f"{run_dir} has no results table yet; the study has not finished")
    states = {name: run.load_baseline(name) for name in BASELINES}
    if any(state is None for state in states.values()):
        raise StudyError(
            f"{run_dir} holds no original and retrain models yet; the study has not trained them"
        )
    params = trial_params(trials, trial_id)
    if params["strategy"] not in STRATEGIES:
        raise StudyError(
            f"trial {trial_id} ran strategy {params['strategy']!r}, which is not registered here"
        )
    recorded = trials[trials["trial_id"] == trial_id].set_index("epoch")
    epochs = epochs or int(recorded.index.max())

    def report(metrics: dict[str, float]) -> None:
        epoch = int(metrics["epoch"])
        line = f"epoch {epoch:3d}  forget_dice {metrics['forget_dice']:.4f}  retain_dice {metrics['retain_dice']:.4f}"
        if epoch in recorded.index:
            was = recorded.loc[epoch]
            line += f"  (recorded {was['forget_dice']:.4f}, {was['retain_dice']:.4f})"
        print(line, flush=True)

    print(f"replaying {params['strategy']} trial {trial_id} for {epochs} epochs: {params}", flush=True)
    cohort = open_cohort(study)
    reference = measure_baselines(study, cohort, states, study.cpus_per_trial)
    return replayed_state(
        STRATEGIES[params["strategy"]].strategy,
        params,
        epochs,
        study,
        cohort,
        states["original"],
        reference,
        report=None if quiet else report,
    )


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m trainables.replay", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("trial_id")
    parser.add_argument("--epochs", type=int, help="stop after this many epochs (a horizon)")
    parser.add_argument("--out", type=Path, help="save the unlearned model here (as recommended.pt)")
    args = parser.parse_args(argv)

    def replay() -> None:
        model, metrics = replay_trial(args.run_dir, args.trial_id, args.epochs)
        if args.out:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            saved = RunDir(args.run_dir).save_recommended(
                args.trial_id, int(metrics["epoch"]), state, to=args.out
            )
            print(f"saved {saved}")

    return run_cli(replay)


if __name__ == "__main__":
    sys.exit(main())
