"""MRBrainS18's own scoring of a segmentation, per label, on the subject's native grid.

As the challenge's evaluation (``evaluation.py`` of the MRBrainS18 organisers) computes it,
for a ground truth ``segm.nii.gz`` and a ``result.nii.gz`` on the same grid:

- Voxels whose ground truth is 9 (infarction) or 10 (other) are set to background in both
  images; a predicted label anywhere else counts.
- Dice ``2|A & B| / (|A| + |B|)``: 0 for a label predicted but absent from the ground truth,
  undefined (NaN) only when both masks are empty.
- HD95 in mm: each mask's boundary is the mask minus its erosion in the slice plane (a 3 x 3
  square over the first two axes, none along the third, the image's outside counting as
  foreground); distances are between the boundary voxels' positions in mm (the header's
  affine); the larger of the two directed 95th percentiles (linear interpolation). Undefined
  when either mask is empty.
- Volume similarity ``1 - ||A| - |B|| / (|A| + |B|)``; undefined when both are empty.

Labels: in ``label_mode = "8class"`` labels 1-8 as they are; in ``"4class"`` both images are
first merged as the study's classes are (GM = 1, 2; WM = 3, 4; CSF = 5, 6; 7 and 8
background) and each class is scored under the value of its first label (1, 3, 5).

Beside them, ``label_map_mae``: the mean absolute error of the hard label map, a common
other reading of "MAE" (the study's own MAE is of the softmax, ``study/metrics/evaluation.py``).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.spatial import KDTree

from study.cohort.mrbrains import CLASS_NAMES, IGNORED_LABELS, LABEL_MERGES, MAX_LABEL

OFFICIAL_METRICS = ("dice", "hd95_mm", "vs")
#: The in-plane erosion that finds a mask's boundary: 3 x 3 over the first two axes, 1 along the third.
_IN_PLANE = np.ones((3, 3, 1), dtype=bool)


def class_values(label_mode: str) -> tuple[int, ...]:
    """The MRBrainS18 value that stands for each class index (background 0): the class's
    first label; ``(0, 1, 3, 5)`` in the 4-class mode, ``(0, 1, ..., 8)`` in the 8-class one."""
    merge = LABEL_MERGES[label_mode]
    n_classes = len(CLASS_NAMES[label_mode])
    return (0, *(min(v for v, c in merge.items() if c == k) for k in range(1, n_classes)))


def scored_labels(label_mode: str) -> dict[int, str]:
    """``{MRBrainS18 value: name}`` of the labels scored in ``label_mode``."""
    return dict(zip(class_values(label_mode)[1:], CLASS_NAMES[label_mode][1:], strict=True))


def _classes(volume: np.ndarray, label_mode: str) -> np.ndarray:
    """Class indices ``(X, Y, Z)`` uint8 of an MRBrainS18 label map: ``LABEL_MERGES`` applied,
    anything that is no scored label (9, 10, other values) background."""
    table = np.zeros(256, dtype=np.uint8)
    for value, index in LABEL_MERGES[label_mode].items():
        table[value] = index if value not in IGNORED_LABELS else 0
    return table[np.clip(volume, 0, 255).astype(np.uint8)]


def masked_classes(truth: np.ndarray, result: np.ndarray, label_mode: str) -> tuple[np.ndarray, np.ndarray]:
    """Both label maps ``(X, Y, Z)`` as class indices, with the voxels whose ground truth is
    9 or 10 background in both (the challenge's masking)."""
    keep = ~np.isin(truth, IGNORED_LABELS)
    return _classes(truth, label_mode) * keep, _classes(result, label_mode) * keep


def dice(truth: np.ndarray, result: np.ndarray) -> float:
    """Dice of two boolean masks; NaN when both are empty."""
    total = int(truth.sum()) + int(result.sum())
    return 2.0 * int((truth & result).sum()) / total if total else math.nan


def volume_similarity(truth: np.ndarray, result: np.ndarray) -> float:
    """``1 - ||A| - |B|| / (|A| + |B|)`` of two boolean masks; NaN when both are empty."""
    a, b = int(truth.sum()), int(result.sum())
    return 1.0 - abs(a - b) / (a + b) if a + b else math.nan


def _box(*masks: np.ndarray) -> tuple[slice, ...]:
    """The bounding box of the union of ``masks`` (none empty), a voxel wider on every side
    that stays inside the image."""
    union = np.logical_or.reduce(masks)
    box = []
    for axis in range(union.ndim):
        others = tuple(a for a in range(union.ndim) if a != axis)
        hits = np.flatnonzero(union.any(axis=others))
        box.append(slice(max(int(hits[0]) - 1, 0), int(hits[-1]) + 2))
    return tuple(box)


def boundary(mask: np.ndarray) -> np.ndarray:
    """The boundary voxels of a boolean ``mask (X, Y, Z)``: the mask minus its in-plane
    erosion, the image's outside counting as foreground."""
    return mask & ~ndimage.binary_erosion(mask, structure=_IN_PLANE, border_value=1)


def hd95(truth: np.ndarray, result: np.ndarray, affine: np.ndarray) -> float:
    """95% Hausdorff distance in mm between two boolean masks ``(X, Y, Z)`` on the grid of
    ``affine`` (4 x 4, voxel -> mm); NaN when either is empty.

    Worked out on the masks' bounding box plus a voxel (the same boundaries: the image's
    outside counts as foreground only where the box meets it); a boundary voxel the other
    mask's boundary shares is at distance 0 without a search.
    """
    if not truth.any() or not result.any():
        return math.nan
    box = _box(truth, result)
    a, b = boundary(truth[box]), boundary(result[box])
    to_mm = np.asarray(affine, dtype=np.float64)[:3, :3].T  # the translation cancels in distances
    return float(max(_directed_percentile(a, b, to_mm), _directed_percentile(b, a, to_mm)))


def _directed_percentile(a: np.ndarray, b: np.ndarray, to_mm: np.ndarray) -> float:
    """The 95th percentile of the distances in mm from each voxel of boundary ``a`` to the
    nearest voxel of boundary ``b``."""
    searched = np.argwhere(a & ~b) @ to_mm
    distances = np.zeros(int(a.sum()))
    if len(searched):
        distances[: len(searched)] = KDTree(np.argwhere(b) @ to_mm).query(searched, k=1)[0]
    return float(np.percentile(distances, 95))


def score_labels(
    truth: np.ndarray, result: np.ndarray, affine: np.ndarray, label_mode: str
) -> list[dict[str, float | int | str]]:
    """One row per scored label (``label``, ``name``, ``dice``, ``hd95_mm``, ``vs``) of
    ``result`` against ``truth``, both MRBrainS18 label maps ``(X, Y, Z)`` on the grid of
    ``affine``."""
    if truth.shape != result.shape:
        raise ValueError(f"result shape {result.shape} differs from the ground truth's {truth.shape}")
    if truth.max(initial=0) > MAX_LABEL:
        raise ValueError(f"the ground truth holds values above {MAX_LABEL}: not an MRBrainS18 segm.nii.gz")
    truth_classes, result_classes = masked_classes(truth, result, label_mode)
    rows = []
    for index, (value, name) in enumerate(scored_labels(label_mode).items(), start=1):
        a, b = truth_classes == index, result_classes == index
        rows.append(
            {
                "label": value,
                "name": name,
                "dice": dice(a, b),
                "hd95_mm": hd95(a, b, affine),
                "vs": volume_similarity(a, b),
            }
        )
    return rows


def label_map_mae(truth: np.ndarray, result: np.ndarray, label_mode: str) -> float:
    """Mean over the scored voxels (ground truth not 9 or 10) and over every class, background
    included, of ``|one_hot(result) - one_hot(truth)|``: ``2 / n_classes`` times the fraction of
    voxels given the wrong class."""
    keep = ~np.isin(truth, IGNORED_LABELS)
    if not keep.any():
        return math.nan
    wrong = (_classes(truth, label_mode) != _classes(result, label_mode)) & keep
    return 2.0 * float(wrong.sum()) / (float(keep.sum()) * len(CLASS_NAMES[label_mode]))
