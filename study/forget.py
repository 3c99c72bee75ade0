"""``python -m study.forget RUN_DIR --subjects IDS``: honour a deletion request with a study.

Takes the study's original model and its recommended configuration (or ``--trial``), runs
that unlearning for the named training subjects, and measures the result on forget,
retain and holdout subjects against the original model and against a model retrained
without those subjects (trained once and cached, like the study's baselines). Writes into
``--out`` (default ``RUN_DIR/forget/<ids>``) the audit record, ``audit.json`` and
``audit.html``, and the unlearned model, ``unlearned.pt`` (a MedicalNet-format state dict),
only when the verdict passes or with ``--force``. With ``--address`` (or ``RAY_ADDRESS``)
the work runs as one Ray task on that cluster, otherwise in this process.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from analysis.audit import audit_html, audit_record, software
from analysis.study_state import load_study, recommendation_of
from study.cli import run_cli
from study.cluster import check_resources, connect, task_options, trial_device
from study.config import StudyConfig
from study.data import Cohort, cohort_root, open_cohort, study_split, subject_files
from study.errors import StudyError
from study.forget_sets import check_request, with_forget
from study.metrics import Reference
from study.results import atomic_write
from study.weights import file_digest
from trainables import STRATEGIES
from trainables.baseline import (
    baseline_key,
    initial_state,
    load_cached,
    measure_baselines,
    store_cached,
    train_baseline,
)
from trainables.replay import replayed_state, trial_params


@dataclass(frozen=True)
class Thresholds:
    """The verdict's limits: the share of retain Dice the unlearned model may lose, and the
    share of forget slabs a membership-inference attack may still judge members."""

    max_retain_loss: float = 0.10
    max_mia: float = 0.5


def checks(after: dict[str, float], limits: Thresholds) -> list[dict[str, Any]]:
    """The verdict's checks of the unlearned model's figures ``after``; a figure that could
    not be measured (``nan``: no holdout subjects for the attack) passes only a limit of 1."""
    found = [
        ("retain_loss", 1.0 - after["retain_kept"], limits.max_retain_loss, "--max-retain-loss"),
        ("mia_forget", after["mia_forget"], limits.max_mia, "--max-mia"),
    ]
    rows = []
    for name, value, limit, option in found:
        passed = value <= limit if value == value else limit >= 1.0
        rows.append({"name": name, "value": value, "limit": limit, "option": option, "passed": passed})
    return rows


@dataclass(frozen=True)
class Unlearned:
    """What the computation returns: the request's retrain model, the reference measured with
    it, the unlearned model's CPU state dict and its figures."""

    retrain: dict[str, torch.Tensor]
    reference: Reference
    state: dict[str, torch.Tensor]
    after: dict[str, float]


def unlearn(
    config: StudyConfig,
    cohort: Cohort,
    original: dict[str, torch.Tensor],
    start: dict[str, torch.Tensor],
    retrain: dict[str, torch.Tensor] | None,
    params: dict[str, Any],
    epochs: int,
    device: str = "",
) -> Unlearned:
    """The request's work, from objects only (so a Ray task on any node can run it): the
    retrain model when ``retrain`` is None, the reference, then ``epochs`` epochs of the
    strategy ``params`` names from the ``original`` state dict."""
    threads = config.cpus_per_trial
    if retrain is None:
        retrain, _ = train_baseline("retrain", config, cohort, start, threads, device)
    reference = measure_baselines(config, cohort, {"original": original, "retrain": retrain}, threads, device)
    strategy = STRATEGIES[params["strategy"]].strategy
    model, after = replayed_state(strategy, params, epochs, config, cohort, original, reference, device)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return Unlearned(retrain, reference, state, after)


def _chosen_trial(run_dir: Path, trial_id: str | None) -> tuple[str, dict[str, Any], int]:
    """The id, hyperparameters and epochs of ``trial_id``, or of the study's recommendation."""
    study = load_study(run_dir)
    if trial_id is None:
        recommendation = recommendation_of(study)
        if recommendation is None:
            raise StudyError(f"{run_dir} has no recommendation yet; name a trial with --trial")
        trial_id, epochs = recommendation["trial_id"], int(recommendation["epoch"])
    else:
        epochs = -1
    params = trial_params(study.trials, trial_id)
    if epochs < 0:
        epochs = int(study.trials.loc[study.trials["trial_id"] == trial_id, "epoch"].max())
    if params["strategy"] not in STRATEGIES:
        raise StudyError(
            f"trial {trial_id} ran strategy {params['strategy']!r}, which is not registered here"
        )
    return trial_id, params, epochs


def _on_node(*args: Any, **kwargs: Any) -> tuple[Unlearned, str]:
    """``unlearn`` in a Ray task, with the id of the node that ran it."""
    import ray

    return unlearn(*args, **kwargs), ray.get_runtime_context().get_node_id()


def _compute(config: StudyConfig, address: str, run_dir: Path, *args: Any) -> tuple[Unlearned, str]:
    """``unlearn(config, *args)`` as one Ray task on the cluster at ``address``, or in this
    process; with where it ran."""
    if not address:
        return unlearn(config, *args, device=trial_device(config)), f"this process on {platform.node()}"
    import ray

    joined = not ray.is_initialized()
    connect(dataclasses.replace(config, address=address), run_dir)
    try:
        check_resources(config)  # a request no node can hold is one line, not an endless wait
        task = ray.remote(**task_options(config, config.cpus_per_trial))(_on_node)
        result, node = ray.get(task.remote(config, *args, device=trial_device(config)))
    finally:
        if joined:
            ray.shutdown()
    return result, f"Ray node {node}"


def serialized(state: dict[str, torch.Tensor]) -> bytes:
    """``unlearned.pt``'s bytes: MedicalNet's ``{"state_dict": ...}`` layout."""
    buffer = io.BytesIO()
    torch.save({"state_dict": state}, buffer)
    return buffer.getvalue()


def honour(
    run_dir: Path,
    subjects: list[str],
    out: Path | None = None,
    trial_id: str | None = None,
    limits: Thresholds = Thresholds(),
    force: bool = False,
    address: str = "",
    requested_on: str = "",
) -> dict[str, Any]:
    """Honours the request to forget ``subjects``; returns the audit record it wrote."""
    from study.run import RunDir

    run, config = RunDir.open(Path(run_dir))
    check_request(study_split(config)[1], subjects)  # a holdout or unknown subject: before any read
    original = run.load_baseline("original")
    if original is None:
        raise StudyError(f"{run_dir} holds no original model; the study has not trained it")
    trial_id, params, epochs = _chosen_trial(Path(run_dir), trial_id)
    cohort = open_cohort(config)
    request = with_forget(cohort, subjects)
    out = Path(out) if out else run.path / "forget" / "-".join(subjects)
    print(f"forgetting {', '.join(subjects)} with {params['strategy']} trial {trial_id} ({epochs} epochs)")

    key = baseline_key(config, request, "retrain")
    cached = load_cached(config.cache_path, key)
    print("retrain reference without them: " + ("cached" if cached else "training it now"), flush=True)
    start, _ = initial_state(config, cohort.n_classes)
    retrain = cached[0] if cached else None
    result, where = _compute(config, address, run.path, request, original, start, retrain, params, epochs)
    if cached is None:
        store_cached(config.cache_path, key, result.retrain, result.reference.retrain)

    root = cohort_root(config)[0]
    model_bytes = serialized(result.state)
    verdict = checks(result.after, limits)
    passed = all(check["passed"] for check in verdict)
    record = audit_record(
        request={"subjects": subjects, "requested_on": requested_on, "honoured_at": _now()},
        study={"run_dir": str(run.path), "config": dataclasses.asdict(config), "cohort": cohort.digest},
        unlearning={"trial_id": trial_id, "epochs": epochs, "params": params, "seed": config.seed}
        | {"computed_on": where},
        software=software(),
        hashes={
            "original_model": file_digest(run.baseline_model("original")),
            "input_files": {
                str(path.relative_to(root)): file_digest(path)
                for subject in request.split.training + request.split.holdout
                for path in subject_files(root, subject)
            },
            "unlearned_model": hashlib.sha256(model_bytes).hexdigest(),
        },
        reference=result.reference,
        after=result.after,
        checks=verdict,
        written=passed or force,
    )
    _write(out, record, model_bytes if passed or force else None)
    _tell(record, out)
    return record


def _tell(record: dict[str, Any], out: Path) -> None:
    """The verdict's checks, where the record went, and the model or why it was withheld."""
    checked = record["verdict"]["checks"]
    for check in checked:
        result = "pass" if check["passed"] else "FAIL"
        value = "not measured" if check["value"] is None else f"{check['value']:.3f}"
        print(f"{check['name']} {value} (limit {check['limit']}, {check['option']}): {result}")
    print(f"audit record: {out / 'audit.json'}, {out / 'audit.html'}")
    if record["model_written"]:
        print(f"unlearned model: {out / 'unlearned.pt'} (sha256 {record['sha256']['unlearned_model']})")
    else:
        failed = ", ".join(f"{c['name']} over {c['option']} {c['limit']}" for c in checked if not c["passed"])
        print(f"verdict failed ({failed}): unlearned.pt withheld; --force writes it anyway")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write(out: Path, record: dict[str, Any], model_bytes: bytes | None) -> None:
    """The audit record (JSON and HTML) and, when given, the model; each file atomically."""
    out.mkdir(parents=True, exist_ok=True)
    model = out / "unlearned.pt"
    if model_bytes is None:
        model.unlink(missing_ok=True)  # an earlier, passing run's model is not this request's answer
    else:
        atomic_write(model, lambda p: Path(p).write_bytes(model_bytes))
    atomic_write(out / "audit.json", lambda p: Path(p).write_text(json.dumps(record, indent=1, default=str)))
    atomic_write(out / "audit.html", lambda p: Path(p).write_text(audit_html(record)))


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2: a request or run directory that cannot be
    honoured, 4: the verdict failed and the model was withheld)."""
    parser = argparse.ArgumentParser(prog="python -m study.forget", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished study's run directory")
    parser.add_argument(
        "--subjects", required=True, help="comma-separated training subject ids, e.g. 070,148"
    )
    parser.add_argument("--trial", help="the trial whose configuration to use (default: the recommendation)")
    parser.add_argument("--out", type=Path, help="output folder (default RUN_DIR/forget/<ids>)")
    parser.add_argument("--requested-on", default="", help="when the subject asked (recorded as given)")
    parser.add_argument("--max-retain-loss", type=float, default=Thresholds.max_retain_loss)
    parser.add_argument("--max-mia", type=float, default=Thresholds.max_mia)
    parser.add_argument("--force", action="store_true", help="write the model even when the verdict fails")
    parser.add_argument(
        "--address", default="", help="a Ray cluster to run on (default: RAY_ADDRESS, else here)"
    )
    args = parser.parse_args(argv)
    subjects = [part.strip() for part in args.subjects.split(",") if part.strip()]
    outcome: dict[str, Any] = {}

    def request() -> None:
        outcome.update(
            honour(
                args.run_dir,
                subjects,
                out=args.out,
                trial_id=args.trial,
                limits=Thresholds(args.max_retain_loss, args.max_mia),
                force=args.force,
                address=args.address or os.environ.get("RAY_ADDRESS", ""),
                requested_on=args.requested_on,
            )
        )

    code = run_cli(request)
    if code == 0 and not outcome["verdict"]["passed"]:
        return 0 if args.force else 4
    return code


if __name__ == "__main__":
    sys.exit(main())
