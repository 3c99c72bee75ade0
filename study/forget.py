"""``python -m study.forget RUN_DIR --subjects IDS``: honour a deletion request with a study.

Takes the study's original model and its "safe to deploy" configuration (the searched knee
where the study has none; or ``--trial``), runs that unlearning for the named training
subjects, and tests the result per subject, two-sided, against models retrained without
them and the shadow models never trained on them (each trained once and cached, like the
study's baselines), beside the retain-loss check. Writes into
``--out`` (default ``RUN_DIR/forget/<ids>``) the audit record, ``audit.json`` and
``audit.html``, and the unlearned model, ``unlearned.pt`` (a MedicalNet-format state dict),
only when the verdict passes or with ``--force``. With ``--address`` (or ``RAY_ADDRESS``)
the work runs as Ray tasks on that cluster, otherwise in this process.
"""

from __future__ import annotations

import sys

from study.cli import before_loading, read

if __name__ == "__main__":
    before_loading("study.forget")  # --help and --version answered before torch loads

import dataclasses
import hashlib
import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from analysis.audit import audit_html, audit_record, software
from analysis.study_state import load_study
from search_spaces import STRATEGIES
from study.cli import MAX_RETAIN_LOSS
from study.cohort import (
    Cohort,
    check_request,
    cohort_root,
    open_cohort,
    study_split,
    subject_files,
    with_forget,
)
from study.config import StudyConfig, StudyError, run_cli
from study.metrics import SubjectFigures, evaluate_subjects
from study.metrics.evidence import Evidence
from study.model import file_digest, initial_state, model_from, state_digest
from study.run.cluster import joined, remote
from study.run.console import EpochLines
from study.run.results import trial_config
from study.run.rundir import DeletionOutputs, RunDir
from trainables.baseline import References, reference_models
from trainables.trial import TrialRun, TrialSpec, run_trial


@dataclass(frozen=True)
class Thresholds:
    """The verdict's limit on the share of retain Dice the unlearned model may lose; the
    membership test's level is the study's ``privacy_level``."""

    max_retain_loss: float = MAX_RETAIN_LOSS


def checks(after: dict[str, float], limits: Thresholds) -> list[dict[str, Any]]:
    """The verdict's utility check of the unlearned model's figures ``after``."""
    loss = 1.0 - after["retain_kept"]
    limit = limits.max_retain_loss
    return [
        {
            "name": "retain_loss",
            "value": loss,
            "limit": limit,
            "option": "--max-retain-loss",
            "passed": loss <= limit,
        }
    ]


def membership_checks(
    evidence: Evidence, forget: Sequence[str], figures: dict[str, SubjectFigures], level: float
) -> list[dict[str, Any]]:
    """Per requested subject, the two-sided test of the unlearned model (its ``figures``)
    against the models retrained without it and the shadow models not trained on it:
    ``indistinguishable`` passes; ``distinguishable (under|over)`` and ``insufficient
    evidence`` (too few shadow models or retrain seeds) withhold the model."""
    enough, why = evidence.sufficient()
    if not enough:
        return [
            {"name": f"membership {s}", "value": None, "limit": level / 2, "option": "privacy_level"}
            | {"passed": False, "verdict": f"insufficient evidence: {why}"}
            for s in forget
        ]
    reference = evidence.forget_reference(forget, level)
    statistics, dice = {s: figures[s].statistic for s in forget}, {s: figures[s].dice for s in forget}
    verdicts = reference.verdicts(statistics, dice)
    rows = []
    for subject, (statistic, dice_test) in reference.tests(statistics, dice).items():
        rows.append(
            {"name": f"membership {subject}", "value": min(statistic.p, dice_test.p), "limit": level / 2}
            | {"option": "privacy_level", "passed": verdicts[subject] == "indistinguishable"}
            | {"verdict": verdicts[subject], "statistic_z": statistic.z, "statistic_p": statistic.p}
            | {"dice_z": dice_test.z, "dice_p": dice_test.p}
        )
    return rows


def chosen_trial(run_dir: Path, trial_id: str | None) -> tuple[str, dict[str, Any], int]:
    """The id, config and epochs of ``trial_id`` (all it ran), or of the study's "safe to
    deploy" configuration (its searched knee where the study ran no membership test)."""
    study = load_study(run_dir)
    if trial_id is not None:
        params = trial_config(study.trials, trial_id)  # an unknown trial is a StudyError here
        epochs = int(study.trials.loc[study.trials["trial_id"] == trial_id, "epoch"].max())
    elif (recommended := study.safe_recommendation or study.recommendation) is not None:
        trial_id, epochs = recommended.trial_id, recommended.epoch
        params = trial_config(study.trials, trial_id)
    else:
        raise StudyError(f"{run_dir} has no recommendation yet; name a trial with --trial")
    if params["strategy"] not in STRATEGIES:
        raise StudyError(
            f"trial {trial_id} ran strategy {params['strategy']!r}, which is not registered here"
        )
    return trial_id, params, epochs


def _on_node(*args: Any) -> tuple[TrialRun, str]:
    """``run_trial`` in a Ray task, with the id of the node that ran it."""
    import ray

    return run_trial(*args), ray.get_runtime_context().get_node_id()


def unlearn(
    config: StudyConfig, request: Cohort, original: dict[str, torch.Tensor], spec: TrialSpec, address: str
) -> tuple[References, TrialRun, str]:
    """The request's retrain reference (cached or trained) and ``Reference``, then the
    unlearning ``spec`` from the ``original`` state dict: as Ray tasks on the cluster at
    ``address``, or in this process; with where the unlearning ran."""
    start, _ = initial_state(config, request.n_classes)
    known = {"original": original}
    lines = EpochLines("unlearning", spec.epochs)
    if not address:
        references = reference_models(config, request, start, known).result()
        unlearned = run_trial(spec, request, original, references.reference, lines)
        return references, unlearned, f"this process on {platform.node()}"
    import ray

    with joined(config, address, Path(config.run_dir)):
        request_ref = ray.put(request)
        references = reference_models(config, request, start, known, cohort_ref=request_ref).result()
        task = remote(config, _on_node).remote(spec, request_ref, original, references.reference, lines)
        unlearned, node = ray.get(task)
    return references, unlearned, f"Ray node {node}"


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
    run, config = RunDir.open(Path(run_dir))
    check_request(study_split(config)[1], subjects)  # a holdout or unknown subject: before any read
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise StudyError(f"--out {out} is a file; --out names the folder the audit record is written to")
    original = run.load_baseline("original")
    if original is None:
        raise StudyError(f"{run_dir} holds no original model; the study has not trained it")
    trial_id, params, epochs = chosen_trial(Path(run_dir), trial_id)
    cohort = open_cohort(config)
    request = with_forget(cohort, subjects)
    outputs = run.deletion(subjects, out)
    print(f"forgetting {', '.join(subjects)} with {params['strategy']} trial {trial_id} ({epochs} epochs)")
    spec = TrialSpec.of(config, STRATEGIES[params["strategy"]].strategy, params, epochs)
    references, unlearned, where = unlearn(config, request, original, spec, address)

    model_bytes = DeletionOutputs.model_bytes(unlearned.state)
    model = model_from(config, request.n_classes, unlearned.state)
    figures = evaluate_subjects(model, request, request.split.forget, torch.device("cpu"))
    evidence = references.evidence
    verdict = checks(unlearned.last, limits)
    verdict += membership_checks(evidence, request.split.forget, figures, config.privacy_level)
    passed = all(check["passed"] for check in verdict)
    power = {"attack_power": p} if (p := evidence.power()) is not None else {}
    record = audit_record(
        request={"subjects": subjects, "requested_on": requested_on, "honoured_at": _now()},
        study={"run_dir": str(run.path), "config": dataclasses.asdict(config), "cohort": cohort.digest},
        unlearning={"trial_id": trial_id, "epochs": epochs, "params": params, "seed": config.seed}
        | {"computed_on": where},
        software=software(),
        hashes=_hashes(run, config, request, references)
        | {"unlearned_model": hashlib.sha256(model_bytes).hexdigest()},
        privacy={"level": config.privacy_level} | power,
        reference=references.reference,
        after=unlearned.last,
        checks=verdict,
        written=passed or force,
    )
    outputs.write(record, audit_html(record), model_bytes if passed or force else None)
    _tell(record, outputs)
    return record


def _hashes(run: RunDir, config: StudyConfig, request: Cohort, references: References) -> dict[str, Any]:
    """SHA-256 of the original model's file, of every input file read and of every reference
    model's tensors."""
    root = cohort_root(config)[0]
    return {
        "original_model": file_digest(run.baseline_model("original")),
        "input_files": {
            str(path.relative_to(root)): file_digest(path)
            for subject in request.split.training + request.split.holdout
            for path in subject_files(root, subject)
        },
        "reference_models": {name: state_digest(state) for name, state in references.states.items()},
    }


def _tell(record: dict[str, Any], outputs: DeletionOutputs) -> None:
    """The verdict's checks, where the record went, and the model or why it was withheld."""
    checked = record["verdict"]["checks"]
    if power := record["privacy"].get("attack_power"):
        print(
            f"membership attack: AUC {power['auc']:.3f}, TPR {power['tpr_at_5_fpr']:.3f} at 5% false "
            f"positives, on {power['pairs']} (shadow model, subject) pairs"
        )
    for check in checked:
        result = "pass" if check["passed"] else "FAIL"
        value = "not measured" if check["value"] is None else f"{check['value']:.3g}"
        said = f": {check['verdict']}" if "verdict" in check else ""
        print(f"{check['name']} {value} (limit {check['limit']:.3g}, {check['option']}): {result}{said}")
    print(f"audit record: {outputs.audit_json}, {outputs.audit_html}")
    if record["model_written"]:
        print(f"unlearned model: {outputs.model} (sha256 {record['sha256']['unlearned_model']})")
    else:
        failed = ", ".join(
            f"{c['name']}: {c.get('verdict', 'over the limit')}" for c in checked if not c["passed"]
        )
        print(f"verdict failed ({failed}): unlearned.pt withheld; --force writes it anyway")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (2: a request or run directory that cannot be
    honoured, 4: the verdict failed and the model was withheld)."""
    args = read("study.forget", argv)
    subjects = [part.strip() for part in args.subjects.split(",") if part.strip()]
    outcome: dict[str, Any] = {}

    def request() -> None:
        limits = Thresholds(args.max_retain_loss)
        address = args.address or os.environ.get("RAY_ADDRESS", "")
        outcome.update(
            honour(
                args.run_dir, subjects, args.out, args.trial, limits, args.force, address, args.requested_on
            )
        )

    code = run_cli(request)
    if code == 0 and not outcome["verdict"]["passed"]:
        return 0 if args.force else 4
    return code


if __name__ == "__main__":
    sys.exit(main())
