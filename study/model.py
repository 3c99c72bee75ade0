"""Med3D (Tencent MedicalNet) 3D ResNet for segmentation, and MedicalNet weight loading.

Layer for layer the network of MedicalNet's ``models/resnet.py``, so that its published
checkpoints load unchanged:

    conv1 7^3/2 -> bn1 -> relu -> maxpool 3^3/2 -> layer1 (64) -> layer2 (128, /2)
    -> layer3 (256, dilation 2) -> layer4 (512, dilation 4) -> conv_seg

Output stride 8 after the encoder, 4 after ``conv_seg``'s transposed convolution; the logits
are then upsampled (trilinear) to the input size. ``width`` scales the encoder's channel
counts (64, 128, 256, 512) to make small models for CPUs; MedicalNet's checkpoints are
width 1.0.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from study.errors import StudyError

#: depth -> (block type, blocks per layer, shortcut type), as MedicalNet's pretrained models.
ARCHITECTURES: dict[int, tuple[str, tuple[int, int, int, int], str]] = {
    10: ("basic", (1, 1, 1, 1), "B"),
    18: ("basic", (2, 2, 2, 2), "A"),
    34: ("basic", (3, 4, 6, 3), "A"),
    50: ("bottleneck", (3, 4, 6, 3), "B"),
}


def conv3x3x3(in_planes: int, out_planes: int, stride: int = 1, dilation: int = 1) -> nn.Conv3d:
    """3x3x3 convolution whose padding keeps the size at stride 1, for any dilation."""
    return nn.Conv3d(
        in_planes,
        out_planes,
        kernel_size=3,
        stride=stride,
        padding=dilation,
        dilation=dilation,
        bias=False,
    )


class ZeroPadShortcut(nn.Module):
    """MedicalNet's shortcut type A: subsample, then pad the missing channels with zeros.

    Unlike MedicalNet's ``downsample_basic_block`` (which concatenates ``out.data``), the
    gradient flows through the kept channels; the layer has no parameters either way.
    """

    def __init__(self, planes: int, stride: int) -> None:
        super().__init__()
        self.planes = planes
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x[:, :, :: self.stride, :: self.stride, :: self.stride]
        return F.pad(out, (0, 0, 0, 0, 0, 0, 0, self.planes - out.shape[1]))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3x3(inplanes, planes, stride=stride, dilation=dilation)
        self.bn1 = nn.BatchNorm3d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3x3(planes, planes, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + residual)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int = 1,
        dilation: int = 1,
        downsample: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = conv3x3x3(planes, planes, stride=stride, dilation=dilation)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = nn.Conv3d(planes, planes * 4, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class MedicalNetSegmentation(nn.Module):
    """Med3D ResNet encoder + ``conv_seg`` decoder.

    ``forward`` maps images ``(B, in_channels, D, H, W)`` to logits ``(B, n_classes, D, H, W)``.
    """

    def __init__(
        self,
        depth: int = 10,
        n_classes: int = 4,
        in_channels: int = 3,
        width: float = 1.0,
    ) -> None:
        super().__init__()
        if depth not in ARCHITECTURES:
            raise StudyError(f"model depth {depth} is not one of {sorted(ARCHITECTURES)}")
        if width <= 0:
            raise StudyError(f"model width must be positive, got {width}")
        block_name, blocks, shortcut = ARCHITECTURES[depth]
        block = BasicBlock if block_name == "basic" else Bottleneck
        self.depth = depth
        self.shortcut_type = shortcut
        planes = [max(1, round(c * width)) for c in (64, 128, 256, 512)]

        self.inplanes = planes[0]
        self.conv1 = nn.Conv3d(in_channels, planes[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(planes[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, planes[0], blocks[0])
        self.layer2 = self._make_layer(block, planes[1], blocks[1], stride=2)
        self.layer3 = self._make_layer(block, planes[2], blocks[2], dilation=2)
        self.layer4 = self._make_layer(block, planes[3], blocks[3], dilation=4)
        self.conv_seg = nn.Sequential(
            nn.ConvTranspose3d(planes[3] * block.expansion, 32, kernel_size=2, stride=2),
            nn.BatchNorm3d(32),
            nn.ReLU(inplace=True),
            nn.Conv3d(32, 32, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm3d(32),
            nn.ReLU(inplace=True),
            nn.Conv3d(32, n_classes, kernel_size=1, bias=False),
        )
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
            elif isinstance(module, nn.BatchNorm3d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int = 1, dilation: int = 1
    ) -> nn.Sequential:
        downsample: nn.Module | None = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            if self.shortcut_type == "A":
                downsample = ZeroPadShortcut(planes * block.expansion, stride)
            else:
                downsample = nn.Sequential(
                    nn.Conv3d(
                        self.inplanes,
                        planes * block.expansion,
                        kernel_size=1,
                        stride=stride,
                        bias=False,
                    ),
                    nn.BatchNorm3d(planes * block.expansion),
                )
        layers = [block(self.inplanes, planes, stride=stride, dilation=dilation, downsample=downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Encoder features ``(B, C, D/8, H/8, W/8)`` of images ``(B, in_channels, D, H, W)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def decode(self, features: torch.Tensor, size: tuple[int, int, int]) -> torch.Tensor:
        """Logits ``(B, n_classes, *size)`` from encoder features."""
        logits = self.conv_seg(features)
        return F.interpolate(logits, size=size, mode="trilinear", align_corners=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), tuple(x.shape[2:]))


def encoder_parameters(model: MedicalNetSegmentation) -> list[nn.Parameter]:
    """Parameters of conv1..layer4: what the strategies call the encoder."""
    return [p for name, p in model.named_parameters() if not name.startswith("conv_seg.")]


def decoder_parameters(model: MedicalNetSegmentation) -> list[nn.Parameter]:
    """Parameters of ``conv_seg``: what the strategies call the decoder."""
    return list(model.conv_seg.parameters())


def _checkpoint_depth(keys: set[str]) -> int | None:
    """The MedicalNet depth whose encoder has exactly these block keys, if any."""
    bottleneck = any(re.match(r"layer\d\.\d+\.conv3\.", k) for k in keys)
    blocks = []
    for layer in range(1, 5):
        indices = {int(m.group(1)) for k in keys if (m := re.match(rf"layer{layer}\.(\d+)\.", k))}
        blocks.append(len(indices))
    for depth, (block_name, layout, _) in ARCHITECTURES.items():
        if tuple(blocks) == layout and bottleneck == (block_name == "bottleneck"):
            return depth
    return None


def load_medicalnet_weights(model: MedicalNetSegmentation, path: Path) -> dict[str, Any]:
    """Loads a MedicalNet checkpoint into ``model``; returns missing/unexpected keys and a note
    on the segmentation head.

    Accepts MedicalNet's format (``{"state_dict": {"module.conv1.weight": ...}}``) or a bare
    state dict. A 1-channel ``conv1`` kernel is repeated over the input channels and divided
    by their number, so the response to a constant image is unchanged. MedicalNet ships
    encoders, so ``conv_seg`` is usually absent and trained afresh; a head that fits
    ``model`` (same classes) is loaded, one that does not (a checkpoint fine-tuned for
    another number of classes) is left out and trained afresh. Any encoder key that is
    missing, unexpected or of another shape is an error: another depth or width.
    """
    path = Path(path)
    if not path.is_file():
        raise StudyError(f"weights file {path} does not exist; pass --weights with a MedicalNet .pth")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or unsafe pickles
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise StudyError(
            f"weights file {path} cannot be loaded safely (weights_only=True): {first_line}"
        ) from exc
    state = checkpoint.get("state_dict", checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise StudyError(
            f"weights file {path} holds no state dict of tensors; expected MedicalNet's "
            "{'state_dict': {...}} or a bare state dict"
        )
    state = {k.removeprefix("module."): v for k, v in state.items()}

    conv1 = state.get("conv1.weight")
    expected_in = model.conv1.weight.shape[1]
    if conv1 is not None and conv1.shape[1] == 1 and expected_in != 1:
        state["conv1.weight"] = conv1.repeat(1, expected_in, 1, 1, 1) / expected_in

    own = model.state_dict()
    own_encoder = {k for k in own if not k.startswith("conv_seg.")}
    given_encoder = {k for k in state if not k.startswith("conv_seg.")}
    missing = sorted(own_encoder - given_encoder)
    unexpected = sorted(given_encoder - own_encoder)
    mismatched = sorted(k for k in own_encoder & given_encoder if own[k].shape != state[k].shape)
    if missing or unexpected or mismatched:
        found = _checkpoint_depth(given_encoder)
        found_text = f"a ResNet-{found} checkpoint" if found else "not a MedicalNet ResNet"
        detail = (missing or unexpected or mismatched)[0]
        raise StudyError(
            f"weights file {path} does not fit a ResNet-{model.depth} model ({found_text}; "
            f"{len(missing)} missing, {len(unexpected)} unexpected, {len(mismatched)} "
            f"mismatched keys, e.g. {detail!r}); set model_depth to the checkpoint's depth "
            "and model_width to 1.0"
        )
    head = {k: v for k, v in state.items() if k.startswith("conv_seg.")}
    own_head = {k: v for k, v in own.items() if k.startswith("conv_seg.")}
    if not head:
        head_note = "segmentation head trained afresh (the checkpoint has none)"
    elif head.keys() == own_head.keys() and all(head[k].shape == own_head[k].shape for k in head):
        head_note = "segmentation head loaded from the checkpoint"
    else:
        classes = head.get("conv_seg.6.weight", next(iter(head.values()))).shape[0]
        head_note = (
            f"segmentation head trained afresh (the checkpoint's head has {classes} outputs, "
            f"this study needs {own['conv_seg.6.weight'].shape[0]})"
        )
        state = {k: v for k, v in state.items() if not k.startswith("conv_seg.")}
    model.load_state_dict(state, strict=False)
    return {
        "missing": sorted(set(own) - set(state)),
        "unexpected": sorted(set(state) - set(own)),
        "head": head_note,
    }


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes (identifies weights in cache keys)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
