"""The JaFR objective against the float64 reference: the Jacobian, the loss value, the double-backward
gradient, the finite-difference gradient, BatchNorm hygiene and GradAlign."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from jafr_kernels import reference
from jafr_kernels.train import build_model, frozen_bn_stats, gradalign_objective, jafr_objective


def _batch(b=12, c=1, hw=12, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, c, hw, hw, generator=g, dtype=dtype), torch.randint(0, 10, (b,), generator=g)


def _smooth_model(act=nn.SiLU, bn=False, c=1, hw=12):
    torch.manual_seed(0)
    layers = [nn.Conv2d(c, 6, 3, padding=1)] + ([nn.BatchNorm2d(6)] if bn else [])
    layers += [act(), nn.AvgPool2d(2), nn.Conv2d(6, 8, 3, padding=1), act(), nn.AvgPool2d(2), nn.Flatten(),
               nn.Linear(8 * (hw // 4) ** 2, 10)]
    return nn.Sequential(*layers).double()


def _param_grad(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def _exact_penalty_grad(model, x, y, lam, cutoff=0.25, target="low"):
    """d/dtheta lam * P(J) by explicit double backprop through the float64 reference penalty."""
    xr = x.clone().requires_grad_(True)
    ce = F.cross_entropy(model(xr), y)
    (jac,) = torch.autograd.grad(ce, xr, create_graph=True)
    return _param_grad(model, lam * reference.freq_penalty(jac, reference.as_band(cutoff), target))


def _ce_grad(model, x, y):
    return _param_grad(model, F.cross_entropy(model(x), y))


@pytest.mark.parametrize("target", ["low", "high"])
def test_double_backward_value_jacobian_and_gradient(target):
    model, (x, y) = _smooth_model(bn=True), _batch()
    lam = 0.7
    out = jafr_objective(model, x, y, lam, target=target, cutoff=0.3)
    # J is the input gradient of the batch-mean CE with the true labels
    xr = x.clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    torch.testing.assert_close(out.jac, jac, rtol=1e-12, atol=0)
    pen = reference.freq_penalty(jac, reference.as_band(0.3), target)
    torch.testing.assert_close(out.penalty, pen, rtol=1e-10, atol=0)
    torch.testing.assert_close(out.loss.detach(), out.ce + lam * pen, rtol=1e-12, atol=0)
    lf = reference.low_freq_ratio(jac, reference.as_band(0.3)).mean()
    torch.testing.assert_close(out.lf_ratio, lf, rtol=1e-10, atol=1e-12)
    got = _param_grad(model, out.loss)
    expected = _ce_grad(model, x, y) + _exact_penalty_grad(model, x, y, lam, 0.3, target)
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("act,bn", [(nn.SiLU, False), (nn.Tanh, False), (nn.SiLU, True)])
def test_finite_difference_matches_double_backward_on_smooth_models(act, bn):
    """On a smooth float64 model the FD penalty gradient converges to the exact one (cosine >= 0.999)."""
    model, (x, y) = _smooth_model(act, bn), _batch()
    lam = 0.5
    exact = _exact_penalty_grad(model, x, y, lam)
    g_ce = _ce_grad(model, x, y)
    for h in (1e-3, 1e-4):
        out = jafr_objective(model, x, y, lam, jacobian_mode="finite_difference", fd_h=h)
        fd = _param_grad(model, out.loss) - g_ce
        cos = F.cosine_similarity(fd, exact, dim=0)
        assert cos >= 0.999, f"h={h}: cosine {cos:.6f}"
        assert 0.99 < fd.norm() / exact.norm() < 1.01
    # the value is CE + lam * P, as in double-backward mode
    ref = jafr_objective(model, x, y, lam)
    torch.testing.assert_close(out.loss.detach(), ref.loss.detach(), rtol=1e-12, atol=0)


def test_finite_difference_with_adversarial_main_term():
    model, (x, y) = _smooth_model(), _batch()
    x_main = (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    out = jafr_objective(model, x, y, 0.5, jacobian_mode="finite_difference", fd_h=1e-4, x_main=x_main)
    fd = _param_grad(model, out.loss)
    exact = _param_grad(model, jafr_objective(model, x, y, 0.5, x_main=x_main).loss)
    assert F.cosine_similarity(fd, exact, dim=0) >= 0.9999
    torch.testing.assert_close(out.ce, F.cross_entropy(model(x_main), y))


def test_finite_difference_on_relu_model_points_the_same_way():
    """ReLU kinks make FD differ from the exact gradient; it still correlates (numbers are in the report)."""
    model, (x, y) = _smooth_model(nn.ReLU), _batch()
    exact = _exact_penalty_grad(model, x, y, 0.5)
    g_ce = _ce_grad(model, x, y)
    fd = _param_grad(model, jafr_objective(model, x, y, 0.5, jacobian_mode="finite_difference", fd_h=1e-2).loss) - g_ce
    assert F.cosine_similarity(fd, exact, dim=0) > 0.3


def test_op_without_double_backward_needs_finite_difference():
    torch.manual_seed(0)
    model = build_model("small_cnn_first_order", in_channels=1, num_classes=10)
    x, y = _batch(16, hw=16, dtype=torch.float32)
    with pytest.raises(RuntimeError, match="once_differentiable|twice"):
        jafr_objective(model, x, y, 0.1, jacobian_mode="double_backward").loss.backward()
    model.zero_grad()
    out = jafr_objective(model, x, y, 0.1, jacobian_mode="finite_difference")
    out.loss.backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out.loss) and out.penalty is not None


def test_finite_difference_uses_two_forward_and_two_backward_passes():
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10)
    calls = {"fwd": 0, "bwd": 0}
    first = model.features[0]
    first.register_forward_hook(lambda *a: calls.__setitem__("fwd", calls["fwd"] + 1))
    first.weight.register_hook(lambda g: calls.__setitem__("bwd", calls["bwd"] + 1))
    x, y = _batch(8, hw=16, dtype=torch.float32)
    out = jafr_objective(model, x, y, 0.1, jacobian_mode="finite_difference")
    out.loss.backward()
    assert calls == {"fwd": 2, "bwd": 2}


def test_lam_zero_gives_the_plain_ce_gradient():
    model, (x, y) = _smooth_model(), _batch()
    for mode in ("double_backward", "finite_difference"):
        got = _param_grad(model, jafr_objective(model, x, y, 0.0, jacobian_mode=mode).loss)
        torch.testing.assert_close(got, _ce_grad(model, x, y), rtol=1e-12, atol=1e-15)


def _bn_state(model):
    return [t.clone() for n, t in model.state_dict().items() if "running" in n or "num_batches" in n]


@pytest.mark.parametrize("mode", ["double_backward", "finite_difference"])
def test_freeze_bn_keeps_running_stats_out_of_extra_passes(mode):
    model, (x, y) = _smooth_model(bn=True), _batch()
    x_main = (x + 0.1).clamp(0, 1)
    expected = _smooth_model(bn=True)
    expected(x_main)  # the one forward that should update the statistics
    jafr_objective(model, x, y, 0.5, jacobian_mode=mode, x_main=x_main, freeze_bn=True).loss.backward()
    for a, b in zip(_bn_state(model), _bn_state(expected)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    unfrozen = _smooth_model(bn=True)
    jafr_objective(unfrozen, x, y, 0.5, jacobian_mode=mode, x_main=x_main, freeze_bn=False).loss.backward()
    assert not all(torch.equal(a, b) for a, b in zip(_bn_state(unfrozen), _bn_state(expected)))


def test_frozen_bn_stats_restores_after_an_error():
    model = _smooth_model(bn=True)
    before = _bn_state(model)
    with pytest.raises(ZeroDivisionError), frozen_bn_stats(model):
        model(_batch()[0])
        1 / 0
    for a, b in zip(before, _bn_state(model)):
        assert torch.equal(a, b)


def test_gradalign_objective():
    model, (x, y) = _smooth_model(), _batch()
    out = gradalign_objective(model, x, y, x, eps=0.0, lam=0.2)  # eta = 0: the two gradients coincide
    torch.testing.assert_close(out.penalty, torch.zeros((), dtype=torch.float64), rtol=0, atol=1e-12)
    out = gradalign_objective(model, x, y, x, eps=0.3, lam=0.2, generator=torch.Generator().manual_seed(0))
    assert 0 < out.penalty <= 2
    torch.testing.assert_close(out.loss.detach(), out.ce + 0.2 * out.penalty)
    g = _param_grad(model, out.loss)
    assert torch.isfinite(g).all() and not torch.equal(g, _ce_grad(model, x, y))


def test_bf16_autocast_keeps_spectral_maths_in_fp32():
    torch.manual_seed(0)
    model = build_model("small_cnn", in_channels=1, num_classes=10)
    x, y = _batch(8, hw=16, dtype=torch.float32)
    out = jafr_objective(model, x, y, 0.1, autocast_dtype=torch.bfloat16)
    assert out.penalty.dtype == torch.float32 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_bad_arguments_name_themselves():
    model, (x, y) = _smooth_model(), _batch()
    with pytest.raises(ValueError, match="jacobian_mode"):
        jafr_objective(model, x, y, jacobian_mode="exact")
    with pytest.raises(ValueError, match="fd_h"):
        jafr_objective(model, x, y, jacobian_mode="finite_difference", fd_h=0)


def test_official_formulation_and_a_custom_penalty():
    model, (x, y) = _smooth_model(), _batch()
    out = jafr_objective(model, x, y, 0.001, formulation="official")
    xr = x.clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(F.cross_entropy(model(xr), y), xr)
    torch.testing.assert_close(out.penalty, reference.official_penalty(jac), rtol=1e-9, atol=0)
    torch.testing.assert_close(out.lf_ratio, reference.low_freq_ratio(jac, reference.as_band(0.25)).mean(), rtol=1e-9, atol=0)
    out.loss.backward()
    custom = jafr_objective(model, x, y, 2.0, penalty=lambda j: j.pow(2).sum())  # gradient-norm regulariser
    torch.testing.assert_close(custom.penalty, jac.pow(2).sum(), rtol=1e-9, atol=0)


@pytest.mark.parametrize("mode", ["double_backward", "finite_difference"])
def test_lazy_regularisation_scales_the_term_by_k(mode):
    """every=k: plain CE on the steps between, and on the regularised steps the term weighted k * lam."""
    model, (x, y) = _smooth_model(), _batch()
    lam, k = 0.3, 4
    skipped = jafr_objective(model, x, y, lam, jacobian_mode=mode, every=k, step=5)
    assert skipped.penalty is None and skipped.jac is None
    torch.testing.assert_close(_param_grad(model, skipped.loss), _ce_grad(model, x, y), rtol=1e-12, atol=1e-15)
    lazy = jafr_objective(model, x, y, lam, jacobian_mode=mode, every=k, step=8, fd_h=1e-4)
    torch.testing.assert_close(lazy.loss.detach(), lazy.ce + k * lam * lazy.penalty, rtol=1e-12, atol=0)
    got = _param_grad(model, lazy.loss) - _ce_grad(model, x, y)
    expected = _exact_penalty_grad(model, x, y, k * lam)
    assert F.cosine_similarity(got, expected, dim=0) > 0.9999
    assert 0.999 < got.norm() / expected.norm() < 1.001, "the lazy term must be weighted k * lam"


@pytest.mark.parametrize("mode", ["double_backward", "finite_difference"])
@pytest.mark.parametrize("shared", [True, False])
def test_sub_batch_regularisation(mode, shared):
    """fraction=f: J and the term on the first ceil(f B) samples, the CE term on the whole batch."""
    model, (x, y) = _smooth_model(bn=True), _batch(b=12)
    model.train()
    x_main = None if shared else (x + 0.05 * torch.randn_like(x)).clamp(0, 1)
    lam, m = 0.4, 4  # ceil(0.3 * 12) = 4
    out = jafr_objective(model, x, y, lam, jacobian_mode=mode, fraction=0.3, x_main=x_main, fd_h=1e-4)
    assert out.jac.shape[0] == m
    xs = x[:m].clone().requires_grad_(True)
    (jac,) = torch.autograd.grad(F.cross_entropy(model(xs), y[:m]), xs)
    torch.testing.assert_close(out.jac, jac, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(out.penalty, reference.freq_penalty(jac, reference.as_band(0.25)), rtol=1e-9, atol=0)
    if shared:  # the CE term over two BatchNorm groups, the sub-batch and the rest, weighted by their sizes
        def ce_term():
            return (m * F.cross_entropy(model(x[:m]), y[:m]) + (12 - m) * F.cross_entropy(model(x[m:]), y[m:])) / 12
    else:
        def ce_term():
            return F.cross_entropy(model(x_main), y)
    torch.testing.assert_close(out.ce, ce_term(), rtol=1e-12, atol=0)
    got = _param_grad(model, out.loss) - _param_grad(model, ce_term())
    expected = _exact_penalty_grad(model, x[:m], y[:m], lam)
    assert F.cosine_similarity(got, expected, dim=0) > 0.999
    assert 0.99 < got.norm() / expected.norm() < 1.01


@pytest.mark.parametrize("mode", ["double_backward", "finite_difference"])
def test_sub_batch_step_takes_the_running_statistics_from_the_rest_of_the_batch(mode):
    """In standard training with a sub-batch, BatchNorm's running statistics move once per step, by the batch
    statistics of the pass over the rest (the sub-batch's pass and the finite-difference pass leave them)."""
    model, (x, y) = _smooth_model(bn=True), _batch(b=12)
    model.train()
    bn = model[1]
    jafr_objective(model, x, y, 0.4, jacobian_mode=mode, fraction=0.3, fd_h=1e-4)
    ref = _smooth_model(bn=True).train()
    ref(x[4:])
    torch.testing.assert_close(bn.running_mean, ref[1].running_mean, rtol=1e-12, atol=0)
    torch.testing.assert_close(bn.running_var, ref[1].running_var, rtol=1e-12, atol=0)
    assert int(bn.num_batches_tracked) == 1


def test_schedule_arguments_are_checked():
    model, (x, y) = _smooth_model(), _batch()
    for kwargs, match in (({"every": 0}, "every"), ({"step": -1}, "step"), ({"fraction": 0}, "fraction"),
                          ({"fraction": 1.5}, "fraction")):
        with pytest.raises(ValueError, match=match):
            jafr_objective(model, x, y, **kwargs)
