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
from scipy.stats import t as student

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
    """A subject's IN and OUT Gaussians: means per subject, one standard deviation pooled over
    subjects and over IN and OUT (LiRA's global variance, the better estimate with few shadow
    models, Carlini et al. 2022). With one spread the ratio grows with the statistic: a model
    more trained-on-looking than every IN shadow is never called OUT."""

    mean_in: float
    mean_out: float
    std: float

    def log_ratio(self, statistic: float) -> float:
        """``log N(x; IN) - log N(x; OUT)``: above 0 the model looks trained on the subject."""
        return _log_normal(statistic, self.mean_in, self.std) - _log_normal(
            statistic, self.mean_out, self.std
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
        return Gaussians(
            float(np.mean(values[True])), float(np.mean(values[False])), self._pooled_std(models)
        )

    def _pooled_std(self, models: list[str]) -> float:
        """The statistics' spread around each subject's IN and OUT means, pooled over both and
        over subjects."""
        deviations = []
        for subject in self.statistics[models[0]]:
            for member in (True, False):
                group = [
                    self.statistics[m][subject] for m in models if (subject in self.members[m]) == member
                ]
                if len(group) > 1:
                    deviations += list(np.asarray(group) - np.mean(group))
        spread = float(np.sqrt(np.mean(np.square(deviations)))) if deviations else 0.0
        return max(spread, 1e-3)  # a floor: identical statistics would make every ratio infinite

    def out_statistics(self, subject: str, without: str = "") -> list[float]:
        """``subject``'s statistics under the shadow models not trained on it (but ``without``)."""
        return [
            self.statistics[m][subject]
            for m in self.members
            if subject not in self.members[m] and m != without
        ]


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
    """Where a model's figure falls among the reference models' (never trained on the subject):
    ``z`` its distance from their mean in prediction standard deviations, ``p`` the two-sided
    Student-t tail, ``direction`` ``under`` (above them: looks trained on) or ``over``."""

    z: float
    p: float
    direction: str

    def distinguishable(self, level: float) -> bool:
        return self.p < level


def two_sided(
    value: float, reference: Sequence[float], spread: tuple[float, int] | None = None
) -> SubjectTest:
    """``value`` against the ``reference`` values, as a new draw from their population: the
    prediction standard deviation ``s * sqrt(1 + 1/n)``, ``s`` their standard deviation with
    ``n - 1`` degrees of freedom, or ``spread = (s, degrees of freedom)`` pooled elsewhere."""
    values = np.asarray(reference, dtype=np.float64)
    n = len(values)
    std, df = spread if spread is not None else (float(values.std(ddof=1)) if n > 1 else math.nan, n - 1)
    z = (value - float(values.mean())) / max(std * math.sqrt(1 + 1 / n), 1e-6)
    return SubjectTest(float(z), float(2 * student.sf(abs(z), max(df, 1))), "under" if z > 0 else "over")


def seed_spread(values: Mapping[str, Sequence[float]]) -> tuple[float, int]:
    """The seed-to-seed standard deviation of a figure pooled over subjects, and its degrees of
    freedom: ``values[subject]`` holds one figure per retrain seed."""
    rows = [np.asarray(row, float) for row in values.values() if len(row) > 1]
    df = sum(len(row) - 1 for row in rows)
    squares = sum(float(np.square(row - row.mean()).sum()) for row in rows)
    return (math.sqrt(squares / df) if df else math.nan), df


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
