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


class SmallCNN(nn.Module):
    """Small CNN for 28x28 / 32x32 inputs, fast on CPU: three 3x3 conv blocks (width, 2w, 4w) with optional
    BatchNorm and 2x2 max pooling after the first two, global average pooling, linear classifier.

    Args:
        in_channels, num_classes: input planes and classes.
        width: channels of the first conv (default 8: a Fashion-MNIST epoch of double-backprop JaFR in about a minute on 2 cores).
        norm: ``"batch"`` (BatchNorm2d) or ``"none"``.
        activation: ``"relu"``, ``"silu"``, ``"tanh"`` or ``"first_order_relu"`` (no double backward).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 8, norm: str = "batch", activation: str = "relu"):
        super().__init__()
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {activation!r}")
        layers, c_in = [], in_channels
        for i, c_out in enumerate((width, 2 * width, 4 * width)):
            layers.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"))
            if norm == "batch":
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(_ACTIVATIONS[activation]())
            if i < 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c_in, num_classes)

    def forward(self, x):
        return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


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
