"""Med3D (Tencent MedicalNet) 3D ResNet for segmentation (weights: ``study/model/weights.py``).

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

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from study.config import StudyError

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
        with torch.random.fork_rng(devices=[]):  # the layers' own draws are discarded: initialise() redraws
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
        self.initialise()

    def initialise(self) -> None:
        """(Re)initialises every layer as a freshly built network is: the one owner of the init.

        First PyTorch's default initialisation of each layer in module order (what building it
        draws; the decoder's transposed convolution keeps it), then MedicalNet's: convolutions
        Kaiming normal (fan-out); BatchNorm weight 1, bias 0 and fresh running statistics
        (mean 0, variance 1). Draws from torch's global generator: after ``torch.manual_seed(s)``
        a re-initialised network equals one built after ``torch.manual_seed(s)``.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv3d | nn.ConvTranspose3d | nn.BatchNorm3d):
                module.reset_parameters()  # BatchNorm: its running statistics too
        for module in self.modules():
            if isinstance(module, nn.Conv3d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")

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


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module, batches: Iterable[torch.Tensor], keep: Iterable[nn.Module] = ()
) -> None:
    """Re-estimates every BatchNorm layer's running statistics from ``batches`` alone.

    One forward pass per batch ``(B, in_channels, D, H, W)`` (one subject per batch for
    per-subject statistics), the recalibrated layers in train mode and every other module in
    eval mode; each layer's running mean and unbiased variance ``(C,)`` become the plain
    average over the passes of the batch's per-channel statistics (a cumulative average,
    ``momentum=None``). BatchNorm layers inside a ``keep`` module keep their statistics.
    Every layer's momentum and every module's train/eval mode are restored.
    """
    kept = {id(m) for module in keep for m in module.modules()}
    layers = [
        m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and id(m) not in kept
    ]
    modes = {m: m.training for m in model.modules()}
    momenta = {m: m.momentum for m in layers}
    model.eval()
    for layer in layers:
        layer.reset_running_stats()
        layer.momentum = None
        layer.train()
    try:
        for batch in batches:
            model(batch)
    finally:
        for layer, momentum in momenta.items():
            layer.momentum = momentum
        for module, training in modes.items():
            module.train(training)
