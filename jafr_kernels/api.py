"""The public spectral functions: input checks, backend choice, and dispatch to one op per call.

Formulas are those of :mod:`jafr_kernels.reference` (the specification). This module validates arguments
(host-side Python only) and hands each call to the chosen backend: the power-2 ratio and penalty are one
fused op (:func:`jafr_kernels.ops.band_ratio`), so the default path of :func:`freq_penalty`,
:func:`low_freq_ratio` and :func:`spectral_energy` reads nothing back from the device. Maths run in fp32
(fp64 for fp64 input); results are fp32 for fp16/bf16 input.
"""
from __future__ import annotations

import math
import numbers
from typing import Union

import torch
from torch import Tensor

from jafr_kernels import backends, ops, reference
from jafr_kernels.reference import RadialBand

MaskLike = Union[Tensor, RadialBand, float]

_MAX_CUTOFF = math.sqrt(2.0)


# --------------------------------------------------------------------------- input checks
def check_planes(x, name: str = "x") -> Tensor:
    """Validate a (B, C, H, W) real floating tensor with B >= 1 and H, W >= 2."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"{name} must have 4 dimensions (B, C, H, W), got shape {tuple(x.shape)} ({x.dim()} dims)")
    if x.is_complex() or not x.is_floating_point():
        raise TypeError(f"{name} must be a real floating tensor (float16/bfloat16/float32/float64), got dtype {x.dtype}")
    b, c, h, w = x.shape
    if b == 0 or c == 0:
        raise ValueError(f"{name} is empty: got shape {tuple(x.shape)}; batch and channel sizes must be >= 1")
    if h < 2 or w < 2:
        raise ValueError(f"{name} planes must be at least 2x2, got H={h}, W={w}")
    return x


def _check_cutoff(value, name: str) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number in (0, sqrt(2)], got {value!r}") from None
    if not (0.0 < value <= _MAX_CUTOFF + 1e-12):
        raise ValueError(f"{name} must lie in (0, sqrt(2)] (normalised radius, 1 = Nyquist), got {value}")
    return value


def check_band(band: RadialBand) -> RadialBand:
    if band.kind in ("low", "high"):
        _check_cutoff(band.hi if band.kind == "low" else band.lo, "cutoff")
    elif band.kind == "between":
        if not (0.0 <= band.lo < band.hi):
            raise ValueError(f"band needs 0 <= lower < upper, got lower={band.lo}, upper={band.hi}")
    elif band.kind != "all":
        raise ValueError(f"unknown band kind {band.kind!r}")
    return band


def _check_weight(weight: Tensor, x: Tensor) -> Tensor:
    h, w = x.shape[-2:]
    expected = (h, w // 2 + 1)
    if weight.dim() != 2 or tuple(weight.shape) != expected:
        raise ValueError(f"weight map must have shape (H, W//2+1) = {expected} for planes {h}x{w}, got {tuple(weight.shape)}")
    if weight.device != x.device:
        raise ValueError(f"weight map is on {weight.device} but the input is on {x.device}; move them to one device")
    if weight.is_complex() or not weight.is_floating_point():
        raise TypeError(f"weight map must be a real floating tensor, got dtype {weight.dtype}")
    if torch._C._functorch.is_functorch_wrapped_tensor(weight):  # mapped by vmap, or differentiated by torch.func
        raise ValueError(ops.MAPPED_WEIGHT)
    if not torch.compiler.is_compiling():  # one host read per call with a weight map (radial bands need none)
        nonfinite, negative = torch.stack([~torch.isfinite(weight).all(), (weight < 0).any()]).tolist()
        if nonfinite:
            raise ValueError("weight map contains NaN or Inf")
        if negative:
            raise ValueError("weight map must be >= 0 everywhere (it weights spectral energies)")
    return weight.detach().to(ops.accumulate_dtype(x.dtype)).contiguous()


def as_mask(mask, x: Tensor):
    """``(weight or None, band or None)`` from a weight map, a RadialBand or a cutoff (low band): a number, or a
    0-d tensor or array holding one."""
    if isinstance(mask, RadialBand):
        return None, check_band(mask)
    if getattr(mask, "ndim", None) == 0 and not isinstance(mask, bool):  # 0-d tensor or NumPy scalar/array
        if isinstance(mask, Tensor) and (mask.is_complex() or mask.dtype == torch.bool):
            raise TypeError(f"cutoff must be a real number, got a 0-d tensor of dtype {mask.dtype}")
        return None, RadialBand.low(_check_cutoff(mask, "cutoff"))
    if isinstance(mask, Tensor):
        return _check_weight(mask, x), None
    if isinstance(mask, numbers.Real) and not isinstance(mask, bool):
        return None, RadialBand.low(_check_cutoff(mask, "cutoff"))
    raise TypeError(f"mask must be a weight map tensor (H, W//2+1), a RadialBand or a float cutoff, got {type(mask).__name__}")


def _check_power(power) -> int:
    if power not in (1, 2):
        raise ValueError(f"power must be 1 (magnitude) or 2 (power spectrum), got {power!r}")
    return int(power)


def _choose_backend(backend: str, x: Tensor) -> str:
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, got {type(backend).__name__}")
    return backends.choose(backend, x.device)


# --------------------------------------------------------------------------- composition
def _q_limits(band, x: Tensor) -> tuple[int, int]:
    """Integer squared-radius limits of the op schemas; a weight map (band None) uses every bin."""
    return (0, reference.Q_MAX) if band is None else band.q_limits(*x.shape[-2:])


def _energy(x: Tensor, weight, band, power: int, backend: str) -> Tensor:
    """(B, C) energies of x over the mask, with the chosen backend."""
    if backend == "reference":
        return reference.spectral_energy(x, weight if weight is not None else band, power)
    return ops.spectral_energy(x.contiguous(), weight, *_q_limits(band, x), power, backend)


def _ratio(x: Tensor, weight, band, power: int, complement: bool, backend: str) -> Tensor:
    """Per-sample ``E_low / E_all`` (B,), or with ``complement`` ``1 - E_low / E_all`` (0 for all-zero samples).

    Kernel backends compute the power-2 ratio in one fused op each way. Otherwise (power 1, or the
    reference) it is composed from energies of x divided by its detached per-sample max |x|: the ratio is
    scale invariant, so this changes neither value nor gradient while keeping fp32 sums finite for |x| from
    1e-30 to 1e30. NaN/Inf in a sample gives NaN for that sample on every path.
    """
    if power == 2 and backend != "reference":
        return ops.band_ratio(x.contiguous(), weight, *_q_limits(band, x), complement, backend)[0]
    acc = ops.accumulate_dtype(x.dtype)
    max_abs = x.detach().flatten(1).abs().amax(dim=1).to(acc)  # NaN-propagating
    xs = x.to(acc) / torch.where(max_abs > 0, max_abs, 1.0)[:, None, None, None]
    e_low = _energy(xs, weight, band, power, backend).sum(dim=1)
    if power == 2:
        e_all = x.shape[-2] * x.shape[-1] * xs.flatten(1).square().sum(dim=1)  # Parseval: no transform needed
    else:
        e_all = _energy(xs, None, RadialBand.all(), power, backend).sum(dim=1)
    ratio = reference._safe_ratio(e_low, e_all)
    return torch.where(e_all == 0, 0.0, 1.0 - ratio) if complement else ratio


NONFINITE = ("propagate", "raise", "ignore")
TARGETS = ("low", "high")  # where the penalty pushes J's energy
FORMULATIONS = ("ratio", "official")
REDUCTIONS = ("mean", "sum", "none")


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def _drop_nonfinite(x: Tensor) -> Tensor:
    """x with every sample that holds NaN/Inf set to zero (which then contributes 0 with zero gradient)."""
    keep = torch.isfinite(x).flatten(1).all(dim=1)
    return torch.where(keep[:, None, None, None], x, torch.zeros((), dtype=x.dtype, device=x.device))


def _raise_nonfinite(jac: Tensor, result: Tensor) -> None:
    """nonfinite="raise": one host read of ``result``; if it is not finite, count the bad entries of ``jac``."""
    if bool(torch.isfinite(result).all()):
        return
    finite = torch.isfinite(jac)
    bad = int((~finite).sum())
    samples = int((~finite).flatten(1).any(dim=1).sum())
    raise ValueError(
        f"jac has {bad} non-finite (NaN/Inf) entries in {samples} of {jac.shape[0]} samples; the default "
        "nonfinite='propagate' returns NaN for those samples instead, nonfinite='ignore' drops them"
    )


def _check_penalty_args(target: str, reduction: str, nonfinite: str) -> None:
    _one_of("target", target, TARGETS)
    _one_of("reduction", reduction, REDUCTIONS)
    _one_of("nonfinite", nonfinite, NONFINITE)
    if nonfinite == "raise" and torch.compiler.is_compiling():
        raise ValueError("nonfinite='raise' reads the result back to the host, which a compiled graph cannot do; "
                         "use the default nonfinite='propagate' (NaN penalty for non-finite samples) in compiled code")


# --------------------------------------------------------------------------- public API
def spectral_energy(x: Tensor, mask: MaskLike, *, power: int = 2, backend: str = "auto") -> Tensor:
    """Spectral energy of each plane over a frequency mask.

    ``E[b, c] = sum_{u,v} h_v * m[u, v] * |X[b, c, u, v]|^power`` with ``X = rfft2(x)`` (unnormalised) and
    Hermitian weights ``h_v`` so the result equals the full-spectrum sum (``power=2``: ``N * sum x^2``
    for an all-pass mask, Parseval).

    Args:
        x: (B, C, H, W) real tensor, any H, W >= 2; float16/bfloat16/float32/float64, any strides.
        mask: a weight map (H, W//2+1) >= 0 (e.g. :func:`radial_mask`), a :class:`RadialBand`, or a float
            cutoff meaning ``RadialBand.low(cutoff)``. Bands are generated in-kernel from bin indices.
        power: 2 (power spectrum) or 1 (magnitude).
        backend: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"reference"`` (env ``JAFR_BACKEND``).

    Returns:
        (B, C) energies, float32 (float64 for float64 input); differentiable with respect to x.
    """
    x = check_planes(x)
    weight, band = as_mask(mask, x)
    return _energy(x, weight, band, _check_power(power), _choose_backend(backend, x))


def low_freq_ratio(x: Tensor, cutoff: MaskLike = 0.25, *, power: int = 2, backend: str = "auto") -> Tensor:
    """Per-sample share of spectral energy in the low band: ``sum_c E_low / sum_c E_all``, shape (B,).

    Args:
        x: (B, C, H, W) real tensor (see :func:`spectral_energy`).
        cutoff: normalised radius of the low band ``r <= cutoff`` (1 = Nyquist), or a weight map / RadialBand
            defining the "low" set.
        power: 2 or 1.

    Returns:
        (B,) ratios in [0, 1] (0 for an all-zero sample), float32 (float64 for float64 input). Scale
        invariant, and finite for magnitudes from 1e-30 to 1e30 in fp32.
    """
    x = check_planes(x)
    weight, band = as_mask(cutoff, x)
    return _ratio(x, weight, band, _check_power(power), False, _choose_backend(backend, x))


def radial_mask(h: int, w: int, cutoff=0.25, *, band: str = "low", device=None, dtype=torch.float32) -> Tensor:
    """Radial frequency mask in rfft2 layout, shape ``(h, w // 2 + 1)``, of 0/1 values.

    ``band="low"``: ``r <= cutoff``; ``"high"``: ``r > cutoff``; ``"band"``: ``lo <= r < hi`` for
    ``cutoff=(lo, hi)``. ``r`` is the normalised radius (0 at DC, 1 at the Nyquist of one axis, sqrt(2) in
    the corner); any h, w >= 2, odd included. Usable as a weight map wherever a mask is taken.
    """
    for name, value in (("h", h), ("w", w)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 2:
            raise ValueError(f"{name} must be an integer >= 2, got {value!r}")
    if band in ("low", "high"):
        _check_cutoff(cutoff, "cutoff")
    elif band == "band":
        if not (isinstance(cutoff, (tuple, list)) and len(cutoff) == 2):
            raise ValueError(f"band='band' needs cutoff=(lower, upper), got {cutoff!r}")
    else:
        raise ValueError(f"band must be 'low', 'high' or 'band', got {band!r}")
    check_band(reference.as_band(cutoff, band))
    return reference.radial_mask(h, w, cutoff, band=band, device=device, dtype=dtype)


def mean_magnitude(x: Tensor, *, backend: str = "auto") -> Tensor:
    """Mean over batch and channels of ``|rfft2(x)|`` (H, W//2+1): the Jacobian spectrum of the paper's code."""
    x = check_planes(x)
    backend = _choose_backend(backend, x)
    if backend == "reference":
        return reference.mean_magnitude(x)
    return ops.mean_magnitude(x.contiguous(), backend)


def _official(jac: Tensor, target: str, max_pow: float, eps: float, backend: str) -> Tensor:
    h, w = jac.shape[-2:]
    if h != w:
        raise ValueError(f"formulation='official' needs square planes (its exponent ramp spans both axes), got {h}x{w}")
    m = reference.mean_magnitude(jac) if backend == "reference" else ops.mean_magnitude(jac.contiguous(), backend)
    return reference.official_from_magnitude(m, max_pow if target == "low" else -max_pow, eps)


def freq_penalty(
    jac: Tensor,
    cutoff: MaskLike = 0.25,
    *,
    target: str = "low",
    power: int = 2,
    formulation: str = "ratio",
    reduction: str = "mean",
    max_pow: float = 1.0,
    eps: float = 1e-5,
    backend: str = "auto",
    nonfinite: str = "propagate",
) -> Tensor:
    """JaFR frequency penalty on a Jacobian (input gradient), a drop-in loss term.

    ``formulation="ratio"`` (default): per sample, the share of the Jacobian's spectral energy outside the
    low band ``r <= cutoff`` (``target="low"``, pushes energy to low frequencies) or inside it
    (``target="high"``). Samples whose Jacobian is exactly zero contribute 0 with zero gradient.

    ``formulation="official"``: the authors' regulariser (Chan et al., IJCAI 2022): batch/channel-mean
    magnitude spectrum cropped to K x K (K = H//2+1), exponent ramp ``linspace(max_pow, -max_pow, K) + 1e-5``
    (reversed for ``target="high"``), ``-logsumexp`` of the row and column log-sums, floor ``eps``. Square
    planes only; one value per batch, so ``reduction`` must be ``"mean"``; ``cutoff`` and ``power`` unused.

    Args:
        jac: (B, C, H, W) Jacobian, e.g. ``torch.autograd.grad(ce, x, create_graph=True)[0]``.
        cutoff: low-band radius (1 = Nyquist), or a weight map / RadialBand.
        target: ``"low"`` or ``"high"``.
        power: 2 (energy) or 1 (magnitude) for the ratio formulation.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample, shape (B,)).
        nonfinite: what a sample whose Jacobian holds NaN/Inf does. ``"propagate"`` (default): its penalty is
            NaN, like any torch loss, and nothing is read back to the host. ``"raise"``: a ValueError with the
            count of bad entries (one host read per call; not in compiled code). ``"ignore"``: the sample is
            zeroed, giving 0 penalty and zero gradient.
        backend: see :func:`spectral_energy`.

    Returns:
        The penalty, float32 (float64 for float64 input).
    """
    jac = check_planes(jac, "jac")
    _one_of("formulation", formulation, FORMULATIONS)
    _check_penalty_args(target, reduction, nonfinite)
    backend = _choose_backend(backend, jac)
    if formulation == "official":
        if reduction != "mean":
            raise ValueError("formulation='official' yields one value per batch (a batch-mean spectrum); use reduction='mean'")
        if not (eps > 0):
            raise ValueError(f"eps must be > 0 for formulation='official', got {eps}")
    else:
        weight, band = as_mask(cutoff, jac)
        power = _check_power(power)
    if nonfinite == "ignore":
        jac = _drop_nonfinite(jac)
    if formulation == "official":
        result = _official(jac, target, float(max_pow), float(eps), backend)
    else:
        result = reference._reduce(_ratio(jac, weight, band, power, target == "low", backend), reduction)
    if nonfinite == "raise":
        _raise_nonfinite(jac, result)
    return result


def freq_penalty_and_grad(
    jac: Tensor,
    cutoff: MaskLike = 0.25,
    *,
    target: str = "low",
    reduction: str = "mean",
    backend: str = "auto",
    nonfinite: str = "propagate",
) -> tuple[Tensor, Tensor]:
    """The default ratio penalty and its gradient with respect to ``jac``, in one op: ``(penalty, grad)``.

    ``penalty`` equals ``freq_penalty(jac, cutoff, target=target, reduction=reduction, nonfinite=nonfinite)``
    (power 2, ratio formulation) and ``grad`` equals ``torch.autograd.grad(penalty, jac)``, but ``jac`` is read
    as data, once: no autograd graph, no copy of ``jac``. Meant for objectives that need ``v = dP/dJ`` with J
    held fixed (the finite-difference Hessian-vector product). Kernel backends compute both from the same band
    spectrum, one launch per call on the small-plane path (planes up to 64 x 64; larger planes run the forward
    and backward kernels); the reference differentiates its penalty with autograd.

    Args:
        jac: (B, C, H, W) Jacobian, float16/bfloat16/float32/float64, any strides; its autograd history (if
            any) is ignored.
        cutoff: low-band radius (1 = Nyquist), or a weight map (H, W//2+1) / RadialBand.
        target: ``"low"`` (penalise energy outside the band) or ``"high"`` (inside it).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample penalty (B,)). With ``"none"``, ``grad`` is the
            gradient of the sum of the per-sample penalties, i.e. ``grad[b] = d penalty[b] / d jac[b]`` (samples
            are independent).
        backend: ``"auto"``, ``"triton"``, ``"cuda"``, ``"cpu"`` or ``"reference"`` (env ``JAFR_BACKEND``).
        nonfinite: as in :func:`freq_penalty`: ``"propagate"`` (a sample holding NaN/Inf gets penalty NaN and a
            NaN gradient; the other samples are unaffected, except through a NaN mean/sum), ``"raise"``
            (ValueError; one host read), ``"ignore"`` (the sample counts as zero: penalty 0, gradient 0).

    Returns:
        ``(penalty, grad)``: penalty a scalar (shape (B,) for ``"none"``), float32 (float64 for float64 input);
        grad (B, C, H, W) contiguous, dtype of ``jac``. Neither requires grad: the op is not differentiable.
    """
    jac = check_planes(jac, "jac").detach()
    _check_penalty_args(target, reduction, nonfinite)
    backend = _choose_backend(backend, jac)
    weight, band = as_mask(cutoff, jac)
    if nonfinite == "ignore":
        jac = _drop_nonfinite(jac)
    complement = target == "low"
    if backend == "reference":
        with torch.enable_grad():
            leaf = jac.detach().requires_grad_(True)
            per_sample = _ratio(leaf, weight, band, 2, complement, backend)
            (grad,) = torch.autograd.grad(reference._reduce(per_sample, "sum" if reduction == "none" else reduction), leaf)
        per_sample, grad = per_sample.detach(), grad.contiguous()  # autograd follows jac's strides
    else:
        scale = 1.0 / jac.shape[0] if reduction == "mean" else 1.0
        per_sample, grad = ops.band_ratio_and_grad(jac.contiguous(), weight, *_q_limits(band, jac), complement, scale,
                                                   backend)
    penalty = reference._reduce(per_sample, reduction)
    if nonfinite == "raise":
        _raise_nonfinite(jac, penalty)
    return penalty, grad
