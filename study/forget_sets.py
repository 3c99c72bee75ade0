"""Other forget sets on a study's cohort: the training set (and so the original model) stays,
only which of its subjects are to be forgotten changes."""

from __future__ import annotations

import hashlib

from study.data import Cohort, Split
from study.errors import StudyError


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


def check_request(split: Split, subjects: list[str]) -> None:
    """A ``StudyError`` unless ``subjects`` are training subjects of ``split``, each once,
    with at least one left to retain."""
    if not subjects:
        raise StudyError("--subjects names no subject; give the ids to forget, e.g. --subjects 070")
    for subject in subjects:
        if subject in split.holdout:
            raise StudyError(
                f"subject {subject} is a holdout subject: the original model never trained on it, "
                f"so there is nothing to forget; training subjects: {', '.join(split.training)}"
            )
        if subject not in split.training:
            raise StudyError(
                f"subject {subject} is not in this study's cohort; training subjects: "
                f"{', '.join(split.training)}"
            )
    _moved(split, subjects, "--subjects")


def _moved(split: Split, forget: list[str], setting: str) -> Split:
    """``split`` with ``forget`` (training subjects) as its forget set; the holdout stays."""
    if len(set(forget)) != len(forget):
        raise StudyError(f"{setting} names a subject twice: {', '.join(forget)}")
    retain = tuple(s for s in split.training if s not in forget)
    if not retain:
        raise StudyError(f"{setting} names every training subject; at least one must stay to retain")
    return Split(forget=tuple(forget), retain=retain, holdout=split.holdout)


def _with_forget_set(cohort: Cohort, forget: list[str], setting: str) -> Cohort:
    """``cohort`` with ``forget`` (training subjects) as its forget set."""
    moved = _moved(cohort.split, forget, setting)
    digest = hashlib.sha256((cohort.digest + repr(moved)).encode()).hexdigest()
    return Cohort(cohort.images, cohort.labels, moved, cohort.n_classes, digest)
