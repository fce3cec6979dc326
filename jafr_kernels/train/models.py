"""Models: the authors' PreAct ResNet-18 and a small CNN for fast CPU runs. Inputs are images in [0, 1]
(no normalisation layer); any ``nn.Module`` mapping (B, C, H, W) to (B, classes) logits works with the
training objective.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable


class PreActBlock(nn.Module):
    """Pre-activation basic block, GradAlign/JaFR variant: the shortcut acts on the raw block input."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.shortcut = None
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)

    def forward(self, x):
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


class PreActResNet18(nn.Module):
    """PreAct ResNet-18 (widths 64-128-256-512, [2, 2, 2, 2] blocks, 3x3 stem of stride 1, bias-free convs,
    shortcut on the raw block input, He-normal init with fan-out for convs, N(0, sqrt(2/fan_in)) linear).

    ``head="preact"`` (the default, ``build_model("preact_resnet18")``): the standard pre-activation head,
    BN-ReLU before global average pooling (He et al. 2016). It starts near CE = log(classes) and trains under
    every schedule the CLI offers, short warmups included.

    ``head="authors"`` (``build_model("preact_resnet18_authors")``): the JaFR/GradAlign code's head, with no
    BN-ReLU before pooling, layer for layer the authors' model. It starts with large, sample-independent
    logits (CE 3.5-4.5 on 10 classes) and needs the paper's long warmup (30 epochs, LR peak at epoch 12,
    about 4,700 steps on CIFAR-10): with a warmup of a few hundred steps it diverges, with or without JaFR.

    Input (B, in_channels, H, W) in [0, 1]; output (B, num_classes) logits.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, head: str = "preact"):
        super().__init__()
        if head not in ("preact", "authors"):
            raise ValueError(f"head must be 'preact' or 'authors', got {head!r}")
        self.head = head
        self.conv1 = nn.Conv2d(in_channels, 64, 3, stride=1, padding=1, bias=False)
        layers, in_planes = [], 64
        for planes, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [PreActBlock(in_planes, planes, stride), PreActBlock(planes, planes, 1)]
            in_planes = planes
        self.layers = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(512) if head == "preact" else None
        self.linear = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / n))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, math.sqrt(2.0 / m.in_features))
                nn.init.zeros_(m.bias)

    def forward(self, x):
        out = self.layers(self.conv1(x))
        if self.bn is not None:
            out = F.relu(self.bn(out))
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


class _FirstOrderReLU(torch.autograd.Function):
    """ReLU whose backward is not differentiable (``once_differentiable``): double backprop through it raises."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0).to(grad.dtype)


class FirstOrderReLU(nn.Module):
    """An activation with no double backward, standing in for custom fused ops; use jacobian_mode='finite_difference'."""

    def forward(self, x):
        return _FirstOrderReLU.apply(x)


_ACTIVATIONS = {"relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh, "first_order_relu": FirstOrderReLU}


class _ImageConv(torch.autograd.Function):
    """A stride-1 convolution whose input gradient is the convolution of the output gradient with the flipped,
    transposed kernel. On the CPU, oneDNN's backward-data kernel for a convolution with one or a few input
    channels is 4-5x slower than that forward convolution (measured: 8.2 ms against 1.7 ms for (128, 8, 28, 28)
    -> (128, 1, 28, 28)), and every input gradient (JaFR's J, FGSM and PGD) pays it. Differentiable twice."""

    @staticmethod
    def forward(x, weight, bias, padding):
        return F.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.padding, ctx.has_bias = padding, bias is not None

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        p = ctx.padding
        grad = grad.to(weight.dtype)  # under autocast the forward ran in bf16 on the fp32 x and weight
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            back = (weight.shape[-2] - 1 - p[0], weight.shape[-1] - 1 - p[1])
            gx = F.conv2d(grad, weight.flip(-2, -1).transpose(0, 1), padding=back)
        if ctx.needs_input_grad[1]:
            gw = torch.ops.aten.convolution_backward(grad, x, weight, None, [1, 1], list(p), [1, 1], False, [0, 0], 1,
                                                     [False, True, False])[1]
        if ctx.has_bias and ctx.needs_input_grad[2]:
            gb = grad.sum((0, 2, 3))
        return gx, gw, gb, None


class ImageConv2d(nn.Conv2d):
    """``nn.Conv2d`` (stride 1, no dilation or groups, padding at most kernel - 1) for the first layer, the one
    that sees the image: on the CPU its input gradient takes :class:`_ImageConv`'s faster route; elsewhere it
    is ``nn.Conv2d``. Same parameters and state dict as ``nn.Conv2d``."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if (self.stride != (1, 1) or self.dilation != (1, 1) or self.groups != 1 or self.padding_mode != "zeros"
                or isinstance(self.padding, str)
                or any(p > k - 1 for p, k in zip(self.padding, self.kernel_size))):
            raise ValueError("ImageConv2d takes stride 1, dilation 1, groups 1, zero padding of at most kernel - 1")

    def forward(self, x):
        if x.device.type != "cpu":
            return super().forward(x)
        return _ImageConv.apply(x, self.weight, self.bias, self.padding)


class SmallCNN(nn.Module):
    """Small CNN for 28x28 / 32x32 inputs, fast on CPU: three 3x3 conv blocks (width, 2w, 4w) with optional
    BatchNorm and 2x2 max pooling after the first two, then a linear classifier.

    Args:
        in_channels, num_classes: input planes and classes.
        width: channels of the first conv (default 8: a Fashion-MNIST epoch of finite-difference JaFR in about
            30 s of one CPU core).
        norm: ``"batch"`` (BatchNorm2d) or ``"none"``.
        activation: ``"relu"``, ``"silu"``, ``"tanh"`` or ``"first_order_relu"`` (no double backward).
        head: ``"flatten"`` (default): the last block's features average-pooled to a 7x7 grid (the identity on
            28x28 inputs) and flattened, so the classifier sees where a feature is; ``"avg"``: global average
            pooling. On Fashion-MNIST, width 8, 2 epochs: 90.4 % against 87.1 % test accuracy at the same cost
            (docs/study.md).
    """

    GRID = 7

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, norm: str = "batch",
                 activation: str = "relu", head: str = "flatten"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        if head not in ("flatten", "avg"):
            raise ValueError(f"head must be 'flatten' or 'avg', got {head!r}")
        layers, c_in = [], in_channels
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            conv = ImageConv2d if i == 0 else nn.Conv2d
            layers.append(conv(c_in, c_out, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(_ACTIVATIONS[activation]())
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.head = head
        self.classifier = nn.Linear(c_in * (self.GRID ** 2 if head == "flatten" else 1), num_classes)

    def forward(self, x):
        f = self.features(x)
        if self.head == "avg":
            return self.classifier(F.adaptive_avg_pool2d(f, 1).flatten(1))
        if f.shape[-2:] != (self.GRID, self.GRID):
            f = F.adaptive_avg_pool2d(f, self.GRID)
        return self.classifier(f.flatten(1))


MODELS = ("small_cnn", "small_cnn_nobn", "small_cnn_first_order", "preact_resnet18", "preact_resnet18_authors")


def build_model(name: str = "small_cnn", in_channels: int = 1, num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a model by name (float32, CPU, train mode).

    ``small_cnn`` (BatchNorm, ReLU), ``small_cnn_nobn`` (no normalisation: DDP tests), ``small_cnn_first_order``
    (an activation without double backward), ``preact_resnet18`` (the paper's architecture with the standard
    pre-activation head; see :class:`PreActResNet18`), ``preact_resnet18_authors`` (the authors' exact head:
    needs the paper's long warmup). ``kwargs`` go to the model class (e.g. ``width``, ``activation`` for the
    small CNN).
    """
    if name == "small_cnn":
        return SmallCNN(in_channels, num_classes, **kwargs)
    if name == "small_cnn_nobn":
        return SmallCNN(in_channels, num_classes, norm="none", **kwargs)
    if name == "small_cnn_first_order":
        return SmallCNN(in_channels, num_classes, activation="first_order_relu", **kwargs)
    if name == "preact_resnet18":
        return PreActResNet18(in_channels, num_classes, **kwargs)
    if name == "preact_resnet18_authors":
        return PreActResNet18(in_channels, num_classes, head="authors", **kwargs)
    raise ValueError(f"model must be one of {', '.join(MODELS)}; got {name!r}")
