"""Membership inference: can an attacker with the model tell who was trained on?

Samples are slabs (``SLAB`` consecutive axial slices of one subject), so that a cohort of
ten subjects still gives dozens of samples. Per slab the attack sees four features of the
model's softmax output: mean cross-entropy, mean confidence (top probability), mean entropy
and the slab's foreground Dice. It is a logistic regression trained on retain slabs
(members) against holdout slabs (non-members), classes weighted equally. A slab with no
foreground class in the ground truth or the prediction has no Dice: the fitted attack
leaves it out (it is neither a hit nor a miss), the loss figures keep it:

- ``mia_auc``: its power, the AUC on retain vs holdout slabs, each subject's slabs scored
  by an attack fitted without that subject (leave-one-subject-out; leave-one-slab-out
  when a side has a single subject); 0.5 is no power.
- ``mia_forget``: the fraction of forget slabs it judges members (score > 0.5).
- ``mia_forget_auc``: the simplest attack, "lower loss = member": AUC of the forget slabs'
  cross-entropy against the holdout slabs' (no fitting). The retrain reference's value,
  not 0 and not 0.5, is the target: far below it, forgotten subjects stand out.
- ``forget_loss_gap_to_retrain``: mean over forget slabs of |cross-entropy - the retrain
  reference's cross-entropy on the same slab|; needs no holdout (real MRBrainS18 has none).

Without a holdout the three attack figures are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import torch

#: Axial slices per slab.
SLAB = 4
PRIVACY_METRICS = ("mia_auc", "mia_forget", "mia_forget_auc", "forget_loss_gap_to_retrain")


def slab_features(
    probabilities: torch.Tensor, target: torch.Tensor, dice: torch.Tensor, valid: torch.Tensor | None = None
) -> np.ndarray:
    """Features ``(S, 4)`` of one subject's ``S = ceil(D / SLAB)`` slabs.

    ``probabilities``: ``(C, D, H, W)`` softmax; ``target``: ``(D, H, W)`` class indices;
    ``dice``: ``(S,)`` foreground Dice per slab (NaN where neither map has foreground there:
    kept NaN, the attack leaves such a slab out);
    ``valid``: ``(D, H, W)`` bool, the voxels scored (default: all).
    """
    valid = torch.ones_like(target, dtype=torch.bool) if valid is None else valid
    index = torch.where(valid, target, torch.zeros_like(target)).long()
    true_probability = probabilities.gather(0, index[None])[0]
    loss = -torch.log(true_probability.clamp_min(1e-12))
    confidence = probabilities.max(dim=0).values
    entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim=0)
    rows = []
    for start in range(0, target.shape[0], SLAB):
        keep = valid[start : start + SLAB]
        count = keep.sum().clamp_min(1)
        rows.append(
            [float((m[start : start + SLAB] * keep).sum() / count) for m in (loss, confidence, entropy)]
        )
    features = np.asarray(rows, dtype=np.float64)
    return np.column_stack([features, dice.double().cpu().numpy()])


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """Area under the ROC curve of scores ``positive`` vs ``negative`` (ties count half)."""
    if len(positive) == 0 or len(negative) == 0:
        return math.nan
    greater = (positive[:, None] > negative[None, :]).sum()
    ties = (positive[:, None] == negative[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(positive) * len(negative)))


class Attack:
    """A logistic regression on standardised slab features, classes weighted equally."""

    def __init__(self, members: np.ndarray, nonmembers: np.ndarray, l2: float = 1e-2) -> None:
        x = np.vstack([members, nonmembers])
        self.mean, self.scale = x.mean(axis=0), x.std(axis=0) + 1e-9
        y = np.r_[np.ones(len(members)), np.zeros(len(nonmembers))]
        weight = np.r_[
            np.full(len(members), 0.5 / len(members)), np.full(len(nonmembers), 0.5 / len(nonmembers))
        ]
        self.coef = _fit_logistic(self._design(x), y, weight, l2)

    def _design(self, x: np.ndarray) -> np.ndarray:
        return np.column_stack([(x - self.mean) / self.scale, np.ones(len(x))])

    def score(self, x: np.ndarray) -> np.ndarray:
        """P(member) ``(N,)`` of feature rows ``x (N, 4)``."""
        return 1.0 / (1.0 + np.exp(-self._design(x) @ self.coef))


def _fit_logistic(x: np.ndarray, y: np.ndarray, weight: np.ndarray, l2: float) -> np.ndarray:
    """Weighted, L2-penalised logistic regression by Newton's method (a few steps suffice)."""
    coef = np.zeros(x.shape[1])
    penalty = np.diag([l2] * (x.shape[1] - 1) + [0.0])
    for _ in range(25):
        p = 1.0 / (1.0 + np.exp(-x @ coef))
        gradient = x.T @ (weight * (p - y)) + penalty @ coef
        hessian = (x * (weight * p * (1 - p))[:, None]).T @ x + penalty
        step = np.linalg.solve(hessian + 1e-9 * np.eye(len(coef)), gradient)
        coef -= step
        if np.abs(step).max() < 1e-8:
            break
    return coef


def _with_dice(x: np.ndarray) -> np.ndarray:
    """The rows of slab features ``x (N, 4)`` that have a Dice: those the fitted attack sees."""
    return x[np.isfinite(x).all(axis=1)]


def _cross_validated_auc(members: list[np.ndarray], nonmembers: list[np.ndarray]) -> float:
    """AUC on members vs non-members, each group of slabs scored by an attack fitted without it.

    Groups are subjects; with fewer than two subjects on a side, single slabs.
    """
    members = [m for m in map(_with_dice, members) if len(m)]
    nonmembers = [n for n in map(_with_dice, nonmembers) if len(n)]
    if not members or not nonmembers:
        return math.nan
    if min(len(members), len(nonmembers)) < 2:
        members, nonmembers = [s[None] for m in members for s in m], [s[None] for n in nonmembers for s in n]
    groups = [(True, i) for i in range(len(members))] + [(False, i) for i in range(len(nonmembers))]
    scores: dict[tuple[bool, int], np.ndarray] = {}
    for member, index in groups:
        rest_in = [x for i, x in enumerate(members) if not (member and i == index)]
        rest_out = [x for i, x in enumerate(nonmembers) if member or i != index]
        scored = (members if member else nonmembers)[index]
        scores[member, index] = Attack(np.vstack(rest_in), np.vstack(rest_out)).score(scored)
    positive = np.concatenate([scores[True, i] for i in range(len(members))])
    return auc(positive, np.concatenate([scores[False, i] for i in range(len(nonmembers))]))


def privacy_metrics(
    features: Mapping[str, np.ndarray],
    retain: Sequence[str],
    forget: Sequence[str],
    holdout: Sequence[str],
    retrain_forget_losses: np.ndarray | None = None,
) -> dict[str, float]:
    """``PRIVACY_METRICS`` from per-subject slab ``features`` (``{subject: (S, 4)}``).

    ``retrain_forget_losses``: the retrain reference's slab losses ``(F,)`` on the forget
    subjects, in ``forget`` order (``None``: the gap is NaN).
    """
    forget_x = np.vstack([features[s] for s in forget])
    metrics = dict.fromkeys(PRIVACY_METRICS, math.nan)
    if retrain_forget_losses is not None:
        metrics["forget_loss_gap_to_retrain"] = float(np.abs(forget_x[:, 0] - retrain_forget_losses).mean())
    if not holdout or not retain:
        return metrics
    members, nonmembers = np.vstack([features[s] for s in retain]), np.vstack([features[s] for s in holdout])
    metrics["mia_forget_auc"] = auc(-forget_x[:, 0], -nonmembers[:, 0])
    metrics["mia_auc"] = _cross_validated_auc([features[s] for s in retain], [features[s] for s in holdout])
    fitted_on, scored = (_with_dice(members), _with_dice(nonmembers)), _with_dice(forget_x)
    if min(len(fitted_on[0]), len(fitted_on[1])) and len(scored):
        metrics["mia_forget"] = float((Attack(*fitted_on).score(scored) > 0.5).mean())
    return metrics
