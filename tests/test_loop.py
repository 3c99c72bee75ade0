"""The epoch loop without Ray, and the two first strategies' definitions, on real tensors."""

from __future__ import annotations

import copy
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_pre_hook

from study.config import EpochSchedule, load_config
from study.metrics import METRICS, Scoring, measure_reference, set_metrics
from trainables.loop import run_epochs
from trainables.max_loss import MaxLoss
from trainables.noisy_label import NoisyLabel, corrupt_labels
from trainables.settings import BN_MODES, Compute, LoopSettings
from trainables.strategy import Batch, Supervised

#: The baselines' objective: true labels on every subject of the tiny cohort (3 an epoch).
SUPERVISED = Supervised(n_classes=4)


def _running_statistics(model: nn.Module) -> dict[str, torch.Tensor]:
    """Copies of every BatchNorm layer's ``running_mean`` and ``running_var``, ``(channels,)`` each."""
    return {
        name: buffer.clone()
        for name, buffer in model.named_buffers()
        if name.endswith(("running_mean", "running_var"))
    }


def test_loop_reports_every_epoch_and_checkpoints_every_second_and_the_last(tiny_cohort, tiny_model):
    model = tiny_model()
    reference = measure_reference({"original": model, "retrain": model}, tiny_cohort, torch.device("cpu"))[0]
    original = reference.original
    reports = []
    settings = LoopSettings(EpochSchedule(3, checkpoint_every=2), lr=1e-3, batch_size=2, warmup_epochs=1)
    strategy = NoisyLabel(n_classes=4, original_model=copy.deepcopy(model).eval(), noise_level=0.5)
    final = run_epochs(
        model,
        strategy,
        tiny_cohort,
        settings,
        lambda m, s: reports.append((m, s)),
        scoring=Scoring(reference),
    )

    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert [s is not None for _, s in reports] == [False, True, True]  # every 2nd epoch and the last
    assert reports[-1][1].epoch == 3 and reports[-1][1].optimizer["state"]  # Adam's moments, saved
    for key in ("retain_dice", "forget_dice", "holdout_dice"):
        assert 0.0 <= final[key] <= 1.0
    assert final["retain_kept"] == pytest.approx(final["retain_dice"] / original["retain_dice"])
    assert final["forget_gap_to_retrain"] == pytest.approx(
        abs(final["forget_dice"] - original["forget_dice"])
    )
    assert set(METRICS) <= set(final) and 0.0 <= final["mia_forget"] <= 1.0 and 0.0 <= final["mia_auc"] <= 1.0
    assert reports[-1][0]["diverged"] == 0.0


# The loop in a process of its own where ``import ray`` raises: the tiny cohort, 3 epochs.
_WITHOUT_RAY = """
import json, sys
sys.modules["ray"] = None  # before any project import: every "import ray" now fails
from study.cohort import find_subjects, load_cohort, resolve_split
from study.config import EpochSchedule
from study.model import MedicalNetSegmentation
from trainables.loop import run_epochs
from trainables.settings import LoopSettings
from trainables.strategy import Supervised
import torch

root = sys.argv[1]
split = resolve_split(find_subjects(root), ["070"], ["1", "4"], ["101"], "test")
cohort = load_cohort(root, split, (8, 32, 32), "4class")
torch.manual_seed(0)
model = MedicalNetSegmentation(depth=10, n_classes=4, width=0.125)
reports = []
settings = LoopSettings(EpochSchedule(3, checkpoint_every=2), lr=1e-3, batch_size=2)
run_epochs(model, Supervised(n_classes=4), cohort, settings, lambda m, s: reports.append([m, s is not None]))
loaded = sorted(m for m, module in sys.modules.items() if m.split(".")[0] == "ray" and module is not None)
print(json.dumps({"reports": reports, "ray_modules": loaded}))
"""


def test_the_loop_trains_in_a_process_where_ray_cannot_be_imported(cohort_root: Path):
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_RAY, str(cohort_root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["ray_modules"] == []
    reports = result["reports"]
    assert [m["epoch"] for m, _ in reports] == [1, 2, 3]
    assert [saved for _, saved in reports] == [False, True, True]
    for metrics, _ in reports:
        assert metrics["diverged"] == 0.0
        for key in ("retain_dice", "forget_dice", "holdout_dice"):
            assert 0.0 <= metrics[key] <= 1.0
        assert metrics["retain_mae"] > 0.0 and math.isfinite(metrics["retain_mae"])


def test_frozen_batchnorm_keeps_every_running_statistic_and_train_mode_updates_each(tiny_cohort, tiny_model):
    original = tiny_model()
    before = _running_statistics(original)
    assert len(before) == 2 * sum(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in original.modules())
    assert len(before) >= 20  # a ResNet-10 encoder and its decoder
    trained = {}
    for bn_mode in BN_MODES:
        model = tiny_model()
        settings = LoopSettings(EpochSchedule(2), lr=1e-3, batch_size=2, bn_mode=bn_mode)
        run_epochs(model, SUPERVISED, tiny_cohort, settings, lambda m, s: None)
        # the weights did train, BatchNorm's affine ones included
        assert not torch.equal(model.state_dict()["bn1.weight"], original.state_dict()["bn1.weight"])
        trained[bn_mode] = _running_statistics(model)
    for name, value in before.items():
        assert torch.equal(trained["frozen"][name], value), f"{name} moved with bn_mode='frozen'"
    assert [n for n in before if torch.equal(trained["train"][n], before[n])] == []


def test_a_misspelt_bn_mode_or_optimizer_is_refused_naming_the_allowed_ones():
    with pytest.raises(ValueError, match=f"bn_mode must be one of {', '.join(BN_MODES)}, got 'frozn'"):
        LoopSettings(EpochSchedule(1), bn_mode="frozn")
    with pytest.raises(ValueError, match="optimizer must be one of adam, sgd, got 'adamw'"):
        LoopSettings(EpochSchedule(1), optimizer="adamw")
    for bn_mode in BN_MODES:  # and every allowed pair is accepted
        for optimizer in ("adam", "sgd"):
            LoopSettings(EpochSchedule(1), bn_mode=bn_mode, optimizer=optimizer)


def test_without_checkpoint_every_only_the_horizons_and_the_last_epoch_are_saved(tiny_cohort, tiny_model):
    # The paper preset's path: checkpoint_every = 0, checkpoints at the horizons and the end.
    settings = LoopSettings(EpochSchedule(5, checkpoint_every=0, horizons=(2, 4)), lr=1e-3, batch_size=3)
    reports = []
    run_epochs(tiny_model(), SUPERVISED, tiny_cohort, settings, lambda m, s: reports.append((m["epoch"], s)))
    assert [epoch for epoch, _ in reports] == [1, 2, 3, 4, 5]
    saved = [(epoch, checkpoint) for epoch, checkpoint in reports if checkpoint is not None]
    assert [epoch for epoch, _ in saved] == [2, 4, 5]
    assert [checkpoint.epoch for _, checkpoint in saved] == [2, 4, 5]
    assert [checkpoint.scheduler["last_epoch"] for _, checkpoint in saved] == [2, 4, 5]  # one step an epoch


def test_only_evaluated_epochs_are_reported_each_with_its_own_figures(tiny_cohort, tiny_model):
    # Every 2nd epoch evaluated, every 3rd and the horizon 5 saved: epochs 1 and 7 are neither.
    settings = LoopSettings(EpochSchedule(8, eval_every=2, checkpoint_every=3, horizons=(5,)), lr=1e-3)
    reports, evaluated = [], []
    model = tiny_model()

    def report(metrics, state):
        reports.append((metrics, state))
        evaluated.append(set_metrics(model, tiny_cohort, torch.device("cpu"))["retain_dice"])

    run_epochs(model, SUPERVISED, tiny_cohort, settings, report)
    assert [m["epoch"] for m, _ in reports] == [2, 3, 4, 5, 6, 8]
    assert [m["epoch"] for m, s in reports if s is not None] == [3, 5, 6, 8]
    # Each report's figures are its own epoch's model, not an earlier evaluation's.
    assert [m["retain_dice"] for m, _ in reports] == pytest.approx(evaluated, abs=1e-6)
    assert all(m["seconds_train"] > 0 and m["seconds_eval"] > 0 for m, _ in reports)
    config = load_config("smoke", overrides={"run_dir": "x", "max_epochs": 8, "horizons": [5, 8]})
    config.checkpoint_every, config.eval_every = 3, 2
    assert EpochSchedule.of(config).reported_epochs() == [2, 3, 4, 5, 6, 8]  # what the results table expects


def test_the_warm_up_ramps_the_learning_rate_linearly_per_step_then_holds_it(tiny_cohort, tiny_model):
    lrs = []  # the learning rate each optimiser step uses, read just before the step
    hook = register_optimizer_step_pre_hook(lambda optimizer, *_: lrs.append(optimizer.param_groups[0]["lr"]))
    try:
        # 3 subjects one at a time: 3 steps an epoch, 6 steps of warm-up over 2 epochs, then 3 more.
        settings = LoopSettings(EpochSchedule(3), lr=1e-3, batch_size=1, warmup_epochs=2)
        run_epochs(tiny_model(), SUPERVISED, tiny_cohort, settings, lambda m, s: None)
    finally:
        hook.remove()
    assert lrs == pytest.approx([1e-3 * step / 6 for step in range(1, 7)] + [1e-3] * 3, rel=1e-12)


def test_resuming_from_a_checkpoint_repeats_the_uninterrupted_run(tiny_cohort, tiny_model):
    settings = LoopSettings(EpochSchedule(2), lr=1e-3, batch_size=2)

    straight, states = tiny_model(), []
    run_epochs(
        straight,
        NoisyLabel(n_classes=4, noise_level=0.8),
        tiny_cohort,
        settings,
        lambda m, s: states.append(s),
    )

    resumed = tiny_model()
    noisy = NoisyLabel(n_classes=4, noise_level=0.8)
    run_epochs(resumed, noisy, tiny_cohort, settings, lambda m, s: None, resume=states[0])
    assert not torch.equal(resumed.conv1.weight, tiny_model().conv1.weight)  # it did train
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
    targets = NoisyLabel(n_classes=4, noise_level=1.0).forget_targets(batch)
    assert torch.equal(targets[0], labels[0]) and torch.equal(targets[2], labels[2])
    assert (targets[1] != labels[1]).all()


def test_max_loss_forget_term_is_bounded_by_the_ceiling():
    strategy = MaxLoss(n_classes=4, forget_weight=1.0, loss_ceiling=2.0)
    labels = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    confident_wrong = torch.zeros(1, 4, 4, 4, 4)
    confident_wrong[:, 3] = 50.0  # cross-entropy about 50
    assert strategy.forget_term(confident_wrong, labels).item() == pytest.approx(2.0)
    right = torch.zeros(1, 4, 4, 4, 4)
    right[:, 0] = 5.0
    assert strategy.forget_term(right, labels).item() < 0.1


def test_a_non_finite_loss_ends_the_run_as_diverged(tiny_cohort, tiny_model):
    model = tiny_model()
    reference = measure_reference({"original": model, "retrain": model}, tiny_cohort, torch.device("cpu"))[0]

    class Exploding(NoisyLabel):
        def loss(self, model, batch):
            return super().loss(model, batch) * math.inf

    reports = []
    settings = LoopSettings(EpochSchedule(5), lr=1e-3, batch_size=2)
    strategy = Exploding(n_classes=4, noise_level=0.5)
    report = reports.append
    final = run_epochs(
        model, strategy, tiny_cohort, settings, lambda m, s: report(m), scoring=Scoring(reference)
    )
    assert len(reports) == 1 and reports[0]["diverged"] == 1.0
    assert math.isfinite(final["retain_dice"]) and math.isfinite(final["forget_dice"])
    assert set(METRICS) <= set(final)  # scored against the reference, as a trial is


def test_a_trial_runs_on_the_device_its_request_names(tiny_cohort, tiny_model):
    assert Compute.of(load_config("smoke")).device == "cpu"  # even on a GPU node, where Ray hides no GPU
    assert Compute.of(load_config("smoke", overrides={"gpus_per_trial": 0.5})).device == "cuda"
    assert Compute.of(load_config("smoke", overrides={"cpus_per_trial": 3})).threads == 3
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="asked for a GPU, but torch sees none"):
            run_epochs(
                tiny_model(),
                NoisyLabel(n_classes=4, noise_level=1.0),
                tiny_cohort,
                LoopSettings(EpochSchedule(1)),
                lambda m, s: None,
                compute=Compute("cuda"),
            )


class _DecoderFrozen(Supervised):
    def frozen_modules(self, model: nn.Module) -> list[nn.Module]:
        return [model.conv_seg]


def _bn1_by_hand(model: nn.Module, cohort, subjects) -> tuple[torch.Tensor, torch.Tensor]:
    """bn1's statistics ``(C,)`` from ``subjects`` alone: per subject the per-channel mean and
    unbiased variance of conv1's output ``(1, C, D/2, H/2, W/2)``, averaged over the subjects."""
    with torch.no_grad():
        out = [model.conv1(torch.tensor(cohort.images[s])[None]) for s in subjects]
    return tuple(torch.stack([f(o, dim=(0, 2, 3, 4)) for o in out]).mean(0) for f in (torch.mean, torch.var))


def test_recalibrate_estimates_running_statistics_from_the_retain_subjects_only(tiny_cohort, tiny_model):
    original, model, states = tiny_model(), tiny_model(), []
    settings = LoopSettings(EpochSchedule(2), lr=1e-3, batch_size=2, bn_mode="recalibrate")
    run_epochs(model, _DecoderFrozen(n_classes=4), tiny_cohort, settings, lambda m, s: states.append(s))
    split = tiny_cohort.split
    assert [state.epoch for state in states] == [1, 2]
    for state in states:  # every saved model carries the retain subjects' statistics
        saved = tiny_model()
        saved.load_state_dict(state.model)
        mean, var = _bn1_by_hand(saved, tiny_cohort, split.retain)
        torch.testing.assert_close(saved.bn1.running_mean, mean)
        torch.testing.assert_close(saved.bn1.running_var, var)
        for name, value in state.model.items():  # one pass per retain subject (training made 4)
            if name.endswith("num_batches_tracked") and not name.startswith("conv_seg."):
                assert value.item() == len(split.retain), name
    torch.testing.assert_close(model.bn1.running_var, var)  # the live model is the last one saved
    forget_mean, forget_var = _bn1_by_hand(model, tiny_cohort, split.forget)
    # measured 0.019 and 0.092, against a recalibration error below 1e-7 (bn_mode 'train': 0.07, 0.46)
    assert (forget_mean - mean).abs().max() > 1e-3 and (forget_var - var).abs().max() > 1e-2
    # The frozen decoder keeps the original's statistics; every layer keeps its momentum.
    before = _running_statistics(original)
    assert all(torch.equal(v, before[k]) for k, v in _running_statistics(model).items() if "conv_seg" in k)
    assert {m.momentum for m in model.modules() if isinstance(m, nn.BatchNorm3d)} == {0.1}
