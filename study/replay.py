"""``python -m study.replay RUN_DIR TRIAL_ID``: rerun one trial of a study, without Ray.

Reads the study's configuration, the trial's hyperparameters and seed from
``trials.parquet`` and the original model from ``baseline/``, then runs the same trial in
this process and prints each epoch's figures beside the recorded ones. With ``--out`` the
unlearned model is saved in the format of ``<run_dir>/recommended.pt``
(``{"trial_id", "epoch", "model"}``) that the report reads.
"""

from __future__ import annotations

import sys

from study.cli import before_loading, read

if __name__ == "__main__":
    before_loading("study.replay")  # --help and --version answered before torch loads

import dataclasses
from pathlib import Path
from typing import Any

from search_spaces import STRATEGIES
from study.cohort import open_cohort
from study.config import StudyError, run_cli
from study.metrics.evidence import Evidence
from study.run.results import trial_config
from study.run.rundir import RunDir
from trainables.baseline import KINDS, measure
from trainables.settings import Compute
from trainables.trial import TrialRun, TrialSpec, run_trial


def replay_trial(run_dir: Path, trial_id: str, epochs: int | None = None, quiet: bool = False) -> TrialRun:
    """Reruns ``trial_id`` for ``epochs`` (default: all it ran); returns what it left."""
    run, study = RunDir.open(Path(run_dir))
    trials = run.read_trials()
    if trials is None:
        raise StudyError(f"{run_dir} has no results table yet; the study has not finished")
    states = {kind: run.load_baseline(kind) for kind in KINDS}
    if any(state is None for state in states.values()):
        raise StudyError(
            f"{run_dir} holds no original and retrain models yet; the study has not trained them"
        )
    params = trial_config(trials, trial_id)
    if params["strategy"] not in STRATEGIES:
        raise StudyError(
            f"trial {trial_id} ran strategy {params['strategy']!r}, which is not registered here"
        )
    recorded = trials[trials["trial_id"] == trial_id].set_index("epoch")
    epochs = epochs or int(recorded.index.max())

    def report(metrics: dict[str, float], checkpoint: Any) -> None:
        epoch = int(metrics["epoch"])
        line = f"epoch {epoch:3d}  forget_dice {metrics['forget_dice']:.4f}  retain_dice {metrics['retain_dice']:.4f}"
        if epoch in recorded.index:
            was = recorded.loc[epoch]
            line += f"  (recorded {was['forget_dice']:.4f}, {was['retain_dice']:.4f})"
        print(line, flush=True)

    print(f"replaying {params['strategy']} trial {trial_id} for {epochs} epochs: {params}", flush=True)
    cohort = open_cohort(study)
    reference, _ = measure(study, cohort, states, Compute.of(study))
    if (privacy := run.read_privacy()) is not None:  # the study's membership test, its models' figures
        evidence = Evidence.from_rows(privacy.to_dict("records"))
        if evidence.sufficient()[0]:
            forget_reference = evidence.forget_reference(cohort.split.forget, study.privacy_level)
            reference = dataclasses.replace(reference, forget_reference=forget_reference)
    spec = TrialSpec.of(study, STRATEGIES[params["strategy"]].strategy, params, epochs)
    return run_trial(spec, cohort, states["original"], reference, report=None if quiet else report)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = read("study.replay", argv)

    def replay() -> None:
        replayed = replay_trial(args.run_dir, args.trial_id, args.epochs)
        if args.out:
            epoch = int(replayed.last["epoch"])
            saved = RunDir(args.run_dir).save_recommended(args.trial_id, epoch, replayed.state, to=args.out)
            print(f"saved {saved}")

    return run_cli(replay)


if __name__ == "__main__":
    sys.exit(main())
