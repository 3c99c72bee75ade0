"""The embedded default cohort: synthetic subjects written in MRBrainS18's exact layout.

Real MRBrainS18 data needs registration and an agreement, so the default study runs on
procedural heads instead. Each subject is drawn from its own seed and differs from the
others in everything a model could memorise: head size and shape, cortical folding, ventricle
size, lesion load and position, per-modality tissue contrast, bias field and noise level.
About half of the subjects also have one cortical-subcortical infarct (label 9), which
MRBrainS18 leaves unscored and the loader maps to ``IGNORE_LABEL``.

Files (``study/cohort/mrbrains.py``), geometry and label values are those of the MRBrainS18
training release: 240 x 240 x 48 voxels of 0.958 x 0.958 x 3.0 mm; labels 0 background, 1 cortical GM,
2 basal ganglia, 3 WM, 4 WM lesions, 5 extracerebral CSF, 6 ventricles, 7 cerebellum,
8 brain stem, 9 infarction (10, other, is never written). The study reads them back
through the same loader as real data.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

from study.cohort.mrbrains import subject_files

#: The MRBrainS18 training subjects, then three extra subjects that are never trained on.
TRAINING_IDS = ("1", "4", "5", "7", "14", "070", "148")
HOLDOUT_IDS = ("101", "102", "103")
SHAPE = (240, 240, 48)
VOXEL_MM = (0.958, 0.958, 3.0)
#: Bumped whenever the generator changes, so that cached cohorts are rewritten.
GENERATOR_VERSION = 3
#: MRBrainS18's infarction label (not scored), and the share of subjects that have one.
INFARCT = 9
INFARCT_PROBABILITY = 0.5

# Mean intensity of each tissue in (T1, IR, FLAIR), before a subject's own contrast:
# T1: WM > GM > CSF; IR: strong GM/WM contrast; FLAIR: CSF dark, lesions bright.
_SCALP, _SKULL = 20, 21  # tissues outside the label set (labelled 0 in segm)
_TISSUE_MEANS = {
    1: (0.60, 0.35, 0.62),  # cortical GM
    2: (0.72, 0.55, 0.58),  # basal ganglia
    3: (0.95, 0.92, 0.45),  # WM
    4: (0.52, 0.50, 1.00),  # WM lesions
    5: (0.22, 0.05, 0.08),  # extracerebral CSF
    6: (0.18, 0.04, 0.06),  # ventricles
    7: (0.78, 0.62, 0.55),  # cerebellum
    8: (0.88, 0.80, 0.50),  # brain stem
    _SCALP: (0.85, 0.45, 0.65),
    _SKULL: (0.08, 0.06, 0.07),
}
# A chronic infarct: T1 and IR dark (cavitation, towards CSF), FLAIR bright (gliosis).
_INFARCT_MEANS = (0.35, 0.15, 0.80)


def affine() -> np.ndarray:
    """The 4x4 voxel-to-mm affine of an MRBrainS18 volume (axis-aligned, centred)."""
    centre = (np.array(SHAPE) - 1) / 2 * np.array(VOXEL_MM)
    matrix = np.diag([*VOXEL_MM, 1.0])
    matrix[:3, 3] = -centre
    return matrix


def _subject_seed(cohort_seed: int, subject: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{cohort_seed}:{subject}".encode()).digest()[:4], "little")


def _smooth_field(rng: np.random.Generator, coarse: tuple[int, int, int]) -> np.ndarray:
    """A smooth random field of ``SHAPE`` with unit standard deviation, from a coarse grid."""
    grid = torch.from_numpy(rng.standard_normal(coarse).astype(np.float32))[None, None]
    field = F.interpolate(grid, size=SHAPE, mode="trilinear", align_corners=True)[0, 0].numpy()
    return (field - field.mean()) / (field.std() + 1e-6)


def _axes() -> list[np.ndarray]:
    """Voxel-centre coordinates in mm along x, y, z, centred on the volume."""
    return [
        ((np.arange(n) - (n - 1) / 2) * v).astype(np.float32) for n, v in zip(SHAPE, VOXEL_MM, strict=True)
    ]


def _ellipsoid(centre, radii) -> np.ndarray:
    """Mask ``SHAPE`` of the voxels inside an axis-aligned ellipsoid (mm), computed on its box."""
    mask = np.zeros(SHAPE, dtype=bool)
    box, terms = [], []
    for axis, c, r in zip(_axes(), centre, radii, strict=True):
        lo, hi = np.searchsorted(axis, c - r), np.searchsorted(axis, c + r, side="right")
        box.append(slice(lo, hi))
        terms.append(((axis[lo:hi] - c) / r) ** 2)
    mask[tuple(box)] = terms[0][:, None, None] + terms[1][None, :, None] + terms[2][None, None, :] <= 1.0
    return mask


def make_subject(subject: str, cohort_seed: int = 0) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """One synthetic subject: ``({"T1"|"IR"|"FLAIR": (240, 240, 48) int16}, labels uint8)``."""
    rng = np.random.default_rng(_subject_seed(cohort_seed, subject))
    mm = np.stack(np.meshgrid(*_axes(), indexing="ij"))  # (3, X, Y, Z) voxel centres in mm

    # Head: a perturbed ellipsoid; s is the normalised radius (1 = outside of the scalp).
    radii = np.array([rng.uniform(64, 76), rng.uniform(82, 96), rng.uniform(60, 68)])
    centre = rng.uniform(-4, 4, size=3) * np.array([1.0, 1.0, 0.5])
    shape_field = _smooth_field(rng, (4, 4, 3))
    s = np.sqrt(sum(((mm[i] - centre[i]) / radii[i]) ** 2 for i in range(3)))
    s = s / (1 + rng.uniform(0.03, 0.07) * shape_field)

    # Cortex: the GM/WM boundary and the pial surface are folded by a mid-frequency field;
    # the subject's folding pattern is its own draw of that field.
    folding = _smooth_field(rng, (12, 12, 6))
    sulci = _smooth_field(rng, (16, 16, 7))
    csf_inner = 0.84 - rng.uniform(0.0, 0.04)  # atrophy widens the CSF space
    pial = csf_inner - 0.07 * np.clip(sulci, 0, None)
    white = 0.64 + rng.uniform(-0.03, 0.03) + 0.06 * folding

    labels = np.zeros(SHAPE, dtype=np.uint8)
    tissue = np.zeros(SHAPE, dtype=np.uint8)
    tissue[s < 1.0] = _SCALP
    tissue[s < 0.95] = _SKULL
    labels[s < 0.90] = 5
    labels[s < pial] = 1
    labels[s < white] = 3

    brain = s < pial
    vent_scale = rng.uniform(0.7, 1.7)
    for side in (-1, 1):
        vent = _ellipsoid(
            centre + np.array([side * 7 * vent_scale, 4, 8]),
            np.array([5, 22, 10]) * np.array([vent_scale, 1, 0.9 + 0.2 * vent_scale]),
        )
        basal = _ellipsoid(centre + np.array([side * 23, 2, 0]), (8, 12, 9))
        labels[basal & brain] = 2
        labels[vent & brain] = 6

    cerebellum = _ellipsoid(
        centre + np.array([0, -0.6 * radii[1], -0.62 * radii[2]]), (0.55 * radii[0], 22, 16)
    )
    stem = _ellipsoid(centre + np.array([0, -12, -0.6 * radii[2]]), (10, 11, 0.5 * radii[2]))
    labels[cerebellum & (s < 0.88)] = 7
    labels[stem & (s < 0.88)] = 8

    _add_lesions(labels, mm, rng)
    infarct_rng = np.random.default_rng([_subject_seed(cohort_seed, subject), INFARCT])
    _add_infarct(labels, mm, infarct_rng)
    tissue[labels > 0] = labels[labels > 0]
    return _scan(tissue, rng, infarct_rng), labels


def _add_lesions(labels: np.ndarray, mm: np.ndarray, rng: np.random.Generator) -> None:
    """Relabels a subject's WM lesions (label 4) in ``labels (X, Y, Z)``, in place."""
    white_matter = labels == 3
    candidates = np.flatnonzero(white_matter)
    for _ in range(rng.poisson(rng.uniform(1, 8))):
        at = np.unravel_index(candidates[rng.integers(len(candidates))], SHAPE)
        lesion = _ellipsoid(
            mm[(slice(None), *at)],
            (rng.uniform(3, 8), rng.uniform(3, 8), rng.uniform(4, 9)),
        )
        labels[lesion & white_matter] = 4


def _add_infarct(labels: np.ndarray, mm: np.ndarray, rng: np.random.Generator) -> None:
    """With probability ``INFARCT_PROBABILITY``, one cortical-subcortical infarct (label 9).

    An ellipsoid centred on a cortical GM voxel replaces the GM, WM and WM lesion voxels it
    covers in ``labels (X, Y, Z)``, in place. Drawn from its own ``rng``, so the rest of the
    subject is what it was before infarcts existed.
    """
    if rng.random() >= INFARCT_PROBABILITY:
        return
    cortex = np.flatnonzero(labels == 1)
    at = np.unravel_index(cortex[rng.integers(len(cortex))], SHAPE)
    infarct = _ellipsoid(mm[(slice(None), *at)], (rng.uniform(8, 14), rng.uniform(8, 14), rng.uniform(8, 12)))
    labels[infarct & np.isin(labels, (1, 3, 4))] = INFARCT


def _scan(
    tissue: np.ndarray, rng: np.random.Generator, infarct_rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """``{"T1"|"IR"|"FLAIR": (240, 240, 48) int16}`` of a tissue map: the subject's own
    contrast, bias field and noise (its scanner session)."""
    bias = np.exp(rng.uniform(0.05, 0.3) * _smooth_field(rng, (3, 3, 2)))
    noise_sigma = rng.uniform(0.01, 0.15)
    images = {}
    for channel, modality in enumerate(("T1", "IR", "FLAIR")):
        lookup = np.zeros(256, dtype=np.float32)
        for value, means in _TISSUE_MEANS.items():
            lookup[value] = means[channel] * _contrast_jitter(rng)
        lookup[INFARCT] = _INFARCT_MEANS[channel] * _contrast_jitter(infarct_rng)
        volume = lookup[tissue] * bias
        volume += noise_sigma * rng.standard_normal(SHAPE).astype(np.float32)
        gain = rng.uniform(600, 1400)
        images[modality] = np.clip(volume * gain, 0, 32767).astype(np.int16)
    return images


def _contrast_jitter(rng: np.random.Generator) -> float:
    # Clipped so that the tissue order of each modality (T1: WM > GM > CSF, ...) holds.
    return float(np.exp(np.clip(rng.normal(0.0, 0.25), -0.22, 0.22)))


def _save(volume: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(volume, affine())
    image.header.set_xyzt_units("mm")
    image.set_qform(affine(), code=1)
    image.set_sform(affine(), code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, path)


def _write_subject(root: Path, subject: str, seed: int) -> None:
    images, labels = make_subject(subject, seed)
    volumes = (images["T1"], images["IR"], images["FLAIR"], labels)  # the files' order
    for volume, path in zip(volumes, subject_files(root, subject), strict=True):
        _save(volume, path)


def cohort_folder(cache_dir: Path) -> Path:
    """Where the default synthetic cohort of this generator version lives in a cache folder."""
    return Path(cache_dir) / f"synthetic-v{GENERATOR_VERSION}"


def write_cohort(
    root: Path,
    subjects: tuple[str, ...] = TRAINING_IDS + HOLDOUT_IDS,
    seed: int = 0,
    threads: int = 1,
) -> Path:
    """Writes the cohort into ``root`` unless it is already there, ``threads`` subjects at a
    time; returns ``root``.

    Written into a temporary sibling and renamed, so an interrupted write never leaves a
    cohort that looks complete. ``root/manifest.json`` records what was written.
    """
    root = Path(root)
    manifest = {"generator_version": GENERATOR_VERSION, "seed": seed, "subjects": list(subjects)}
    manifest_path = root / "manifest.json"
    if manifest_path.is_file() and json.loads(manifest_path.read_text()) == manifest:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}-", dir=root.parent))
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:  # numpy, torch and zlib release the GIL
            list(pool.map(lambda subject: _write_subject(staging, subject, seed), subjects))
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if root.exists():
            shutil.rmtree(root)
        os.replace(staging, root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root
