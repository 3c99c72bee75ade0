"""MedicalNet preprocessing of one subject, with MONAI's transforms."""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms import MapLabelValue, NormalizeIntensity, Resize

from study.cohort.mrbrains import LABEL_MERGES, MAX_LABEL


def preprocess(
    image: np.ndarray, labels: np.ndarray, input_size: tuple[int, int, int], label_mode: str
) -> tuple[np.ndarray, np.ndarray]:
    """MedicalNet preprocessing of one subject.

    ``image (3, X, Y, Z)`` -> ``(3, D, H, W)`` float32 with (D, H, W) = ``input_size`` and
    D along the slice axis Z; each channel z-scored over its non-zero voxels, resized
    trilinearly. ``labels (X, Y, Z)`` -> merged classes ``(D, H, W)`` uint8, resized nearest;
    labels 9 and 10 become ``IGNORE_LABEL``.
    """
    merge = LABEL_MERGES[label_mode]
    # A copy, (C, Z, Y, X) = (C, D, H, W): NormalizeIntensity works in place, and the transpose
    # of nibabel's Fortran-ordered volumes would otherwise be a view of the caller's array.
    image = image.transpose(0, 3, 2, 1).copy()
    labels = np.ascontiguousarray(labels.transpose(2, 1, 0))[None]
    image = NormalizeIntensity(nonzero=True, channel_wise=True)(image)
    image = Resize(input_size, mode="trilinear", align_corners=False)(image)
    merged = MapLabelValue(
        orig_labels=list(range(MAX_LABEL + 1)),
        target_labels=[merge.get(label, 0) for label in range(MAX_LABEL + 1)],
        dtype=np.uint8,
    )(labels)
    merged = Resize(input_size, mode="nearest")(merged)

    def as_numpy(a):
        return a.numpy() if isinstance(a, torch.Tensor) else np.asarray(a)

    return as_numpy(image).astype(np.float32), as_numpy(merged)[0].astype(np.uint8)


def to_native(probabilities: torch.Tensor, native_shape: tuple[int, int, int]) -> torch.Tensor:
    """Class indices ``(X, Y, Z)`` on a subject's native grid from a model's softmax
    ``(C, D, H, W)`` on the input grid: ``preprocess`` undone (resized back trilinearly, on
    the probabilities, with the same corner convention; axes back to X, Y, Z), then argmax."""
    x, y, z = native_shape
    native = Resize((z, y, x), mode="trilinear", align_corners=False)(probabilities.float())
    # max().indices: argmax over the first axis of a large tensor is several times slower on the CPU
    return torch.as_tensor(native).max(dim=0).indices.permute(2, 1, 0)  # (Z, Y, X) -> (X, Y, Z)
