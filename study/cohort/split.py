"""Which subjects are forgotten, retained and held out: the split, checked before anything runs."""

from __future__ import annotations

from dataclasses import dataclass

from study.config import StudyError


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
    moved(split, subjects, "--subjects")


def moved(split: Split, forget: list[str], setting: str) -> Split:
    """``split`` with ``forget`` (training subjects) as its forget set; the holdout stays."""
    if len(set(forget)) != len(forget):
        raise StudyError(f"{setting} names a subject twice: {', '.join(forget)}")
    retain = tuple(s for s in split.training if s not in forget)
    if not retain:
        raise StudyError(f"{setting} names every training subject; at least one must stay to retain")
    return Split(forget=tuple(forget), retain=retain, holdout=split.holdout)
