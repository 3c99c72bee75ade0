"""The loop's precision and memory format: what holds on a CPU, and bf16's numbers on a GPU."""

from __future__ import annotations

import copy

import pytest
import torch

from study.config import load_config
from study.errors import StudyError
from study.metrics import measure_reference
from study.model import MedicalNetSegmentation
from trainables.loop import LoopSettings, run_epochs
from trainables.noisy_label import NoisyLabel
from trainables.registry import check_config


def _trained(cohort, device: str) -> MedicalNetSegmentation:
    """The smoke preset's network, trained a few epochs on every training subject."""
    from test_loop import _Supervised

    torch.manual_seed(0)
    model = MedicalNetSegmentation(depth=10, n_classes=4, width=0.125)
    run_epochs(
        model, _Supervised(), cohort, LoopSettings(max_epochs=5, lr=3e-3, device=device), lambda m, s: None
    )
    return model


def _unlearned(original, cohort, device: str, **settings) -> tuple[dict[str, float], torch.nn.Module]:
    """Noisy Label for 2 epochs (the smoke preset's) from ``original``; the last report and the model."""
    model = copy.deepcopy(original)
    frozen = copy.deepcopy(original).eval().requires_grad_(False)
    reference = measure_reference(frozen, frozen, cohort, torch.device(device))
    loop = LoopSettings(max_epochs=2, lr=3e-4, reference=reference, device=device, seed=1, **settings)
    strategy = NoisyLabel(n_classes=4, original_model=frozen, seed=1)
    return run_epochs(model, strategy, cohort, loop, lambda m, s: None), model


def test_channels_last_trains_to_the_same_figures(tiny_cohort):
    original = _trained(tiny_cohort, "cpu")
    plain, model = _unlearned(original, tiny_cohort, "cpu")
    last, model_last = _unlearned(original, tiny_cohort, "cpu", channels_last=True)
    layout = torch.channels_last_3d
    assert model_last.conv1.weight.is_contiguous(memory_format=layout)
    assert not model.conv1.weight.is_contiguous(memory_format=layout)
    for key in ("forget_dice", "retain_dice", "holdout_dice"):
        assert last[key] == pytest.approx(plain[key], abs=2e-3), key
    assert (
        plain["forget_dice"]
        < 0.9
        * measure_reference(original, original, tiny_cohort, torch.device("cpu")).original["forget_dice"]
    )


def test_bf16_is_refused_on_a_cpu_in_the_loop_and_in_the_config(tiny_cohort):
    with pytest.raises(ValueError, match="bf16 runs on a GPU only"):
        _unlearned(_trained(tiny_cohort, "cpu"), tiny_cohort, "cpu", precision="bf16")
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, got 'fp16'"):
        LoopSettings(max_epochs=1, lr=1e-3, precision="fp16")
    config = load_config("smoke", overrides={"run_dir": "unused", "precision": "bf16"})
    with pytest.raises(StudyError, match="precision bf16 needs gpus_per_trial > 0"):
        check_config(config)
    config.gpus_per_trial = 1
    check_config(config)  # on a GPU it is allowed


@pytest.mark.skipif(not torch.cuda.is_available(), reason="bf16 autocast runs on a GPU only")
def test_bf16_lands_within_001_dice_of_fp32_on_the_smoke_preset(tiny_cohort):
    original = _trained(tiny_cohort, "cuda")
    fp32, _ = _unlearned(original, tiny_cohort, "cuda")
    bf16, _ = _unlearned(original, tiny_cohort, "cuda", precision="bf16")
    for key in ("forget_dice", "retain_dice", "holdout_dice"):
        assert bf16[key] == pytest.approx(fp32[key], abs=0.01), key
