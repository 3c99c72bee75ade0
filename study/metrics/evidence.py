"""The reference models' membership evidence, and what a model's forget subjects are tested
against (``study/metrics/membership.py`` says how)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from study.metrics.membership import (
    MIN_RETRAIN_SEEDS,
    MIN_SHADOW_MODELS,
    Shadows,
    SubjectTest,
    attack_power,
    seed_spread,
    two_sided,
)

#: The figures of the membership test in every trial's row (NaN without shadow models).
MEMBERSHIP_METRICS = ("worst_forget_p_to_retrain", "forget_distinguishable")
#: A forget subject's own figures in a trial's row: ``statistic@<subject>``, ``dice@<subject>``.
SUBJECT_FIGURES = ("statistic", "dice")


def subject_column(figure: str, subject: str) -> str:
    """The trial row's column of one forget subject's ``figure`` (of ``SUBJECT_FIGURES``)."""
    return f"{figure}@{subject}"


def is_subject_column(column: str) -> bool:
    return "@" in column and column.split("@", 1)[0] in SUBJECT_FIGURES


@dataclass(frozen=True)
class ForgetReference:
    """What a model's forget subjects are tested against: per forget subject the statistics
    of the models never trained on it (the retrain seeds, the OUT shadow models), and the
    retrain seeds' Dice with their seed-to-seed spread pooled over the subjects they never saw."""

    statistics: Mapping[str, tuple[float, ...]]
    dice: Mapping[str, tuple[float, ...]]
    dice_spread: tuple[float, int]  # standard deviation, degrees of freedom
    level: float

    def tests(
        self, statistics: Mapping[str, float], dice: Mapping[str, float]
    ) -> dict[str, tuple[SubjectTest, SubjectTest]]:
        """Per forget subject: the statistic's test and the Dice test."""
        return {
            s: (
                two_sided(statistics[s], self.statistics[s]),
                two_sided(dice[s], self.dice[s], self.dice_spread),
            )
            for s in self.statistics
        }

    def verdicts(self, statistics: Mapping[str, float], dice: Mapping[str, float]) -> dict[str, str]:
        """Per forget subject: ``indistinguishable``, or ``distinguishable (under|over)`` by the
        first test that tells it apart at ``level`` / 2 (Bonferroni over the two tests: the
        statistic's, then Dice's)."""
        return self._verdicts(self.tests(statistics, dice))

    def _verdicts(self, tests: Mapping[str, tuple[SubjectTest, SubjectTest]]) -> dict[str, str]:
        verdicts = {}
        for subject, pair in tests.items():
            apart = [t for t in pair if t.distinguishable(self.level / 2)]
            verdicts[subject] = f"distinguishable ({apart[0].direction})" if apart else "indistinguishable"
        return verdicts

    def metrics(self, statistics: Mapping[str, float], dice: Mapping[str, float]) -> dict[str, float]:
        """``MEMBERSHIP_METRICS`` of a model's forget subjects' ``statistics`` and ``dice``,
        and those figures themselves (``subject_column``)."""
        tests = self.tests(statistics, dice)
        verdicts = self._verdicts(tests)
        return {
            "worst_forget_p_to_retrain": min(t.p for t, _ in tests.values()),
            "forget_distinguishable": float(sum(v != "indistinguishable" for v in verdicts.values())),
        } | {
            subject_column(figure, s): float(by[s])
            for figure, by in (("statistic", statistics), ("dice", dice))
            for s in self.statistics
        }


@dataclass(frozen=True)
class Evidence:
    """Every reference model's statistic and Dice on every labelled subject, and whom each
    model trained on. Retrained models are named ``retrain`` (the first seed) and
    ``retrain_seed_<k>``, shadow models ``shadow_<m>``."""

    statistics: Mapping[str, Mapping[str, float]]
    dice: Mapping[str, Mapping[str, float]]
    members: Mapping[str, frozenset[str]]

    @classmethod
    def from_rows(cls, rows: Sequence[Mapping[str, object]]) -> Evidence:
        """The evidence back from ``rows`` (``privacy.parquet``'s, as ``rows`` writes them)."""
        statistics: dict[str, dict[str, float]] = {}
        dice: dict[str, dict[str, float]] = {}
        members: dict[str, set[str]] = {}
        for row in rows:
            model, subject = str(row["model"]), str(row["subject"])
            if not _is_reference_model(model):
                continue  # an unlearned model's row (``<trial_id>@<epoch>``): tested, not evidence
            statistics.setdefault(model, {})[subject] = float(row["statistic"])
            dice.setdefault(model, {})[subject] = float(row["dice"])
            members.setdefault(model, set()).update([subject] if row["trained_on"] else [])
        return cls(statistics, dice, {m: frozenset(s) for m, s in members.items()})

    @property
    def retrained(self) -> list[str]:
        return [m for m in self.members if m == "retrain" or m.startswith("retrain_seed_")]

    @property
    def shadows(self) -> Shadows:
        names = [m for m in self.members if m.startswith("shadow_")]
        return Shadows({m: self.statistics[m] for m in names}, {m: self.members[m] for m in names})

    def power(self) -> dict[str, float] | None:
        """The attack's power on the shadow models (``attack_power``) as ``baseline/metrics.json``
        and the audit record give it; ``None`` without shadow models."""
        return dataclasses.asdict(attack_power(self.shadows)) if self.shadows.members else None

    def sufficient(self) -> tuple[bool, str]:
        """Whether the models suffice for the test, and if not what is missing."""
        shadows, seeds = len(self.shadows.members), len(self.retrained)
        if shadows >= MIN_SHADOW_MODELS and seeds >= MIN_RETRAIN_SEEDS:
            return True, ""
        return False, (
            f"{shadows} shadow models and {seeds} retrain seeds; the test needs at least "
            f"{MIN_SHADOW_MODELS} and {MIN_RETRAIN_SEEDS} (--shadow-models, --retrain-seeds)"
        )

    def forget_reference(self, forget: Sequence[str], level: float, without: str = "") -> ForgetReference:
        """The ``ForgetReference`` of ``forget`` subjects (``without``: a model left out of it)."""
        retrained = [m for m in self.retrained if m != without]
        shadows = self.shadows
        statistics = {
            s: tuple([self.statistics[m][s] for m in retrained] + shadows.out_statistics(s, without))
            for s in forget
        }
        # Retraining's seed-to-seed spread of Dice on the subjects it never saw (the forget
        # subjects, the holdout): trained-on subjects vary far less from seed to seed.
        seen = frozenset().union(*(self.members[m] for m in retrained))
        unseen = {
            s: [self.dice[m][s] for m in retrained] for s in self.statistics[retrained[0]] if s not in seen
        }
        dice = {s: tuple(self.dice[m][s] for m in retrained) for s in forget}
        spread, df = seed_spread(unseen)
        return ForgetReference(statistics, dice, (max(spread, 1e-3), df), level)

    def rows(self, roles: Mapping[str, str], level: float) -> list[dict[str, object]]:
        """One row per (model, subject): ``model, subject, role, trained_on, statistic, likelihood_ratio,
        z_to_retrain, p_to_retrain, direction, dice``; the test's columns for forget subjects
        only, each retrained model tested against the others."""
        forget = [s for s, role in roles.items() if role == "forget"]
        rows = []
        for model in self.members:
            reference = None
            if len(self.retrained) > 1 or model not in self.retrained:
                reference = self.forget_reference(forget, level, without=model)
            statistics, dice = self.statistics[model], self.dice[model]
            rows += self._rows_of(model, statistics, dice, self.members[model], roles, reference)
        return rows

    def tested_rows(
        self,
        model: str,
        statistics: Mapping[str, float],
        dice: Mapping[str, float],
        roles: Mapping[str, str],
        level: float,
    ) -> list[dict[str, object]]:
        """``rows`` of a model that is no reference model (an unlearned trial's, named
        ``<trial_id>@<epoch>``): its forget subjects' ``statistics`` and ``dice`` tested against
        every reference model; ``trained_on`` false (it was asked to forget them)."""
        reference = self.forget_reference(list(statistics), level)
        return self._rows_of(model, statistics, dice, frozenset(), roles, reference)

    def trial_rows(
        self, trials: Sequence[Mapping[str, object]], roles: Mapping[str, str], level: float
    ) -> list[dict[str, object]]:
        """``tested_rows`` of every trial row (a trial at a reported epoch, as ``trials.parquet``
        holds it) that has its forget subjects' figures (``subject_column``), each as model
        ``<trial_id>@<epoch>``."""
        forget = [s for s, role in roles.items() if role == "forget"]
        reference, rows = self.forget_reference(forget, level), []
        for row in trials:
            figures = {
                f: {s: float(row.get(subject_column(f, s), math.nan)) for s in forget}
                for f in SUBJECT_FIGURES
            }
            if all(math.isfinite(v) for by in figures.values() for v in by.values()):
                model = f"{row['trial_id']}@{int(row['epoch'])}"  # type: ignore[call-overload]
                statistics, dice = figures["statistic"], figures["dice"]
                rows += self._rows_of(model, statistics, dice, frozenset(), roles, reference)
        return rows

    def _rows_of(
        self,
        model: str,
        statistics: Mapping[str, float],
        dice: Mapping[str, float],
        members: frozenset[str],
        roles: Mapping[str, str],
        reference: ForgetReference | None,
    ) -> list[dict[str, object]]:
        shadows = self.shadows
        tests = {} if reference is None else reference.tests(statistics, dice)
        rows = []
        for subject, statistic in statistics.items():
            gaussians = shadows.fit(subject, without=model)
            test = tests[subject][0] if subject in tests else None
            rows.append(
                {
                    "model": model,
                    "subject": subject,
                    "role": roles.get(subject, "holdout"),
                    "trained_on": subject in members,
                    "statistic": statistic,
                    "likelihood_ratio": gaussians.log_ratio(statistic) if gaussians else math.nan,
                    "z_to_retrain": test.z if test else math.nan,
                    "p_to_retrain": test.p if test else math.nan,
                    "direction": test.direction if test else "",
                    "dice": dice[subject],
                }
            )
        return rows


def _is_reference_model(name: str) -> bool:
    return name in ("original", "retrain") or name.startswith(("retrain_seed_", "shadow_"))
