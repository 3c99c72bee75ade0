"""``python -m trainables.replay RUN_DIR TRIAL_ID``: rerun one trial of a study, without Ray.

Reads the study's configuration, the trial's hyperparameters and seed from
``trials.parquet`` and the original model from ``baseline/``, then runs the same epoch
loop in this process and prints each epoch's figures beside the recorded ones. With
``--out`` the unlearned model is saved as ``{"trial_id", "epoch", "model": state_dict}``,
the format of ``<run_dir>/recommended.pt`` that the report reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from study.cli import run_cli
from study.config import read_run_config
from study.data import open_cohort
from study.errors import StudyError
from study.results import TRIALS_FILE
from trainables.loop import run_epochs
from trainables.tune_trainable import build_trial, loop_settings


def trial_params(trials: pd.DataFrame, trial_id: str) -> tuple[str, dict[str, Any]]:
    """``(strategy, config)`` of ``trial_id`` as the trial received them."""
    rows = trials[trials["trial_id"] == trial_id]
    if rows.empty:
        raise StudyError(f"trial {trial_id!r} is not in {TRIALS_FILE}; see its trial_id column")
    first = rows.iloc[0]
    params = {
        column.removeprefix("param_"): value.item() if hasattr(value, "item") else value
        for column, value in first.items()
        if column.startswith("param_") and not (isinstance(value, float) and math.isnan(value))
    }
    return first["strategy"], {**params, "trial_number": int(first["trial_number"])}


def replay_trial(
    run_dir: Path, trial_id: str, epochs: int | None = None, quiet: bool = False
) -> tuple[nn.Module, dict[str, float]]:
    """Reruns ``trial_id`` for ``epochs`` (default: all it ran); returns the model and last metrics."""
    run_dir = Path(run_dir)
    study = read_run_config(run_dir)
    if not (run_dir / TRIALS_FILE).is_file():
        raise StudyError(f"{run_dir} has no {TRIALS_FILE}; the study has not finished")
    trials = pd.read_parquet(run_dir / TRIALS_FILE)
    strategy_name, params = trial_params(trials, trial_id)
    recorded = trials[trials["trial_id"] == trial_id].set_index("epoch")
    epochs = epochs or int(recorded.index.max())
    cohort = open_cohort(study)
    original_state = torch.load(run_dir / "baseline" / "original.pt", map_location="cpu", weights_only=True)
    original_metrics = json.loads((run_dir / "baseline" / "metrics.json").read_text())["original"]

    torch.set_num_threads(study.cpus_per_trial)
    model, strategy = build_trial(strategy_name, params, study, cohort, original_state)
    settings = dataclasses.replace(loop_settings(params, study, original_metrics), max_epochs=epochs)

    def report(metrics: dict[str, float], state: Any) -> None:
        if quiet:
            return
        epoch = int(metrics["epoch"])
        was = recorded.loc[epoch] if epoch in recorded.index else None
        line = f"epoch {epoch:3d}  forget_dice {metrics['forget_dice']:.4f}  retain_dice {metrics['retain_dice']:.4f}"
        if was is not None:
            line += f"  (recorded {was['forget_dice']:.4f}, {was['retain_dice']:.4f})"
        print(line, flush=True)

    print(f"replaying {strategy_name} trial {trial_id} for {epochs} epochs: {params}", flush=True)
    metrics = run_epochs(model, strategy, cohort, settings, report)
    return model, metrics


def replayed_weights(run_dir: Path, trial_id: str, epochs: int, threads: int = 1) -> dict:
    """``{"trial_id", "epoch", "model"}`` after replaying ``trial_id`` for ``epochs`` (CPU tensors)."""
    torch.set_num_threads(threads)
    model, _ = replay_trial(run_dir, trial_id, epochs, quiet=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"trial_id": trial_id, "epoch": epochs, "model": state}


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m trainables.replay", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("trial_id")
    parser.add_argument("--epochs", type=int, help="stop after this many epochs (a horizon)")
    parser.add_argument("--out", type=Path, help="save the unlearned model's state dict here")
    args = parser.parse_args(argv)

    def replay() -> None:
        model, metrics = replay_trial(args.run_dir, args.trial_id, args.epochs)
        if args.out:
            state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
            payload = {"trial_id": args.trial_id, "epoch": int(metrics["epoch"]), "model": state}
            torch.save(payload, args.out)
            print(f"saved {args.out}")

    return run_cli(replay)


if __name__ == "__main__":
    sys.exit(main())
