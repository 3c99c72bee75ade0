"""The study's cohort: every subject of its split read once and preprocessed, in memory.

Every NIfTI file is decoded in the driver, and its preprocessed arrays are cached (keyed by
the files' bytes and the preprocessing settings), so a resume, a deletion request or another
study of the same data reads them back in a fraction of a second; the ``Cohort`` then
travels to the trials through Ray's object store.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from study.cohort import synthetic
from study.cohort.mrbrains import CLASS_NAMES, subject_files
from study.cohort.preprocess import preprocess
from study.cohort.reader import find_subjects, read_subject
from study.cohort.split import Split, check_request, moved, resolve_split
from study.config import StudyConfig, StudyError

#: Bumped whenever ``preprocess`` changes what it returns: cohorts cached before are not read.
PREPROCESSING = 1


@dataclass(frozen=True)
class Cohort:
    """Preprocessed subjects of one study.

    ``images[s]``: ``(3, D, H, W)`` float32, channels T1, IR, FLAIR, each z-scored over its
    non-zero voxels. ``labels[s]``: ``(D, H, W)`` uint8 class indices in ``0..n_classes-1``,
    or ``IGNORE_LABEL`` where the voxel is not scored.
    ``data_digest`` identifies the subjects' arrays alone (whatever the split), ``digest``
    the arrays and the split: the cache keys of models trained on them.
    """

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    split: Split
    n_classes: int
    digest: str
    data_digest: str = ""

    @property
    def labelled(self) -> tuple[str, ...]:
        """Every subject with labels (training and holdout alike), sorted."""
        return tuple(sorted(self.images))


def io_threads(tasks: int) -> int:
    """Threads that read or write a cohort's subjects side by side: one per core, at most 8."""
    return max(1, min(tasks, os.cpu_count() or 1, 8))


def load_cohort(
    root: Path,
    split: Split,
    input_size: tuple[int, int, int],
    label_mode: str,
    cache: Path | None = None,
) -> Cohort:
    """Reads and preprocesses every subject of ``split`` under ``root``, each file once,
    several subjects at a time (decompression and resampling release the GIL); with ``cache``
    (a folder), the arrays are read from there when these very files were preprocessed the
    same way before, and stored there otherwise."""
    subjects = split.training + split.holdout
    key = _cache_key(root, subjects, input_size, label_mode) if cache is not None else None
    cached = cache / "cohorts" / f"{key}.npz" if cache is not None and key else None
    arrays = _read_cached(cached, subjects) if cached else None
    if arrays is None:
        arrays = _read_all(root, subjects, input_size, label_mode)
        if cached:
            _store(cached, arrays)
    images = {subject: image for subject, (image, _) in arrays.items()}
    labels = {subject: label for subject, (_, label) in arrays.items()}
    data = hashlib.sha256(repr((tuple(input_size), label_mode)).encode())
    for subject in sorted(subjects):
        data.update(subject.encode())
        data.update(images[subject].tobytes())
        data.update(labels[subject].tobytes())
    return Cohort(
        images=images,
        labels=labels,
        split=split,
        n_classes=len(CLASS_NAMES[label_mode]),
        digest=_digest(data.hexdigest(), split),
        data_digest=data.hexdigest(),
    )


Arrays = dict[str, tuple[np.ndarray, np.ndarray]]


def _read_all(root: Path, subjects: list[str], input_size: tuple[int, int, int], label_mode: str) -> Arrays:
    def read(subject: str) -> tuple[np.ndarray, np.ndarray]:
        return preprocess(*read_subject(root, subject), input_size, label_mode)

    # One torch thread per subject: the normalisation's sums then add up in the same order on
    # every machine, so the cohort (and the cache keys made from its digest) are the same.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=io_threads(len(subjects))) as pool:
            return dict(zip(subjects, pool.map(read, subjects), strict=True))
    finally:
        torch.set_num_threads(threads)


def _cache_key(root: Path, subjects: list[str], input_size: tuple[int, int, int], label_mode: str) -> str:
    """A digest of every file's bytes and of how they are preprocessed; empty when a file is
    missing (the read then says which)."""
    key = hashlib.sha256(repr((PREPROCESSING, tuple(input_size), label_mode)).encode())
    for subject in sorted(subjects):
        key.update(subject.encode())
        for path in subject_files(root, subject):
            if not path.is_file():
                return ""
            key.update(hashlib.sha256(path.read_bytes()).digest())
    return key.hexdigest()


def _read_cached(path: Path, subjects: list[str]) -> Arrays | None:
    """The cached arrays of ``subjects``; ``None`` when there are none, or they cannot be read
    (a cut-off file: they are read from the NIfTI files again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as npz:
            return {s: (npz[f"image/{s}"], npz[f"labels/{s}"]) for s in subjects}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None


def _store(path: Path, arrays: Arrays) -> None:
    """Writes ``arrays`` to ``path`` whole or not at all (a read-only cache is skipped)."""
    named = {f"image/{s}": image for s, (image, _) in arrays.items()}
    named |= {f"labels/{s}": labels for s, (_, labels) in arrays.items()}
    partial = path.with_name(f".{path.stem}.{os.getpid()}.partial.npz")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez(partial, **named)
        os.replace(partial, path)
    except OSError:
        pass  # the cache is a convenience: the study goes on with the arrays it has
    finally:
        partial.unlink(missing_ok=True)


def _digest(data_digest: str, split: Split) -> str:
    return hashlib.sha256((data_digest + repr(split)).encode()).hexdigest()


def cohort_root(config: StudyConfig) -> tuple[Path, str, list[str]]:
    """The study's data folder (the synthetic cohort written there first, once), how to name
    it in messages, and its default holdout subjects."""
    if config.data:
        return Path(config.data), f"data directory {config.data}", []
    subjects = synthetic.TRAINING_IDS + synthetic.HOLDOUT_IDS
    root = synthetic.write_cohort(
        synthetic.cohort_folder(config.cache_path), subjects, threads=io_threads(len(subjects))
    )
    return root, "the synthetic cohort", list(synthetic.HOLDOUT_IDS)


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
    return load_cohort(root, split, tuple(config.input_size), config.label_mode, cache=config.cache_path)


def with_other_forget(cohort: Cohort, other: list[str] | None) -> Cohort | None:
    """The same subjects with another forget set, for asking whether a configuration carries
    over to other subjects; ``None`` when there is none to ask with.

    ``other=None``: the first ``len(forget)`` retain subjects (``None`` when there are fewer);
    ``[]``: none. The old forget subjects join the retain set, the holdout stays; the training
    set, and so the original model, is the same.
    """
    split = cohort.split
    if other is None:
        other = list(split.retain[: len(split.forget)]) if len(split.retain) >= len(split.forget) else []
    if not other:
        return None
    if outside := [s for s in other if s not in split.retain]:
        raise StudyError(
            f"other_forget names {', '.join(outside)}, which are not retain subjects; "
            f"choose from {', '.join(split.retain)}"
        )
    return _with_forget_set(cohort, other, "other_forget")


def with_forget(cohort: Cohort, subjects: list[str]) -> Cohort:
    """The same subjects with ``subjects`` (any of the training subjects) as the forget set:
    a deletion request on the original model (``python -m study.forget``)."""
    check_request(cohort.split, subjects)
    return _with_forget_set(cohort, subjects, "--subjects")


def _with_forget_set(cohort: Cohort, forget: list[str], setting: str) -> Cohort:
    """``cohort`` with ``forget`` (training subjects) as its forget set."""
    split = moved(cohort.split, forget, setting)
    return _with_split(cohort, split)


def trained_on(cohort: Cohort, members: tuple[str, ...]) -> Cohort:
    """The same subjects split so that a model trains on ``members`` alone (the retain set, in
    that order) and every other subject is held out: a model of the original recipe, a
    retrained model or a shadow model."""
    others = tuple(s for s in cohort.labelled if s not in members)
    return _with_split(cohort, Split(forget=(), retain=tuple(members), holdout=others))


def _with_split(cohort: Cohort, split: Split) -> Cohort:
    digest = _digest(cohort.data_digest or cohort.digest, split)
    return Cohort(cohort.images, cohort.labels, split, cohort.n_classes, digest, cohort.data_digest)
