"""The flags of ``python -m study.launch`` (DESIGN section 2); each maps onto the
``StudyConfig`` field of its name."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from study import __version__
from study.config.objectives import OBJECTIVES
from study.config.sources import PRESETS, load_config


def _ids(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(part) for part in _ids(text)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parser() -> argparse.ArgumentParser:
    """The command line: ``--preset``, ``--config``, ``--resume`` and one flag per setting,
    each help naming the demo preset's value (the default)."""
    demo = load_config("demo")

    def shown(field: str) -> str:
        value = getattr(demo, field)
        value = ",".join(map(str, value)) if isinstance(value, list) else value
        return f"demo: {value}" if value not in ("", None, []) else "demo: none"

    p = argparse.ArgumentParser(
        prog="python -m study.launch",
        description="Hyperparameter study of machine unlearning for 3D brain-MRI segmentation: "
        "every strategy's trials on a Ray cluster, a Pareto front and a recommended configuration.",
        epilog="Settings not given come from --config, then the preset (see README, Settings).",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    p.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="Tune's own status tables and trial boxes, and Ray's lines per checkpoint (default: "
        "one line per trial and a periodic status line)",
    )
    p.add_argument("--preset", choices=PRESETS, default="demo", help="base settings (default: demo)")
    p.add_argument("--config", type=Path, help="TOML file with any StudyConfig keys (default: none)")
    p.add_argument("--run-dir", dest="run_dir", help="output folder (default: runs/<preset>-<time>)")
    p.add_argument("--data", help="MRBrainS18 training folder (default: the synthetic cohort)")
    p.add_argument(
        "--weights", help="MedicalNet checkpoint (.pth) to start the original model from (default: random)"
    )
    p.add_argument("--strategies", type=_ids, help="comma-separated strategy names (default: all seven)")
    p.add_argument(
        "--num-samples", dest="num_samples", type=int, help=f"trials per strategy ({shown('num_samples')})"
    )
    p.add_argument(
        "--max-epochs", dest="max_epochs", type=int, help=f"epochs per trial ({shown('max_epochs')})"
    )
    p.add_argument("--horizons", type=_ints, help=f"epochs the tables report ({shown('horizons')})")
    p.add_argument(
        "--forget", type=_ids, help="subject ids to forget, e.g. 070,148 (default: the cohort's forget set)"
    )
    p.add_argument("--retain", type=_ids, help="subject ids to retain (default: all others)")
    p.add_argument("--holdout", type=_ids, help="subject ids never trained on (default: the cohort's)")
    p.add_argument("--address", help="Ray cluster to join, 'auto' or host:port (default: a local Ray)")
    p.add_argument(
        "--storage",
        help="where Tune keeps results and checkpoints: a folder every node mounts, or a URI "
        "such as s3://bucket/prefix (default: RUN_DIR/ray_results; Optuna's storage is "
        "always RUN_DIR/optuna.journal)",
    )
    p.add_argument(
        "--max-trials-in-flight",
        dest="max_trials_in_flight",
        type=int,
        help="trials running or pending at once, e.g. the autoscaler's maximum GPU workers "
        "(default: follow the cluster; see README, On a cluster)",
    )
    p.add_argument(
        "--resource-wait-s",
        dest="resource_wait_s",
        type=int,
        help="on an autoscaling cluster, seconds to wait for a node that fits a trial (default: 0)",
    )
    p.add_argument(
        "--cpus-per-trial",
        dest="cpus_per_trial",
        type=int,
        help=f"CPUs each trial asks for, and its torch threads ({shown('cpus_per_trial')})",
    )
    p.add_argument(
        "--gpus-per-trial",
        dest="gpus_per_trial",
        type=float,
        help=f"GPUs each trial asks for, e.g. 1 or 0.5 ({shown('gpus_per_trial')})",
    )
    p.add_argument(
        "--seed", type=int, help=f"seed of the models, the search and every trial ({shown('seed')})"
    )
    p.add_argument(
        "--seed-reruns",
        dest="seed_reruns",
        type=int,
        help=f"rerun the recommended configuration with this many fresh seeds, 0 for none ({shown('seed_reruns')})",
    )
    p.add_argument(
        "--retrain-seeds",
        dest="retrain_seeds",
        type=int,
        help=f"models retrained without the forget subjects, one per seed ({shown('retrain_seeds')})",
    )
    p.add_argument(
        "--shadow-models",
        dest="shadow_models",
        type=int,
        help="shadow models for the per-subject membership test, each on half the subjects, 0 "
        f"for none ({shown('shadow_models')})",
    )
    p.add_argument(
        "--other-forget",
        dest="other_forget",
        type=_ids,
        help="rerun it with fresh seeds on this forget set too, e.g. 1,4; '' for none (default: "
        "the first retain subjects, as many as --forget names)",
    )
    p.add_argument(
        "--objective",
        choices=tuple(OBJECTIVES),
        help="what the search maximises besides retain_kept: forget_drop (reference) or closeness "
        f"to the retrain reference's forget Dice (retrain-match) (demo: {demo.objective})",
    )
    p.add_argument(
        "--resume", type=Path, help="finish the interrupted study in this run directory (its settings)"
    )
    p.add_argument(
        "--resume-or-start",
        dest="resume_or_start",
        action="store_true",
        help="resume the study in --run-dir if it exists (its settings must equal the ones "
        "given), else start it: one command for a job that may be retried",
    )
    return p


#: The settings ``--resume`` may be given: where the study runs, and where its experiment is kept.
RESUMABLE = frozenset({"address", "storage"})


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the flags set, by field name (flags left out are not settings)."""
    return {
        key: value
        for key, value in vars(args).items()
        if key not in ("preset", "config", "resume", "resume_or_start", "verbose") and value is not None
    }
