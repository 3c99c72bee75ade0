"""The commands' command lines, read before anything heavy loads, and their console scripts.

Each command (``python -m study.launch`` or ``unlearning-study``, and so on) first reads its
arguments here: ``--help``, ``--version`` and a malformed flag are answered in a fraction of
a second, and ``study.launch`` checks what needs no cohort, torch or Ray (its settings, the
storage URI, a new study's run directory) before those load, in about a second.
Only ``argparse`` and ``study.config`` are imported here (``study.bench epoch`` runs on a
machine without Ray, pandas or pyarrow).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from study import __version__
from study.config import StudyError
from study.config.flags import parser as launch_parser

NOTHING_KEPT = "before the study started, so nothing was kept: run the same command again"
MAX_RETAIN_LOSS = 0.10  # a deletion request's utility check: the share of retain Dice it may lose


def _versioned(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return p


def forget_parser() -> argparse.ArgumentParser:
    """``study.forget``: a deletion request honoured with a finished study."""
    p = argparse.ArgumentParser(
        prog="python -m study.forget",
        description="Honour a deletion request: unlearn the named subjects with a finished study's "
        "safe configuration, test the result per subject against retraining, write an audit record.",
    )
    p.add_argument("run_dir", type=Path, help="a finished study's run directory")
    p.add_argument("--subjects", required=True, help="comma-separated training subject ids, e.g. 070,148")
    p.add_argument(
        "--trial", help="the trial whose configuration to use (default: the study's safe-to-deploy knee)"
    )
    p.add_argument("--out", type=Path, help="output folder (default: RUN_DIR/forget/<ids>)")
    p.add_argument(
        "--requested-on", default="", help="when the subject asked, recorded as given (default: not recorded)"
    )
    p.add_argument(
        "--max-retain-loss",
        type=float,
        default=MAX_RETAIN_LOSS,
        help="the verdict's utility check: the share of the original's retain Dice the model may "
        f"lose (default: {MAX_RETAIN_LOSS})",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="write the model even when the verdict fails (the record says so)",
    )
    p.add_argument("--address", default="", help="a Ray cluster to run on (default: RAY_ADDRESS, else here)")
    return _versioned(p)


def replay_parser() -> argparse.ArgumentParser:
    """``study.replay``: one trial of a study again, without Ray."""
    p = argparse.ArgumentParser(
        prog="python -m study.replay",
        description="Replay one trial of a study without Ray, from its recorded hyperparameters and seed.",
    )
    p.add_argument("run_dir", type=Path, help="the study's run directory")
    p.add_argument("trial_id", help="the trial's id, as trials.parquet and the report name it")
    p.add_argument("--epochs", type=int, help="stop after this many epochs, e.g. a horizon (default: all)")
    p.add_argument("--out", type=Path, help="save the unlearned model into this folder (as recommended.pt)")
    return _versioned(p)


def evaluate_parser() -> argparse.ArgumentParser:
    """``analysis.evaluate``: a model scored as MRBrainS18 scores, on the native grid."""
    p = argparse.ArgumentParser(
        prog="python -m analysis.evaluate",
        description="Score a study's model as MRBrainS18 does (per-label Dice, HD95, volume "
        "similarity on the native grid) and write its result.nii.gz per subject.",
    )
    p.add_argument("run_dir", type=Path, help="a finished study's run directory")
    p.add_argument(
        "--model",
        default="recommended",
        help="original, retrain, recommended (the study's recommendation) or TRIAL_ID@EPOCH "
        "(default: recommended)",
    )
    p.add_argument("--out", type=Path, help="folder to write into (default: RUN_DIR/predictions/MODEL)")
    return _versioned(p)


def report_parser() -> argparse.ArgumentParser:
    """``analysis.report``: a study's report, written again from its run directory."""
    p = argparse.ArgumentParser(
        prog="python -m analysis.report",
        description="Write a study's report again (report.html, report.md, pareto.parquet) from its "
        "run directory, finished or not.",
    )
    p.add_argument("run_dir", type=Path, help="the study's run directory")
    p.add_argument(
        "--no-overlays", action="store_true", help="skip the image overlays (then no data is read)"
    )
    return _versioned(p)


def bench_parser() -> argparse.ArgumentParser:
    """``study.bench``: where the time goes; prints a table and writes JSON."""
    p = argparse.ArgumentParser(
        prog="python -m study.bench",
        description="Measure where a study's time goes: print a table, write JSON.",
    )
    p.add_argument("--out", type=Path, help="JSON file (default: runs/bench/<subcommand>-<time>.json)")
    sub = p.add_subparsers(dest="command", required=True)
    epoch = sub.add_parser("epoch", help="seconds per subject-epoch of the loop, without Ray")
    epoch.add_argument(
        "--sizes",
        help="comma-separated: demo, paper, paper-net-small-input (default: "
        "demo,paper on a GPU, demo,paper-net-small-input on a CPU)",
    )
    epoch.add_argument("--steps", type=int, help="timed steps per variant (default: 20 on a GPU, 3 on a CPU)")
    epoch.add_argument(
        "--threads", type=int, default=1, help="torch threads on a CPU (default: 1, as a trial)"
    )
    epoch.add_argument("--variants", help="comma-separated variant names, e.g. fp32,bf16 (default: all)")
    search = sub.add_parser("search", help="hypervolume of Optuna's samplers against random search")
    search.add_argument(
        "--strategies", default="noisy_label,max_loss", help="comma-separated (default: noisy_label,max_loss)"
    )
    search.add_argument("--seeds", type=int, default=5, help="searches per sampler (default: 5)")
    search.add_argument("--budget", type=int, default=16, help="trials per search (default: 16)")
    search.add_argument(
        "--in-flight",
        default="2",
        help="comma-separated numbers of trials asked and not yet told, e.g. 2,8,16 (default: 2)",
    )
    search.add_argument(
        "--samplers",
        default="gp,tpe",
        help="comma-separated samplers set against random: gp, tpe, nsga2 (default: gp,tpe)",
    )
    sub.add_parser("data", help="NIfTI decodes and bytes read by one smoke study")
    overhead = sub.add_parser("overhead", help="where a study's wall time goes, on a local Ray")
    overhead.add_argument("--preset", default="demo", help="the study to measure (default: demo)")
    overhead.add_argument("--strategies", help="comma-separated (default: the preset's)")
    overhead.add_argument("--num-samples", type=int, help="trials per strategy (default: the preset's)")
    overhead.add_argument("--config", type=Path, help="a study TOML over the preset, as study.launch takes")
    scale = sub.add_parser("scale", help="the study's overhead per trial against a bare Tune run's")
    scale.add_argument(
        "--trials", default="100,1000", help="comma-separated numbers of trials (default: 100,1000)"
    )
    scale.add_argument("--slots", type=int, default=4, help="trials at once: Ray's logical CPUs (default: 4)")
    scale.add_argument(
        "--sampler", default="tpe", help="the study's sampler: tpe, gp, nsga2, random (default: tpe)"
    )
    scale.add_argument(
        "--bare",
        default="sleep",
        help="comma-separated: how the bare trials pass the compute time, sleep (idle) or busy "
        "(a core spinning, as the study's trials load the machine) (default: sleep)",
    )
    return _versioned(p)


PARSERS: dict[str, Callable[[], argparse.ArgumentParser]] = {
    "study.launch": launch_parser,
    "study.forget": forget_parser,
    "study.replay": replay_parser,
    "study.bench": bench_parser,
    "analysis.evaluate": evaluate_parser,
    "analysis.report": report_parser,
}


def read(command: str, argv: list[str] | None = None) -> argparse.Namespace:
    """``command``'s arguments; ``--help``, ``--version`` and a malformed flag end the process
    here, as argparse does (exit 0, 0 and 2)."""
    return PARSERS[command]().parse_args(argv)


def quit_while_loading(signum: int, frame: object) -> None:
    """Ctrl-C or SIGTERM while a study's modules load: nothing is written yet, so it ends at once."""
    sys.stderr.write(f"interrupted: {NOTHING_KEPT}\n")
    os._exit(130)


def check_launch(argv: list[str] | None = None) -> None:
    """``study.launch``'s checks that need no cohort, torch or Ray, in about a second: the
    settings (the storage URI among them), that ``--resume`` names a run directory, and that
    a new study's ``--run-dir`` does not hold one. A ``StudyError`` when they fail; the full
    checks follow once the study loads."""
    from study.config import load_config
    from study.config.flags import overrides
    from study.run.rundir import RunDir

    args = read("study.launch", argv)
    if args.resume is not None:
        RunDir.open(args.resume)
        return
    config = load_config(args.preset, args.config, overrides(args))
    if config.run_dir and not args.resume_or_start:
        RunDir(Path(config.run_dir)).refuse_existing()


def before_loading(command: str, argv: list[str] | None = None) -> None:
    """What every command does first, before Ray is imported: its command line read and
    answered; for ``study.launch``, the stop handlers of the loading phase and its fast
    checks (one line and exit 2 when they fail)."""
    argv = sys.argv[1:] if argv is None else argv
    if not sys.stdout.isatty():  # a log file: Ray's lines from workers without colour codes,
        os.environ.setdefault("RAY_COLOR_PREFIX", "0")  # each line as written (Ray's merging of
        os.environ.setdefault("RAY_DEDUP_LOGS", "0")  # similar lines marks them in colour)
    if command == "study.launch":
        signal.signal(signal.SIGINT, quit_while_loading)
        signal.signal(signal.SIGTERM, quit_while_loading)
    read(command, argv)
    if command != "study.launch":
        return
    try:
        check_launch(argv)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)


def _script(command: str, module: str) -> Callable[[], Any]:
    def run() -> Any:
        before_loading(command)
        import importlib

        return importlib.import_module(module).main()

    run.__doc__ = f"The ``{command}`` console script: ``python -m {command}``."
    return run


launch = _script("study.launch", "study.launch")
forget = _script("study.forget", "study.forget")
replay = _script("study.replay", "study.replay")
bench = _script("study.bench", "study.bench.__main__")
evaluate = _script("analysis.evaluate", "analysis.evaluate")
report = _script("analysis.report", "analysis.report")
