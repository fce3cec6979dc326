"""The JaFR training objective, usable in any training loop.

``J = dCE_mean/dx`` is the input gradient of the batch-mean cross-entropy with the true labels (as in the
authors' code), taken at the clean input. The objective is ``CE(f(x_main), y) + lam * P(J)`` with
``x_main = x`` (standard training, one shared forward) or an adversarial input.

Two ways to get the parameter gradient of ``lam * P(J(theta))``:

* ``"double_backward"``: J with ``create_graph=True`` and one ``backward()`` through it (the paper).
* ``"finite_difference"``: with ``v = dP/dJ`` held fixed, ``d/dtheta P(J) ~ d/dtheta (L(x + h v) - L(x)) / h``
  (a finite-difference Hessian-vector product). One backward of the clean CE gives both J and the clean
  parameter gradient ``g_clean``, one forward/backward at ``x + h v`` gives ``g_pert``; for standard training
  the total gradient is ``(1 - lam/h) g_clean + (lam/h) g_pert``: two forward and two backward passes and no
  second derivative, so it works for ops without a double backward. ``h = fd_h * ||x|| / ||v||``. The clean
  gradient enters the loss through one zero-cost linearisation node (its backward is one ``_foreach_mul``),
  and ``(P, v)`` come from one fused call, :func:`jafr_kernels.freq_penalty_and_grad`.

Two ways to pay less for the term, as GAN training does for gradient penalties:

* ``every=k`` (lazy regularisation): the JaFR term only on steps with ``step % k == 0``, weighted ``k * lam``
  so its average over steps is unchanged; the other steps are plain CE steps.
* ``fraction=f`` (sub-batch regularisation): J and the term on the first ``ceil(f * B)`` samples of the batch
  (batches are shuffled); the CE term keeps the whole batch. The penalty is a mean over samples, so its
  expected gradient is unchanged. In standard training the batch goes through the model in two passes, the
  sub-batch's (which also gives J and, with finite differences, the clean gradient) and the rest's, and the
  CE term is their sample-weighted mean: with finite differences a step costs about ``1 + f`` standard steps
  (passes of ``fB``, ``(1 - f)B`` and ``fB`` samples). With BatchNorm in train mode each of the two passes
  normalises with its own batch statistics (ghost batch normalisation over two groups) and the rest's pass
  alone updates the running statistics. With an adversarial ``x_main`` the CE term has a pass of its own.

Both return a scalar ``loss`` whose single ``loss.backward()`` produces the parameter gradient (so under
DDP that one backward does the all-reduce) and whose value is ``CE + lam * P``.

DDP batch semantics: every quantity is per process. J is the gradient of the per-process mean CE, the
penalty is the mean over the per-process batch, and DDP averages gradients over processes. For the
per-sample ratio penalty (scale invariant) with equal per-process batches this equals the single-process
objective on the global batch. The official formulation uses a batch-mean spectrum, which is then the
per-process batch's spectrum (not the global batch's). Finite differences take ``h`` from the norms of x
and v summed over all processes (one all-reduce), so every process uses the same ``h``; under DDP call the
objective on every process.
"""
from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

import jafr_kernels as jk

JACOBIAN_MODES = ("double_backward", "finite_difference")


@dataclass
class ObjectiveResult:
    """Output of an objective. ``loss``: scalar to call ``backward()`` on (value ``ce + lam * penalty`` plus any
    other regulariser); the rest are detached diagnostics: ``ce`` of the main term, ``penalty`` P(J),
    ``lf_ratio`` the batch-mean low-frequency ratio of J, ``logits`` of the main term, ``jac`` J (B, C, H, W)."""

    loss: Tensor
    ce: Tensor
    logits: Tensor
    penalty: Optional[Tensor] = None
    lf_ratio: Optional[Tensor] = None
    jac: Optional[Tensor] = None
    extra: dict = field(default_factory=dict)


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module, enabled: bool = True):
    """Leave every BatchNorm's running statistics (and batch counter) untouched by the forwards inside.

    Modules in train mode still normalise with batch statistics but stop tracking them for the duration
    (``track_running_stats`` is switched off, which passes no running buffers to the kernel): nothing is
    copied or written. Modules in eval mode are left as they are (they use, and never update, the running
    statistics)."""
    if not enabled:
        yield
        return
    switched = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                and m.training and m.track_running_stats and m.running_mean is not None]
    for m in switched:
        m.track_running_stats = False
    try:
        yield
    finally:
        for m in switched:
            m.track_running_stats = True


def _autocast(x: Tensor, dtype: Optional[torch.dtype]):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=x.device.type, dtype=dtype)


def _forward_ce(model, x, y, autocast_dtype):
    with _autocast(x, autocast_dtype):
        logits = model(x)
    return logits, F.cross_entropy(_upcast(logits), y)


def _upcast(t: Tensor) -> Tensor:
    """fp16/bf16 -> fp32 (losses and spectra are never computed in half precision); fp32/fp64 unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def default_penalty(cutoff=0.25, target="low", formulation="ratio", backend="auto") -> Callable[[Tensor], Tensor]:
    """``J -> jk.freq_penalty(J, cutoff, target=..., formulation=...)`` (spectral maths in fp32 or fp64)."""
    return functools.partial(jk.freq_penalty, cutoff=cutoff, target=target, formulation=formulation, backend=backend)


def _ratio_from_penalty(pen: Tensor, target: str) -> Tensor:
    """The batch-mean low-frequency ratio of J from the ratio penalty's value (detached): ``1 - P`` for the
    low target, ``P`` for the high one. A sample whose J is exactly zero counts as ratio 1 (low) or 0 (high)."""
    pen = pen.detach()
    return 1.0 - pen if target == "low" else pen


def _penalty_and_ratio(jac: Tensor, penalty: Optional[Callable[[Tensor], Tensor]], cutoff, target: str,
                       formulation: str) -> tuple[Tensor, Tensor]:
    """The penalty P(J) (differentiable in J) and the batch-mean low-frequency ratio of J (detached), without
    a host read. Penalties other than the default ratio take one extra pass (``jk.low_freq_ratio``) for the
    diagnostic."""
    if penalty is None and formulation == "ratio":
        pen = jk.freq_penalty(jac, cutoff, target=target)
        return pen, _ratio_from_penalty(pen, target)
    pen = (penalty or default_penalty(cutoff, target, formulation))(jac)
    return pen, jk.low_freq_ratio(_upcast(jac.detach()), cutoff).mean()


def _penalty_value_and_grad(jac: Tensor, penalty, cutoff, target: str, formulation: str):
    """``(P, lf_ratio, v = dP/dJ)`` for a detached J: one fused call for the default ratio penalty, autograd
    through ``penalty`` otherwise."""
    if penalty is None and formulation == "ratio":
        pen, v = jk.freq_penalty_and_grad(jac, cutoff, target=target)
        return pen, _ratio_from_penalty(pen, target), v
    leaf = jac.detach().requires_grad_(True)
    with torch.enable_grad():
        pen, lf_ratio = _penalty_and_ratio(leaf, penalty, cutoff, target, formulation)
    (v,) = torch.autograd.grad(pen, leaf)
    return pen.detach(), lf_ratio, v


class _Linearisation(torch.autograd.Function):
    """A node of value ``value`` whose backward hands each parameter ``coef * g`` (``g`` a fixed gradient,
    e.g. of the clean CE): the finite-difference objective's clean term without a graph over the parameters.
    Its backward is one ``_foreach_mul``."""

    @staticmethod
    def forward(ctx, value, coef, grads, *params):
        ctx.coef, ctx.grads = coef, grads
        return value.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        present = [g for g in ctx.grads if g is not None]
        scaled = iter(torch._foreach_mul(present, grad_out * ctx.coef))
        return (None, None, None, *(None if g is None else next(scaled) for g in ctx.grads))


def _h_and_weight(x: Tensor, v: Tensor, fd_h: float, lam: float, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The step ``h = fd_h ||x|| / ||v||`` and the weight ``lam / h`` of the finite difference, on the device
    (no host read); both 0 where v = 0. Under DDP the norms are summed over processes, so every process takes
    the same h and DDP reproduces the single-process step."""
    norms = torch.stack([x.detach().pow(2).sum(), v.pow(2).sum()]).to(torch.float64)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(norms)
    x_norm, v_norm = norms.sqrt().unbind()
    moves = v_norm > 0
    h = torch.where(moves, fd_h * x_norm / v_norm, 0.0)
    return h, torch.where(moves, lam / h, 0.0).to(dtype)


def _check_schedule(every: int, step: int, fraction: float) -> None:
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an integer >= 1 (the JaFR term every k-th step), got {every!r}")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ValueError(f"step must be an integer >= 0, got {step!r}")
    if not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise ValueError(f"fraction must lie in (0, 1] (the share of the batch that gets the JaFR term), got {fraction!r}")


def sub_batch_size(batch: int, fraction: float) -> int:
    """Samples that get the JaFR term: ``ceil(fraction * batch)``, at least 1."""
    return max(1, min(batch, math.ceil(fraction * batch - 1e-9)))


def _ce_term(model, logits, ce_clean, share, rest, autocast_dtype):
    """``(logits, CE, live)`` of the CE term: ``share * ce_clean`` plus, when ``rest = (x, y)`` is given, the
    CE of a pass over ``rest`` weighted ``1 - share``; ``live`` is that pass's weighted CE (None without one),
    the part of the CE term whose gradient is still to come."""
    if rest is None:
        return logits, ce_clean, None
    logits_rest, ce_rest = _forward_ce(model, *rest, autocast_dtype)
    live = ce_rest if share == 0 else (1 - share) * ce_rest
    if share == 0:
        return logits_rest, ce_rest, live
    return torch.cat([logits.detach(), logits_rest.detach()]), share * ce_clean + live, live


def ce_objective(model: nn.Module, x: Tensor, y: Tensor, autocast_dtype: Optional[torch.dtype] = None) -> ObjectiveResult:
    """Plain cross-entropy ``CE(f(x), y)`` as an :class:`ObjectiveResult` (no penalty, no Jacobian)."""
    logits, ce = _forward_ce(model, x, y, autocast_dtype)
    return ObjectiveResult(ce, ce.detach(), logits.detach())


def jafr_objective(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    lam: float = 0.1,
    *,
    penalty: Optional[Callable[[Tensor], Tensor]] = None,
    cutoff=0.25,
    target: str = "low",
    formulation: str = "ratio",
    jacobian_mode: str = "double_backward",
    x_main: Optional[Tensor] = None,
    fd_h: float = 0.01,
    freeze_bn: bool = True,
    autocast_dtype: Optional[torch.dtype] = None,
    every: int = 1,
    step: int = 0,
    fraction: float = 1.0,
) -> ObjectiveResult:
    """JaFR loss ``CE(f(x_main), y) + lam * P(J)``, J the input gradient of the batch-mean CE at the clean x.

    Args:
        model: any module mapping (B, C, H, W) to (B, K) logits (train or eval mode, left as set).
        x: (B, C, H, W) clean inputs (float32/float64); y: (B,) int64 labels.
        lam: penalty weight.
        penalty: callable J -> scalar; default ``jk.freq_penalty(J, cutoff, target=target, formulation=formulation)``.
        jacobian_mode: ``"double_backward"`` or ``"finite_difference"`` (see the module docstring).
        x_main: input of the CE term (e.g. adversarial); None uses x and shares its forward pass.
        fd_h: finite-difference step relative to ``||x|| / ||v||``.
        freeze_bn: keep BatchNorm running statistics untouched by the extra passes (the Jacobian pass when
            ``x_main`` is given or a sub-batch is taken, and the finite-difference pass).
        autocast_dtype: e.g. ``torch.bfloat16`` to run the model under autocast; CE and spectra stay fp32.
        every, step: lazy regularisation: the term only when ``step % every == 0``, weighted ``every * lam``;
            other steps return the plain CE of ``x_main`` (no penalty, no J).
        fraction: sub-batch regularisation: J and the term on the first ``ceil(fraction * B)`` samples (in
            standard training with BatchNorm, the CE term then normalises them and the rest as two groups).

    Returns:
        :class:`ObjectiveResult`; call ``result.loss.backward()`` once.
    """
    if jacobian_mode not in JACOBIAN_MODES:
        raise ValueError(f"jacobian_mode must be one of {JACOBIAN_MODES}, got {jacobian_mode!r}")
    if not fd_h > 0:
        raise ValueError(f"fd_h must be > 0, got {fd_h}")
    _check_schedule(every, step, fraction)
    shared = x_main is None
    if step % every:
        return ce_objective(model, x if shared else x_main, y, autocast_dtype)
    lam = lam * every
    batch, m = x.shape[0], sub_batch_size(x.shape[0], fraction)
    # share: the clean pass's CE is (part of) the CE term, with this weight; rest: the samples the CE term
    # needs a pass of its own for (the batch beyond the sub-batch in standard training, x_main otherwise)
    share, rest = (m / batch, (x[m:], y[m:])) if shared else (0.0, (x_main, y))
    if m == batch and shared:
        rest = None
    x, y_jac = x[:m], y[:m]
    xc = x.detach().requires_grad_(True)
    if jacobian_mode == "double_backward":
        with frozen_bn_stats(model, freeze_bn and rest is not None):
            logits, ce_clean = _forward_ce(model, xc, y_jac, autocast_dtype)
        (jac,) = torch.autograd.grad(ce_clean, xc, create_graph=lam != 0, retain_graph=True)
        pen, lf_ratio = _penalty_and_ratio(jac, penalty, cutoff, target, formulation)
        logits_main, ce_main, _ = _ce_term(model, logits, ce_clean, share, rest, autocast_dtype)
        loss = ce_main + lam * pen if lam != 0 else ce_main
        return ObjectiveResult(loss, ce_main.detach(), logits_main.detach(), pen.detach(), lf_ratio, jac.detach())

    # finite differences: one backward gives J and g_clean; then a forward/backward at x + h v
    params = [p for p in model.parameters() if p.requires_grad]
    with frozen_bn_stats(model, freeze_bn and rest is not None):
        logits, ce_clean = _forward_ce(model, xc, y_jac, autocast_dtype)
    grads = torch.autograd.grad(ce_clean, [xc] + params, allow_unused=True)
    jac, g_clean = grads[0], grads[1:]
    pen, lf_ratio, v = _penalty_value_and_grad(jac, penalty, cutoff, target, formulation)
    logits_main, ce_main, live = _ce_term(model, logits, ce_clean.detach(), share, rest, autocast_dtype)
    extra, coef = {}, share
    if lam != 0:
        h, weight = _h_and_weight(x, v, fd_h, lam, ce_clean.dtype)
        with frozen_bn_stats(model, freeze_bn):
            _, ce_pert = _forward_ce(model, x.detach() + h.to(x.dtype) * v.to(x.dtype), y_jac, autocast_dtype)
        pert = weight * ce_pert
        live = pert if live is None else live + pert
        coef = coef - weight
        extra["fd_h"] = h
    value = (ce_main + lam * pen).detach()
    # value: CE + lam * P; gradient: coef * g_clean (the linearisation) + that of the live terms
    loss = _Linearisation.apply(value, coef, g_clean, *params)
    if live is not None:
        loss = loss + (live - live.detach())  # exactly zero-valued: the value stays CE + lam * P to the last bit
    return ObjectiveResult(loss, ce_main.detach(), logits_main.detach(), pen, lf_ratio, jac, extra)


def gradalign_objective(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    x_main: Tensor,
    eps: float,
    lam: float = 0.2,
    *,
    generator: Optional[torch.Generator] = None,
    freeze_bn: bool = True,
    autocast_dtype: Optional[torch.dtype] = None,
) -> ObjectiveResult:
    """GradAlign (Andriushchenko & Flammarion 2020): ``CE(f(x_main), y) + lam * mean_b (1 - cos(g1_b, g2_b))``
    with ``g1 = grad_x CE(x)`` (detached) and ``g2 = grad_x CE(x + eta)`` (double backprop), eta ~ U(-eps, eps)."""
    with frozen_bn_stats(model, freeze_bn):
        xc = x.detach().requires_grad_(True)
        _, ce1 = _forward_ce(model, xc, y, autocast_dtype)
        (g1,) = torch.autograd.grad(ce1, xc)
        eta = (torch.rand(x.shape, generator=generator, dtype=x.dtype) * 2 - 1).to(x.device) * eps
        x2 = (x.detach() + eta).requires_grad_(True)
        _, ce2 = _forward_ce(model, x2, y, autocast_dtype)
        (g2,) = torch.autograd.grad(ce2, x2, create_graph=True)
    cos = F.cosine_similarity(g1.flatten(1), g2.flatten(1), dim=1)
    reg = (1.0 - cos).mean()
    logits_main, ce_main = _forward_ce(model, x_main, y, autocast_dtype)
    loss = ce_main + lam * reg
    return ObjectiveResult(loss, ce_main.detach(), logits_main.detach(), reg.detach(), None, None)
