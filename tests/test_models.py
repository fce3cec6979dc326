"""The models' own pieces: the first layer's input-gradient route and the small CNN's heads."""
import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck, gradgradcheck

from jafr_kernels.train import build_model
from jafr_kernels.train.models import ImageConv2d, SmallCNN

# (in, out, kernel, padding, H, W): one input channel as in Fashion-MNIST, odd and non-square planes
GEOMETRIES = [(1, 4, 3, 1, 7, 5), (3, 2, 3, 0, 6, 9), (2, 3, 5, 2, 8, 7), (1, 2, 3, 2, 5, 5)]


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_image_conv_equals_conv2d_and_its_derivatives(geometry, bias):
    c_in, c_out, k, p, h, w = geometry
    torch.manual_seed(0)
    conv = ImageConv2d(c_in, c_out, k, padding=p, bias=bias).double()
    x = torch.randn(2, c_in, h, w, dtype=torch.float64, requires_grad=True)
    out = conv(x)
    ref = F.conv2d(x, conv.weight, conv.bias, padding=p)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    g = torch.randn_like(ref)
    params = [x] + list(conv.parameters())
    for got, want in zip(torch.autograd.grad(out, params, g), torch.autograd.grad(ref, params, g)):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    f = lambda x, *ps: torch.func.functional_call(conv, dict(zip(("weight", "bias"), ps)), (x,))
    assert gradcheck(f, tuple(params))
    assert gradgradcheck(f, tuple(params))  # JaFR's double backward goes through the first layer


def test_image_conv_keeps_conv2d_state_and_refuses_what_it_cannot_invert():
    conv = ImageConv2d(1, 8, 3, padding=1, bias=False)
    plain = torch.nn.Conv2d(1, 8, 3, padding=1, bias=False)
    plain.load_state_dict(conv.state_dict())
    for bad in (dict(stride=2), dict(dilation=2), dict(padding=3), dict(padding="same")):
        with pytest.raises(ValueError, match="stride 1"):
            ImageConv2d(1, 8, 3, **bad)


@pytest.mark.parametrize("head", ["flatten", "avg"])
@pytest.mark.parametrize("size", [28, 32, 17])
def test_small_cnn_heads_take_any_image_size(head, size):
    model = build_model("small_cnn", 1, 10, head=head)
    assert model(torch.rand(3, 1, size, size)).shape == (3, 10)
    assert isinstance(model.features[0], ImageConv2d)


def test_small_cnn_flatten_head_keeps_the_grid():
    """The default head classifies the last block's 7x7 grid of features; ``"avg"`` their global mean."""
    assert SmallCNN(width=8).classifier.in_features == 32 * 7 * 7
    assert SmallCNN(width=8, head="avg").classifier.in_features == 32
    with pytest.raises(ValueError, match="head"):
        SmallCNN(head="max")
