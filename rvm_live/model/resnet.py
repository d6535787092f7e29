"""ResNet-50 encoder as RVM configures it (last stage dilated, output stride 16, no input normalisation).

Module names follow torchvision's ``resnet50`` so the official RVM state dict loads strictly.
"""

from __future__ import annotations

from torch import Tensor, nn


class Bottleneck(nn.Module):
    """1x1 reduce → 3x3 (strided or dilated) → 1x1 expand (x4), plus the identity or a projection."""

    expansion = 4

    def __init__(self, cin: int, width: int, *, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None) -> None:
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, dilation, dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return self.relu(y + identity)


def make_stage(cin: int, width: int, blocks: int, *, stride: int, dilate: bool,
               dilation: int) -> tuple[nn.Sequential, int]:
    """A ResNet stage; with ``dilate`` the stride becomes dilation (torchvision's replace_stride_with_dilation).

    Returns the stage and the dilation in force after it."""
    first_dilation = dilation
    if dilate:
        dilation *= stride
        stride = 1
    cout = width * Bottleneck.expansion
    downsample = None
    if stride != 1 or cin != cout:
        downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    layers = [Bottleneck(cin, width, stride=stride, dilation=first_dilation, downsample=downsample)]
    layers += [Bottleneck(cout, width, dilation=dilation) for _ in range(1, blocks)]
    return nn.Sequential(*layers), dilation


class ResNet50Encoder(nn.Module):
    """Returns features at strides 2, 4, 8 and 16 with 64, 256, 512 and 2048 channels."""

    channels = (64, 256, 512, 2048)

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        dilation = 1
        self.layer1, dilation = make_stage(64, 64, 3, stride=1, dilate=False, dilation=dilation)
        self.layer2, dilation = make_stage(256, 128, 4, stride=2, dilate=False, dilation=dilation)
        self.layer3, dilation = make_stage(512, 256, 6, stride=2, dilate=False, dilation=dilation)
        self.layer4, dilation = make_stage(1024, 512, 3, stride=2, dilate=True, dilation=dilation)

    def forward(self, x: Tensor) -> list[Tensor]:
        f1 = self.relu(self.bn1(self.conv1(x)))
        f2 = self.layer1(self.maxpool(f1))
        f3 = self.layer2(f2)
        f4 = self.layer4(self.layer3(f3))
        return [f1, f2, f3, f4]
