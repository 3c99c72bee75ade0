"""The epoch loop without Ray, and the two first strategies' definitions, on real tensors."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from study.metrics import set_metrics
from study.model import MedicalNetSegmentation
from trainables.loop import LoopSettings, run_epochs
from trainables.max_loss import MaxLoss
from trainables.noisy_label import NoisyLabel, corrupt_labels
from trainables.strategy import Batch


def _model() -> MedicalNetSegmentation:
    torch.manual_seed(0)
    return MedicalNetSegmentation(depth=10, n_classes=4, width=0.125)


def test_loop_runs_without_ray_and_reports_every_epoch(tiny_cohort):
    model = _model()
    original = set_metrics(model, tiny_cohort, torch.device("cpu"))
    reports = []
    settings = LoopSettings(
        max_epochs=3, lr=1e-3, batch_size=2, checkpoint_every=2, original_metrics=original, warmup_epochs=1
    )
    strategy = NoisyLabel({"noise_level": 0.5, "retain_weight": 1.0}, 4, copy.deepcopy(model).eval())
    final = run_epochs(model, strategy, tiny_cohort, settings, lambda m, s: reports.append((m, s)))

    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert [s is not None for _, s in reports] == [False, True, True]  # every 2nd epoch and the last
    assert reports[-1][1]["epoch"] == 3 and "optimizer" in reports[-1][1]
    for key in ("retain_dice", "forget_dice", "holdout_dice"):
        assert 0.0 <= final[key] <= 1.0
    assert final["retain_kept"] == pytest.approx(final["retain_dice"] / original["retain_dice"])
    assert reports[-1][0]["diverged"] == 0.0


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(tiny_cohort):
    settings = LoopSettings(max_epochs=2, lr=1e-3, batch_size=2, checkpoint_every=1)
    params = {"noise_level": 0.8, "retain_weight": 1.0}

    straight, states = _model(), []
    run_epochs(straight, NoisyLabel(params, 4, None), tiny_cohort, settings, lambda m, s: states.append(s))

    resumed = _model()
    run_epochs(resumed, NoisyLabel(params, 4, None), tiny_cohort, settings, lambda m, s: None, states[0])
    for a, b in zip(straight.state_dict().values(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)


def test_noisy_label_changes_the_noise_level_fraction_of_labels():
    labels = torch.randint(0, 4, (2, 16, 32, 32))
    generator = torch.Generator().manual_seed(1)
    for noise_level in (0.1, 0.5, 1.0):
        corrupted = corrupt_labels(labels, noise_level, 4, generator)
        assert (corrupted != labels).float().mean().item() == pytest.approx(noise_level, abs=0.01)
        assert corrupted.min() >= 0 and corrupted.max() <= 3


def test_noisy_label_leaves_retain_rows_untouched():
    labels = torch.randint(0, 4, (3, 8, 8, 8))
    batch = Batch(
        images=torch.zeros(3, 3, 8, 8, 8),
        labels=labels,
        forget=torch.tensor([False, True, False]),
        generator=torch.Generator().manual_seed(0),
    )
    targets = NoisyLabel({"noise_level": 1.0}, 4, None).forget_targets(batch)
    assert torch.equal(targets[0], labels[0]) and torch.equal(targets[2], labels[2])
    assert (targets[1] != labels[1]).all()


def test_max_loss_forget_term_is_bounded_by_the_ceiling():
    strategy = MaxLoss({"forget_weight": 1.0, "loss_ceiling": 2.0}, 4, None)
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    confident_wrong = torch.zeros(1, 4, 4, 4, 4)
    confident_wrong[:, 3] = 50.0  # cross-entropy about 50
    assert strategy.forget_term(confident_wrong, labels).item() == pytest.approx(2.0)
    right = torch.zeros(1, 4, 4, 4, 4)
    right[:, 0] = 5.0
    assert strategy.forget_term(right, labels).item() < 0.1


def test_a_non_finite_loss_ends_the_run_as_diverged(tiny_cohort):
    model = _model()
    original = set_metrics(model, tiny_cohort, torch.device("cpu"))

    class Exploding(NoisyLabel):
        def loss(self, model, batch):
            return super().loss(model, batch) * math.inf

    reports = []
    settings = LoopSettings(max_epochs=5, lr=1e-3, batch_size=2, original_metrics=original)
    final = run_epochs(
        model, Exploding({"noise_level": 0.5}, 4, None), tiny_cohort, settings, lambda m, s: reports.append(m)
    )
    assert len(reports) == 1 and reports[0]["diverged"] == 1.0
    assert math.isfinite(final["retain_dice"]) and math.isfinite(final["forget_dice"])


def test_a_trial_runs_on_the_device_its_request_names(tiny_cohort):
    from study.cluster import trial_device
    from study.config import load_config

    assert trial_device(load_config("smoke")) == "cpu"  # even on a GPU node, where Ray hides no GPU
    assert trial_device(load_config("smoke", overrides={"gpus_per_trial": 0.5})) == "cuda"
    if not torch.cuda.is_available():
        settings = LoopSettings(max_epochs=1, lr=1e-3, device="cuda")
        with pytest.raises(RuntimeError, match="asked for a GPU, but torch sees none"):
            run_epochs(
                _model(), NoisyLabel({"noise_level": 1.0}, 4, None), tiny_cohort, settings, lambda m, s: None
            )
