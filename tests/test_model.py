"""The Med3D network: shapes per depth, MedicalNet's key layout, MedicalNet checkpoint loading."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from study.config import StudyError
from study.model import (
    MedicalNetSegmentation,
    load_medicalnet_weights,
)


@pytest.mark.parametrize("depth", [10, 18, 34, 50])
def test_logits_have_the_input_size_for_every_depth(depth: int):
    model = MedicalNetSegmentation(depth=depth, n_classes=4, width=0.125).eval()
    images = torch.randn(2, 3, 16, 32, 24)
    with torch.no_grad():
        features = model.encode(images)
        logits = model(images)
    assert logits.shape == (2, 4, 16, 32, 24)
    assert features.shape[2:] == (2, 4, 3)  # output stride 8
    expansion = 4 if depth == 50 else 1
    assert features.shape[1] == 64 * expansion  # 512 * width * expansion


def test_medicalnet_key_layout_is_kept():
    keys = set(MedicalNetSegmentation(depth=10).state_dict())
    assert {
        "conv1.weight",
        "bn1.running_mean",
        "layer2.0.downsample.0.weight",
        "layer4.0.conv2.weight",
    } <= keys
    assert {"conv_seg.0.weight", "conv_seg.3.weight", "conv_seg.6.weight"} <= keys
    bottleneck = set(MedicalNetSegmentation(depth=50, width=0.125).state_dict())
    assert "layer1.2.conv3.weight" in bottleneck and "layer1.0.downsample.1.weight" in bottleneck


def _write_medicalnet_checkpoint(path: Path, depth: int) -> MedicalNetSegmentation:
    """A checkpoint in MedicalNet's format: 1-channel conv1, ``module.`` keys, no conv_seg."""
    source = MedicalNetSegmentation(depth=depth, n_classes=2, in_channels=1, width=0.125)
    with torch.no_grad():
        for param in source.parameters():
            param.normal_()
    state = {f"module.{k}": v for k, v in source.state_dict().items() if not k.startswith("conv_seg.")}
    torch.save({"epoch": 200, "state_dict": state}, path)
    return source


def test_medicalnet_checkpoint_loads_with_channel_expansion(tmp_path: Path):
    source = _write_medicalnet_checkpoint(tmp_path / "resnet_10.pth", depth=10)
    model = MedicalNetSegmentation(depth=10, n_classes=4, in_channels=3, width=0.125)
    report = load_medicalnet_weights(model, tmp_path / "resnet_10.pth")

    expected_conv1 = source.conv1.weight.repeat(1, 3, 1, 1, 1) / 3
    torch.testing.assert_close(model.conv1.weight, expected_conv1)
    torch.testing.assert_close(model.layer3[0].conv2.weight, source.layer3[0].conv2.weight)
    torch.testing.assert_close(model.bn1.running_var, source.bn1.running_var)
    assert report["unexpected"] == []
    assert report["missing"] and all(k.startswith("conv_seg.") for k in report["missing"])
    # A constant image gives conv1 the same response as the 1-channel original.
    constant = torch.ones(1, 1, 8, 8, 8)
    torch.testing.assert_close(
        model.conv1(constant.repeat(1, 3, 1, 1, 1)), source.conv1(constant), rtol=1e-4, atol=1e-4
    )


def test_checkpoint_of_another_depth_is_refused(tmp_path: Path):
    _write_medicalnet_checkpoint(tmp_path / "resnet_18.pth", depth=18)
    model = MedicalNetSegmentation(depth=10, width=0.125)
    with pytest.raises(StudyError, match=r"ResNet-18 checkpoint.*model_depth"):
        load_medicalnet_weights(model, tmp_path / "resnet_18.pth")


class NotWeights:
    pass


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"this is not a torch file", "cannot be loaded safely"),
        ([1, 2, 3], "no state dict"),
        (NotWeights(), "cannot be loaded safely"),  # weights_only refuses arbitrary pickles
    ],
)
def test_bad_weights_files_are_refused(tmp_path: Path, content, message):
    path = tmp_path / "weights.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(StudyError, match=message):
        load_medicalnet_weights(MedicalNetSegmentation(depth=10, width=0.125), path)


def test_missing_weights_file_is_refused(tmp_path: Path):
    with pytest.raises(StudyError, match="does not exist"):
        load_medicalnet_weights(MedicalNetSegmentation(depth=10, width=0.125), tmp_path / "nope.pth")


def test_initialise_redraws_a_trained_network_as_a_fresh_one_of_the_same_seed():
    torch.manual_seed(5)
    fresh = MedicalNetSegmentation(depth=10, width=0.125)
    trained = MedicalNetSegmentation(depth=10, width=0.125)
    with torch.no_grad():
        for param in trained.parameters():
            param.add_(1.0)
        trained.train()(torch.randn(2, 3, 16, 32, 32))  # running statistics move too
    torch.manual_seed(5)
    trained.initialise()
    for name, value in fresh.state_dict().items():  # parameters and BatchNorm statistics
        assert torch.equal(trained.state_dict()[name], value), name
    weight = fresh.layer4[0].conv2.weight  # MedicalNet's recipe: Kaiming normal, fan-out
    assert weight.std().item() == pytest.approx((2 / (weight.shape[0] * 27)) ** 0.5, rel=0.05)
