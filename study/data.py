"""MRBrainS18 reader, label merge, MedicalNet preprocessing and the forget/retain/holdout split.

Labels 9 (infarction) and 10 (other) are not scored in MRBrainS18: every label mode maps
them to ``IGNORE_LABEL``, which no class uses. The loss, the Dice and the MAE leave voxels
so labelled out, and no strategy turns them into a class.

Every NIfTI file is decoded once per study, in the driver; the preprocessed ``Cohort`` then
travels to the trials through Ray's object store.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from monai.transforms import MapLabelValue, NormalizeIntensity, Resize

from study import synthetic
from study.config import StudyConfig
from study.errors import StudyError

#: Files of one subject, relative to its folder, in channel order.
MODALITY_FILES = ("pre/reg_T1.nii.gz", "pre/reg_IR.nii.gz", "pre/FLAIR.nii.gz")
LABEL_FILE = "segm.nii.gz"
MAX_LABEL = 10
#: The value of an unscored voxel in a preprocessed label map (labels are stored as uint8).
IGNORE_LABEL = 255
#: MRBrainS18 labels left out of training and scoring: infarction, other.
IGNORED_LABELS = (9, 10)

#: MRBrainS18 label -> class. ``4class``: the MRBrainS13 convention GM = {1, 2},
#: WM = {3, 4}, CSF = {5, 6}; ``8class``: labels 1..8 as they are. Infarction 9 and
#: other 10 -> ``IGNORE_LABEL`` in every mode; the rest (cerebellum and brain stem in
#: 4-class mode) is background.
_IGNORED = dict.fromkeys(IGNORED_LABELS, IGNORE_LABEL)
LABEL_MERGES: dict[str, dict[int, int]] = {
    "4class": {1: 1, 2: 1, 3: 2, 4: 2, 5: 3, 6: 3, **_IGNORED},
    "8class": {**{label: label for label in range(1, 9)}, **_IGNORED},
}
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "4class": ("background", "GM", "WM", "CSF"),
    "8class": (
        "background",
        "cortical GM",
        "basal ganglia",
        "WM",
        "WM lesions",
        "extracerebral CSF",
        "ventricles",
        "cerebellum",
        "brain stem",
    ),
}


@dataclass(frozen=True)
class Split:
    """Subject ids of each set; ``holdout`` subjects are never trained on."""

    forget: tuple[str, ...]
    retain: tuple[str, ...]
    holdout: tuple[str, ...] = ()

    @property
    def training(self) -> tuple[str, ...]:
        """Subjects the original model is trained on: retain, then forget."""
        return self.retain + self.forget


@dataclass(frozen=True)
class Cohort:
    """Preprocessed subjects of one study.

    ``images[s]``: ``(3, D, H, W)`` float32, channels T1, IR, FLAIR, each z-scored over its
    non-zero voxels. ``labels[s]``: ``(D, H, W)`` uint8 class indices in ``0..n_classes-1``,
    or ``IGNORE_LABEL`` where the voxel is not scored.
    ``digest`` identifies the content (arrays + split) for cache keys.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    split: Split
    n_classes: int
    digest: str


def io_threads(tasks: int) -> int:
    """Threads that read or write a cohort's subjects side by side: one per core, at most 8."""
    return max(1, min(tasks, os.cpu_count() or 1, 8))


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
    folder = Path(root) / subject
    channels = [_read_volume(folder / name) for name in MODALITY_FILES]
    labels = _read_volume(folder / LABEL_FILE)
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
            f"{folder / LABEL_FILE} holds label values outside the integers 0..{MAX_LABEL} of "
            "MRBrainS18; check that it is the subject's segm.nii.gz and not an image"
        )
    return np.stack(channels), labels.astype(np.uint8)


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


def resolve_split(
    subjects: list[str],
    forget: list[str],
    retain: list[str] | None,
    holdout: list[str],
    source: str,
) -> Split:
    """The validated split: named subjects exist, sets are disjoint, forget is not empty.

    ``retain=None`` means every found subject that is neither forget nor holdout.
    """
    if not forget:
        raise StudyError("the forget set is empty; name at least one subject with --forget")
    named = {"forget": list(forget), "retain": list(retain or []), "holdout": list(holdout)}
    for set_name, ids in named.items():
        unknown = [s for s in ids if s not in subjects]
        if unknown:
            raise StudyError(
                f"--{set_name} names unknown subject(s) {', '.join(unknown)}; "
                f"{source} holds {', '.join(subjects)}"
            )
        if len(set(ids)) != len(ids):
            raise StudyError(f"--{set_name} names a subject twice: {', '.join(ids)}")
    for a, b in (("forget", "retain"), ("forget", "holdout"), ("retain", "holdout")):
        both = sorted(set(named[a]) & set(named[b]))
        if both:
            raise StudyError(
                f"subject(s) {', '.join(both)} are in both --{a} and --{b}; each subject belongs to one set"
            )
    if retain is None:
        retain = [s for s in subjects if s not in forget and s not in holdout]
    if not retain:
        raise StudyError("the retain set is empty; unlearning needs subjects to keep segmenting well")
    return Split(forget=tuple(forget), retain=tuple(retain), holdout=tuple(holdout))


def load_cohort(
    root: Path,
    split: Split,
    input_size: tuple[int, int, int],
    label_mode: str,
) -> Cohort:
    """Reads and preprocesses every subject of ``split`` under ``root``, each file once,
    several subjects at a time (decompression and resampling release the GIL)."""
    subjects = split.training + split.holdout

    def read(subject: str) -> tuple[np.ndarray, np.ndarray]:
        return preprocess(*read_subject(root, subject), input_size, label_mode)

    # One torch thread per subject: the normalisation's sums then add up in the same order on
    # every machine, so the cohort (and the cache keys made from its digest) are the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=io_threads(len(subjects))) as pool:
            read_in_order = list(pool.map(read, subjects))
    finally:
        torch.set_num_threads(threads)
    images = {subject: image for subject, (image, _) in zip(subjects, read_in_order, strict=True)}
    labels = {subject: label for subject, (_, label) in zip(subjects, read_in_order, strict=True)}
    digest = hashlib.sha256(repr((split, tuple(input_size), label_mode)).encode())
    for subject in subjects:
        digest.update(images[subject].tobytes())
        digest.update(labels[subject].tobytes())
    return Cohort(
        images=images,
        labels=labels,
        split=split,
        n_classes=len(CLASS_NAMES[label_mode]),
        digest=digest.hexdigest(),
    )


def cohort_root(config: StudyConfig) -> tuple[Path, str, list[str]]:
    """The study's data folder (the synthetic cohort written there first, once), how to name
    it in messages, and its default holdout subjects."""
    if config.data:
        return Path(config.data), f"data directory {config.data}", []
    subjects = synthetic.TRAINING_IDS + synthetic.HOLDOUT_IDS
    root = synthetic.write_cohort(
        config.cache_path / f"synthetic-v{synthetic.GENERATOR_VERSION}",
        subjects,
        threads=io_threads(len(subjects)),
    )
    return root, "the synthetic cohort", list(synthetic.HOLDOUT_IDS)


def subject_files(root: Path, subject: str) -> list[Path]:
    """The NIfTI files of one subject folder that the loader reads."""
    return [Path(root) / subject / name for name in (*MODALITY_FILES, LABEL_FILE)]


def study_split(config: StudyConfig) -> tuple[Path, Split]:
    """The study's data folder and split, without reading a volume.

    Default split: forget as configured; holdout none for real data and the synthetic
    extras for the synthetic cohort; retain every other subject.
    """
    root, source, default_holdout = cohort_root(config)
    holdout = default_holdout if config.holdout is None else config.holdout
    return root, resolve_split(find_subjects(root), config.forget, config.retain, holdout, source)


def open_cohort(config: StudyConfig) -> Cohort:
    """The study's cohort: ``config.data``, or the synthetic cohort (written once, cached),
    split as ``study_split`` says."""
    root, split = study_split(config)
    return load_cohort(root, split, tuple(config.input_size), config.label_mode)
