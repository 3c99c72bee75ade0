"""``python -m analysis.evaluate RUN_DIR``: a model's segmentation of every subject on its
native grid, written as MRBrainS18 results and scored as the challenge scores them.

For each subject: the model's softmax on the input grid, resized back to the subject's
native grid (``study.cohort.preprocess.to_native``), argmax, written as
``<out>/<subject>/result.nii.gz`` with the ground truth's affine and header, in MRBrainS18's
label values (in the 4-class mode each class as its first label: GM 1, WM 3, CSF 5); then
``<out>/scores.csv``: ``subject, role, label, name, dice, hd95_mm, vs, label_mae``
(``study/metrics/official.py``). At the end of every study the original model, the retrain
reference and the recommended model are scored this way (``official_scores.parquet``,
``predictions/<model>/``).
"""

from __future__ import annotations

import sys

from study.cli import before_loading, read

if __name__ == "__main__":
    before_loading("analysis.evaluate")  # --help and --version answered before torch loads

import gzip
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pandas as pd
import torch

from study.cohort import Cohort, open_cohort, study_split
from study.cohort.cohort import io_threads
from study.cohort.mrbrains import LABEL_FILE
from study.cohort.preprocess import to_native
from study.config import StudyConfig, StudyError, run_cli
from study.metrics.official import class_values, label_map_mae, score_labels
from study.run.rundir import RunDir, atomic_write

#: The models a study scores at its end (and ``--model`` names besides ``TRIAL_ID@EPOCH``).
STUDY_MODELS = ("original", "retrain", "recommended")
SCORE_COLUMNS = ("subject", "role", "label", "name", "dice", "hd95_mm", "vs", "label_mae")
#: What ``result.nii.gz`` says of its values (the NIfTI header's 80-character description).
_DESCRIPTION = {
    "4class": "MRBrainS18 labels, 4-class model: GM as 1, WM as 3, CSF as 5",
    "8class": "MRBrainS18 labels 1-8",
}


def read_truths(root: Path, subjects: tuple[str, ...]) -> dict[str, nib.Nifti1Image]:
    """Each subject's ``segm.nii.gz`` (read lazily: its shape, affine and header at once)."""
    return {subject: nib.load(Path(root) / subject / LABEL_FILE) for subject in subjects}


@torch.no_grad()
def segment_native(
    config: StudyConfig,
    state: dict[str, torch.Tensor],
    cohort: Cohort,
    shapes: dict[str, tuple[int, int, int]],
    device: torch.device | None = None,
) -> dict[str, np.ndarray]:
    """``{subject: (X, Y, Z) uint8}``: the model of ``state`` on each subject of ``shapes``
    (its native grid's shape), in MRBrainS18 label values, on ``device`` (default: the GPU
    where the study's trials use one and torch sees one, else the CPU) with torch's threads as
    they are. Runs anywhere: in a Ray task at the end of a study on a cluster, in the driver on
    a local Ray."""
    from study.model import model_from

    if device is None:
        gpu = config.gpus_per_trial > 0 and torch.cuda.is_available()
        device = torch.device("cuda" if gpu else "cpu")
    model = model_from(config, cohort.n_classes, state).to(device).eval()
    values = torch.tensor(class_values(config.label_mode), dtype=torch.uint8)
    segmentations = {}
    for subject, shape in shapes.items():
        image = torch.tensor(cohort.images[subject], device=device)[None]  # (1, 3, D, H, W)
        probabilities = torch.softmax(model(image).float(), dim=1)[0]
        segmentations[subject] = values[to_native(probabilities, shape).cpu()].numpy()
    return segmentations


def write_result(path: Path, segmentation: np.ndarray, truth: nib.Nifti1Image, label_mode: str) -> None:
    """``segmentation (X, Y, Z)`` as a uint8 NIfTI at ``path`` with ``truth``'s affine and header."""
    header = truth.header.copy()
    header.set_data_dtype(np.uint8)
    header["descrip"] = _DESCRIPTION[label_mode].encode()
    image = nib.Nifti1Image(segmentation.astype(np.uint8), truth.affine, header)
    data = gzip.compress(image.to_bytes(), compresslevel=1, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda p: p.write_bytes(data))


def score_subjects(
    segmentations: dict[str, np.ndarray],
    truths: dict[str, nib.Nifti1Image],
    roles: dict[str, str],
    label_mode: str,
    out: Path | None = None,
) -> pd.DataFrame:
    """``SCORE_COLUMNS``, a row per subject and scored label; each segmentation also written as
    ``out/<subject>/result.nii.gz`` when ``out`` is given. Subjects side by side (scipy and
    zlib release the GIL)."""

    def one(subject: str) -> list[dict[str, Any]]:
        truth = truths[subject]
        labels = np.asarray(truth.dataobj).round().astype(np.uint8)
        result = segmentations[subject]
        if out is not None:
            write_result(out / subject / "result.nii.gz", result, truth, label_mode)
        mae = label_map_mae(labels, result, label_mode)
        rows = score_labels(labels, result, truth.affine, label_mode)
        return [{"subject": subject, "role": roles[subject], **row, "label_mae": mae} for row in rows]

    with ThreadPoolExecutor(max_workers=io_threads(len(segmentations))) as pool:
        rows = [row for subject_rows in pool.map(one, sorted(segmentations)) for row in subject_rows]
    return pd.DataFrame(rows, columns=list(SCORE_COLUMNS))


def roles_of(cohort: Cohort) -> dict[str, str]:
    """``{subject: "forget" | "retain" | "holdout"}``."""
    split = cohort.split
    return {s: role for role in ("forget", "retain", "holdout") for s in getattr(split, role)}


def score_models(
    config: StudyConfig,
    run: RunDir,
    cohort: Cohort,
    states: dict[str, dict[str, torch.Tensor]],
    segment: Callable[[str, dict[str, torch.Tensor], dict[str, tuple[int, int, int]]], Any] | None = None,
) -> pd.DataFrame:
    """Every model of ``states`` on every subject of ``cohort``, on the native grid: the
    predictions under ``run.predictions_dir/<model>/``, the scores (``model`` and
    ``SCORE_COLUMNS``) returned.

    ``segment(name, state, shapes)`` starts one model's segmentation as a Ray task (the
    study on a cluster: the models segment side by side there, each on a trial's
    resources); without it, each model segments in this process when its turn comes, with
    every core of this machine.
    """
    root, _ = study_split(config)
    truths = read_truths(root, cohort.labelled)
    shapes = {s: tuple(int(n) for n in truth.shape) for s, truth in truths.items()}
    started = {name: segment(name, state, shapes) for name, state in states.items()} if segment else {}
    tables = []
    for name, state in states.items():
        print(f"  {name}: segmenting and scoring {len(shapes)} subjects on their native grid", flush=True)
        if segment:
            import ray

            segmentations = ray.get(started[name])
        else:
            segmentations = _segment_here(config, state, cohort, shapes)
        scores = score_subjects(
            segmentations, truths, roles_of(cohort), config.label_mode, run.predictions_dir / name
        )
        tables.append(scores.assign(model=name))
    table = pd.concat(tables, ignore_index=True)
    return table[["model", *SCORE_COLUMNS]]


def _segment_here(
    config: StudyConfig,
    state: dict[str, torch.Tensor],
    cohort: Cohort,
    shapes: dict[str, tuple[int, int, int]],
) -> dict[str, np.ndarray]:
    """``segment_native`` in this process with every core; torch's thread count put back after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)
    try:
        return segment_native(config, state, cohort, shapes)
    finally:
        torch.set_num_threads(threads)


def _model_state(run: RunDir, study: Any, name: str) -> dict[str, torch.Tensor]:
    """The weights ``--model`` names: a baseline, the recommendation, or ``TRIAL_ID@EPOCH``."""
    if name in ("original", "retrain"):
        state = run.load_baseline(name)
        if state is None:
            raise StudyError(f"{run.baseline_model(name)} is missing: the {name} model was not saved")
        return state
    if name == "recommended":
        if (recommended := study.recommendation) is None:
            raise StudyError(f"{run.path}: the study recommends no configuration; name a TRIAL_ID@EPOCH")
        trial_id, epoch = recommended.trial_id, recommended.epoch
    else:
        trial_id, _, epoch_text = name.partition("@")
        if not epoch_text.isdigit():
            raise StudyError(
                f"--model {name!r}: give original, retrain, recommended or TRIAL_ID@EPOCH (e.g. "
                f"{study.trials['trial_id'].iloc[0]}@{int(study.trials['epoch'].max())})"
            )
        epoch = int(epoch_text)
        trials = study.trials
        if trial_id not in set(trials["trial_id"]):
            known = ", ".join(sorted(set(trials["trial_id"]))[:6])
            raise StudyError(f"--model {name!r}: no trial {trial_id} in {run.path} (trials: {known}, ...)")
        reported = sorted(int(e) for e in trials.loc[trials["trial_id"] == trial_id, "epoch"])
        if epoch not in reported:
            raise StudyError(
                f"--model {name!r}: trial {trial_id} reported epochs {reported[0]}..{reported[-1]}, not {epoch}"
            )
    state = run.load_model_of(trial_id, epoch)
    if state is None:
        raise StudyError(
            f"--model {name!r}: no checkpoint of trial {trial_id} after epoch {epoch} was kept; write one "
            f"with: python -m study.replay {run.path} {trial_id} --epochs {epoch} --out {run.recommended_model}"
        )
    return state


def evaluate_model(
    run_dir: Path, model: str = "recommended", out: Path | None = None
) -> tuple[Path, pd.DataFrame]:
    """Writes ``model``'s predictions and ``scores.csv`` into ``out`` (default:
    ``RUN_DIR/predictions/<model>/``); returns the folder and the scores."""
    from analysis.study_state import load_study

    run, config = RunDir.open(Path(run_dir))
    if not run.finished:
        raise StudyError(
            f"{run.path}: the study has not finished; finish it first (python -m study.launch --resume {run.path})"
        )
    study = load_study(run.path)
    state = _model_state(run, study, model)
    out = Path(out) if out is not None else run.predictions_dir / model
    if out.exists() and not out.is_dir():
        raise StudyError(f"--out {out} is a file; give a folder")
    cohort = open_cohort(config)
    root, _ = study_split(config)
    truths = read_truths(root, cohort.labelled)
    shapes = {s: tuple(int(n) for n in truth.shape) for s, truth in truths.items()}
    print(f"{model}: segmenting {len(shapes)} subjects on their native grid", flush=True)
    segmentations = _segment_here(config, state, cohort, shapes)
    scores = score_subjects(segmentations, truths, roles_of(cohort), config.label_mode, out)
    atomic_write(out / "scores.csv", lambda p: scores.to_csv(p, index=False))
    return out, scores


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = read("analysis.evaluate", argv)

    def evaluate() -> None:
        out, scores = evaluate_model(args.run_dir, args.model, args.out)
        print(summary_table(scores).to_string())
        print(f"predictions and scores.csv in {out}")

    return run_cli(evaluate)


def summary_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean over subjects (undefined ones left out) per role and label of ``dice``, ``hd95_mm``
    and ``vs``, one row per (role, label)."""
    grouped = scores.groupby(["role", "label", "name"], sort=True)[["dice", "hd95_mm", "vs"]]
    return grouped.mean().reset_index()


if __name__ == "__main__":
    sys.exit(main())
