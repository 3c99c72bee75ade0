"""Per-subject membership tests, calibrated by shadow models and by retrained models.

The question is per person: can someone holding a model tell that subject ``s`` was trained
on, or that ``s`` asked to be removed? Per model and subject one number, the *statistic*:
the mean over scored voxels of the logit-scaled probability of the true class,
``log(p / (1 - p))`` (LiRA's, Carlini et al. 2022). Then:

- **Shadow models** of the original recipe, each trained on a random half of all labelled
  subjects (``shadow_subsets``: every subject in about half of them), give each subject's
  statistic when trained on (IN) and when not (OUT). Gaussians fitted to them (means per
  subject, variances pooled over subjects, as LiRA advises for few shadow models) give a
  model's log likelihood ratio for ``s``: IN against OUT.
- **The attack's power** (``attack_power``), stated before any verdict: every (shadow
  model, subject) pair scored by Gaussians fitted without that model, the truth known:
  ROC AUC and the true-positive rate at 5% false positives.
- **Two-sided indistinguishability from retraining** (``two_sided``): where a model's
  statistic for forget subject ``s`` falls among the models never trained on ``s`` (the
  retrain seeds and the OUT shadow models): a z-score, a two-sided p-value and the
  direction, ``under`` (looks trained on) or ``over`` (looks worse than never seen, itself a
  signal). The same for forget Dice against the retrain seeds' seed-to-seed spread.
- **Per-subject epsilon** (``epsilon``), the NeurIPS 2023 unlearning challenge's scoring:
  the best threshold test between several unlearned runs' statistics and the retrain seeds',
  at ``delta``; with few runs its largest value (``cap``) is small, and says so.

None of it needs a holdout: it works on real MRBrainS18's seven labelled subjects.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from study.metrics.privacy import auc

#: Probabilities are clipped to ``[EPS, 1 - EPS]`` before the logit.
EPS = 1e-6
#: The fewest shadow models with which every subject keeps IN and OUT models when one is
#: left out (``attack_power``), and the fewest retrain seeds that give a spread.
MIN_SHADOW_MODELS, MIN_RETRAIN_SEEDS = 4, 2
#: The false-positive rate of the attack's stated operating point.
FPR = 0.05


def membership_statistic(probabilities: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> float:
    """Mean over ``valid`` voxels of ``log(p / (1 - p))``, ``p`` the softmax probability of the
    true class. ``probabilities``: ``(C, D, H, W)``; ``target``: ``(D, H, W)``; ``valid``: bool."""
    index = torch.where(valid, target, torch.zeros_like(target)).long()
    p = probabilities.gather(0, index[None])[0].double().clamp(EPS, 1 - EPS)
    logit = torch.log(p) - torch.log1p(-p)
    return float(logit[valid].mean()) if bool(valid.any()) else math.nan


def shadow_subsets(subjects: Sequence[str], models: int, seed: int) -> list[tuple[str, ...]]:
    """The training subjects of ``models`` shadow models: pairs of complementary random halves
    (an odd last model takes a random half), so every subject is in ``models / 2`` of them,
    give or take one. Each subset is in ``subjects``' order."""
    rng = np.random.default_rng(seed)
    half = len(subjects) // 2
    subsets = []
    while len(subsets) < models:
        order = rng.permutation(len(subjects))
        first = set(order[:half].tolist())
        pair = [tuple(s for i, s in enumerate(subjects) if (i in first) == side) for side in (True, False)]
        subsets += pair[: models - len(subsets)]
    return subsets


@dataclass(frozen=True)
class Gaussians:
    """A subject's IN and OUT Gaussians: means per subject, standard deviations pooled."""

    mean_in: float
    mean_out: float
    std_in: float
    std_out: float

    def log_ratio(self, statistic: float) -> float:
        """``log N(x; IN) - log N(x; OUT)``: above 0 the model looks trained on the subject."""
        return _log_normal(statistic, self.mean_in, self.std_in) - _log_normal(
            statistic, self.mean_out, self.std_out
        )


def _log_normal(x: float, mean: float, std: float) -> float:
    return -0.5 * ((x - mean) / std) ** 2 - math.log(std * math.sqrt(2 * math.pi))


@dataclass(frozen=True)
class Shadows:
    """Shadow models' statistics ``{model: {subject: statistic}}`` and training sets."""

    statistics: Mapping[str, Mapping[str, float]]
    members: Mapping[str, frozenset[str]]

    def fit(self, subject: str, without: str | None = None) -> Gaussians | None:
        """``subject``'s Gaussians from every shadow model but ``without``; ``None`` when the
        subject is then IN or OUT of none."""
        models = [m for m in self.members if m != without]
        values: dict[bool, list[float]] = {True: [], False: []}
        for m in models:
            values[subject in self.members[m]].append(self.statistics[m][subject])
        if not values[True] or not values[False]:
            return None
        spreads = [self._pooled_std(models, member) for member in (True, False)]
        return Gaussians(float(np.mean(values[True])), float(np.mean(values[False])), *spreads)

    def _pooled_std(self, models: list[str], member: bool) -> float:
        """The IN (or OUT) statistics' spread around each subject's mean, pooled over subjects."""
        deviations = []
        for subject in self.statistics[models[0]]:
            group = [self.statistics[m][subject] for m in models if (subject in self.members[m]) == member]
            if len(group) > 1:
                deviations += list(np.asarray(group) - np.mean(group))
        spread = float(np.sqrt(np.mean(np.square(deviations)))) if deviations else 0.0
        return max(spread, 1e-3)  # a floor: identical statistics would make every ratio infinite

    def out_statistics(self, subject: str) -> list[float]:
        """``subject``'s statistics under the shadow models not trained on it."""
        return [self.statistics[m][subject] for m in self.members if subject not in self.members[m]]


@dataclass(frozen=True)
class AttackPower:
    """The attack's power on the shadow models: ROC AUC, TPR at ``FPR`` false positives, and
    the number of (shadow model, subject) pairs scored."""

    auc: float
    tpr_at_5_fpr: float
    pairs: int


def attack_power(shadows: Shadows) -> AttackPower:
    """Every (shadow model, subject) pair scored by the Gaussians fitted without that model
    (leave-one-shadow-model-out), against the truth."""
    scores: dict[bool, list[float]] = {True: [], False: []}
    for model, members in shadows.members.items():
        for subject, statistic in shadows.statistics[model].items():
            if (gaussians := shadows.fit(subject, without=model)) is not None:
                scores[subject in members].append(gaussians.log_ratio(statistic))
    positive, negative = np.asarray(scores[True]), np.asarray(scores[False])
    pairs = len(positive) + len(negative)
    if not len(positive) or not len(negative):
        return AttackPower(math.nan, math.nan, pairs)
    return AttackPower(auc(positive, negative), tpr_at_fpr(positive, negative, FPR), pairs)


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float) -> float:
    """The largest share of ``positive`` scores above a threshold that at most ``fpr`` of the
    ``negative`` scores exceed."""
    allowed = math.floor(fpr * len(negative))
    threshold = np.sort(negative)[::-1][allowed] if allowed < len(negative) else -math.inf
    return float((positive > threshold).mean())


@dataclass(frozen=True)
class SubjectTest:
    """Where a model's figure falls among the reference models' (never trained on the subject)."""

    z: float
    p: float
    direction: str  # "under": above the references (looks trained on); "over": below them

    def distinguishable(self, level: float) -> bool:
        return self.p < level


def two_sided(value: float, reference: Sequence[float], spread: float | None = None) -> SubjectTest:
    """``value`` against the ``reference`` values: z-score with their mean and standard deviation
    (``spread`` instead, when given), two-sided normal p-value, and the direction."""
    values = np.asarray(reference, dtype=np.float64)
    std = spread if spread is not None else float(values.std(ddof=1)) if len(values) > 1 else math.nan
    z = (value - float(values.mean())) / max(std, 1e-6)
    return SubjectTest(float(z), math.erfc(abs(z) / math.sqrt(2)), "under" if z > 0 else "over")


def seed_spread(values: Mapping[str, Sequence[float]]) -> float:
    """The seed-to-seed standard deviation of a figure, pooled over subjects:
    ``values[subject]`` holds one figure per retrain seed."""
    deviations = [v - np.mean(row) for row in values.values() if len(row) > 1 for v in row]
    return float(np.sqrt(np.sum(np.square(deviations)) / max(1, len(deviations) - len(values))))


@dataclass(frozen=True)
class Epsilon:
    """Per-subject epsilon of the best threshold test between two sets of runs' statistics,
    with the run counts and the largest epsilon those counts can show (``cap``)."""

    epsilon: float
    cap: float
    runs: int
    references: int


def epsilon(unlearned: Sequence[float], retrained: Sequence[float], delta: float = 1e-5) -> Epsilon:
    """The NeurIPS 2023 unlearning challenge's per-example epsilon: over every threshold test
    "statistic above t means unlearned" (and below), the largest
    ``log((1 - delta - FPR) / FNR)`` or ``log((1 - delta - FNR) / FPR)``; an error rate of 0
    counts as one run in the smaller set, so the result is at most ``cap``."""
    u, r = np.sort(np.asarray(unlearned, float)), np.sort(np.asarray(retrained, float))
    floor = 1.0 / max(len(u), len(r))
    best = 0.0
    for t in np.unique(np.r_[u, r, -np.inf]):
        for above in (True, False):
            fpr = float((r > t).mean() if above else (r <= t).mean())  # retrained called unlearned
            fnr = float((u <= t).mean() if above else (u > t).mean())  # unlearned called retrained
            fpr, fnr = max(fpr, floor), max(fnr, floor)
            for a, b in ((fpr, fnr), (fnr, fpr)):
                if 1 - delta - a > 0:
                    best = max(best, math.log((1 - delta - a) / b))
    cap = math.log((1 - delta - floor) / floor) if floor < 1 - delta else 0.0
    return Epsilon(best, cap, len(u), len(r))


#: The figures of the membership test in every trial's row (NaN without shadow models).
MEMBERSHIP_METRICS = ("worst_forget_p_to_retrain", "forget_distinguishable")


@dataclass(frozen=True)
class ForgetReference:
    """What a model's forget subjects are tested against: per forget subject the statistics
    of the models never trained on it (the retrain seeds, the OUT shadow models), and the
    retrain seeds' Dice with their seed-to-seed spread pooled over subjects."""

    statistics: Mapping[str, tuple[float, ...]]
    dice: Mapping[str, tuple[float, ...]]
    dice_spread: float
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
        first test that tells it apart at ``level`` (the statistic's, then Dice's)."""
        verdicts = {}
        for subject, tests in self.tests(statistics, dice).items():
            apart = [t for t in tests if t.distinguishable(self.level)]
            verdicts[subject] = f"distinguishable ({apart[0].direction})" if apart else "indistinguishable"
        return verdicts

    def metrics(self, statistics: Mapping[str, float], dice: Mapping[str, float]) -> dict[str, float]:
        """``MEMBERSHIP_METRICS`` of a model's forget subjects' ``statistics`` and ``dice``."""
        tests = self.tests(statistics, dice)
        verdicts = self.verdicts(statistics, dice)
        return {
            "worst_forget_p_to_retrain": min(t.p for t, _ in tests.values()),
            "forget_distinguishable": float(sum(v != "indistinguishable" for v in verdicts.values())),
        }


@dataclass(frozen=True)
class Evidence:
    """Every reference model's statistic and Dice on every labelled subject, and whom each
    model trained on. Retrained models are named ``retrain`` (the first seed) and
    ``retrain_seed_<k>``, shadow models ``shadow_<m>``."""

    statistics: Mapping[str, Mapping[str, float]]
    dice: Mapping[str, Mapping[str, float]]
    members: Mapping[str, frozenset[str]]

    @property
    def retrained(self) -> list[str]:
        return [m for m in self.members if m == "retrain" or m.startswith("retrain_seed_")]

    @property
    def shadows(self) -> Shadows:
        names = [m for m in self.members if m.startswith("shadow_")]
        return Shadows({m: self.statistics[m] for m in names}, {m: self.members[m] for m in names})

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
            s: tuple([self.statistics[m][s] for m in retrained] + [v for v in shadows.out_statistics(s)])
            for s in forget
        }
        every = {s: [self.dice[m][s] for m in retrained] for s in self.statistics[retrained[0]]}
        dice = {s: tuple(every[s]) for s in forget}
        return ForgetReference(statistics, dice, max(seed_spread(every), 1e-3), level)

    def rows(self, roles: Mapping[str, str], level: float) -> list[dict[str, object]]:
        """One row per (model, subject): ``model, subject, role, statistic, likelihood_ratio,
        z_to_retrain, p_to_retrain, direction, dice``; the test's columns for forget subjects
        only, each retrained model tested against the others."""
        shadows, forget = self.shadows, [s for s, role in roles.items() if role == "forget"]
        rows = []
        for model in self.members:
            tests = {}
            if len(self.retrained) > 1 or model not in self.retrained:
                reference = self.forget_reference(forget, level, without=model)
                tests = reference.tests(self.statistics[model], self.dice[model])
            for subject, statistic in self.statistics[model].items():
                gaussians = shadows.fit(subject, without=model)
                test = tests[subject][0] if subject in tests else None
                rows.append(
                    {
                        "model": model,
                        "subject": subject,
                        "role": roles.get(subject, "holdout"),
                        "statistic": statistic,
                        "likelihood_ratio": gaussians.log_ratio(statistic) if gaussians else math.nan,
                        "z_to_retrain": test.z if test else math.nan,
                        "p_to_retrain": test.p if test else math.nan,
                        "direction": test.direction if test else "",
                        "dice": self.dice[model][subject],
                    }
                )
        return rows
