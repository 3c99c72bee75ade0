"""Reading MRBrainS18 subject folders with nibabel; every problem a file can have is a
``StudyError`` that names the file."""

from __future__ import annotations

import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from study.cohort.mrbrains import LABEL_FILE, MAX_LABEL, MODALITY_FILES, subject_files
from study.config import StudyError


def find_subjects(root: Path) -> list[str]:
    """Sorted ids of the subject folders under ``root`` (folders holding ``segm.nii.gz``)."""
    root = Path(root)
    if not root.is_dir():
        raise StudyError(
            f"data directory {root} does not exist; pass --data with the MRBrainS18 "
            "training folder (holding 1/, 4/, 5/, ...)"
        )
    subjects = sorted(p.name for p in root.iterdir() if (p / LABEL_FILE).is_file())
    if not subjects:
        raise StudyError(
            f"data directory {root} holds no subject folders with {LABEL_FILE}; expected "
            "<root>/<subject>/segm.nii.gz and <root>/<subject>/pre/*.nii.gz"
        )
    return subjects


def _read_volume(path: Path) -> np.ndarray:
    if not path.is_file():
        raise StudyError(
            f"{path} is missing; every subject needs {', '.join(MODALITY_FILES)} and {LABEL_FILE}"
        )
    try:
        volume = np.asarray(nib.load(path).get_fdata(dtype=np.float32))
    except (OSError, EOFError, ValueError, zlib.error, nib.filebasedimages.ImageFileError) as exc:
        raise StudyError(f"{path} is not a readable NIfTI file ({exc}); re-copy it") from exc
    if volume.ndim != 3:
        raise StudyError(f"{path} has shape {volume.shape}; expected a 3D volume")
    if not np.isfinite(volume).all():
        raise StudyError(f"{path} contains NaN or infinite voxels; fix or replace the file")
    return volume


def read_subject(root: Path, subject: str) -> tuple[np.ndarray, np.ndarray]:
    """Raw ``(image (3, X, Y, Z) float32, labels (X, Y, Z) uint8)`` of one subject folder."""
    *modalities, label_file = subject_files(root, subject)
    channels = [_read_volume(path) for path in modalities]
    labels = _read_volume(label_file)
    shapes = {
        name: c.shape for name, c in zip((*MODALITY_FILES, LABEL_FILE), [*channels, labels], strict=False)
    }
    if len(set(shapes.values())) != 1:
        raise StudyError(
            f"subject {subject} in {root}: volumes differ in shape {shapes}; the three modalities "
            "and segm.nii.gz must share one grid (use the registered volumes under pre/)"
        )
    if labels.min() < 0 or labels.max() > MAX_LABEL or not np.all(labels == np.round(labels)):
        raise StudyError(
            f"{label_file} holds label values outside the integers 0..{MAX_LABEL} of "
            "MRBrainS18; check that it is the subject's segm.nii.gz and not an image"
        )
    return np.stack(channels), labels.astype(np.uint8)
