"""Frequency analyses of a classifier: its Jacobian spectrum and its Fourier heat map.

* Jacobian spectrum: the mean ``|rfft2 J|`` of the input gradient ``J = d CE(f(x), y) / dx`` over images
  and channels (:func:`jafr_kernels.mean_magnitude`), mirrored to the full plane and shown centred
  (``fftshift``), its radial profile, and the low-frequency ratio of J (:func:`jafr_kernels.low_freq_ratio`).
  The same quantities for the images themselves give the reference the paper compares against.
* Fourier heat map (Yin et al. 2019): the error rate when a single real Fourier basis image of L2 norm eps
  (random sign per channel) is added at each frequency (u, v) and the result clamped to [0, 1]. Many bases
  are evaluated per forward pass.

Full-plane maps are (H, W) float64 tensors, centred: DC at index (H//2, W//2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import jafr_kernels as jk
from jafr_kernels.reference import RadialBand, hermitian_weight, normalised_radius, squared_radius_index


def input_gradients(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Per-example input gradients of the CE loss (sum over the batch, so each is independent of batch size)."""
    x = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x)
    return grad


def jacobian_low_freq_ratio(model: nn.Module, x: Tensor, y: Tensor, cutoff=0.25, batch_size: int = 256) -> float:
    """Mean low-frequency ratio (r <= cutoff) of the input gradient of the CE, per sample, in eval mode
    (so each sample's J is independent of its batch). The model's train/eval mode is restored."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for i in range(0, x.shape[0], batch_size):
            jac = input_gradients(model, x[i:i + batch_size], y[i:i + batch_size])
            total += float(jk.low_freq_ratio(jac, cutoff).sum())
            count += jac.shape[0]
    finally:
        model.train(was_training)
    return total / count


def half_to_full(half: Tensor, w: int) -> Tensor:
    """Mirror an rfft2-layout map (H, W//2+1) of a Hermitian-symmetric quantity to the full (H, W) plane.

    Uses ``full[u, v] = half[-u mod H, W - v]`` for the columns the half spectrum leaves out.
    """
    h = half.shape[0]
    full = torch.empty((h, w), dtype=half.dtype, device=half.device)
    nh = half.shape[1]
    full[:, :nh] = half
    if w > nh:
        v = torch.arange(nh, w, device=half.device)
        u = (-torch.arange(h, device=half.device)) % h
        full[:, nh:] = half[u][:, w - v]
    return full


def centred(full: Tensor) -> Tensor:
    """``fftshift`` over the last two dims: DC moves to (H//2, W//2)."""
    return torch.fft.fftshift(full, dim=(-2, -1))


def radial_profile(half: Tensor, w: int, nbins: int = 16) -> dict[str, list[float]]:
    """Mean of an rfft2-layout map (H, W//2+1) of W-wide planes in ``nbins`` rings of normalised radius.

    Rings split [0, sqrt(2)] evenly.

    Bins are weighted by their Hermitian multiplicity, so the profile equals that of the full plane.
    Returns ``{"radius": centres, "value": means}`` (empty rings are left out).
    """
    h = half.shape[0]
    if half.shape[1] != w // 2 + 1:
        raise ValueError(f"half must have shape (H, W//2+1) = ({h}, {w // 2 + 1}), got {tuple(half.shape)}")
    r = normalised_radius(h, w, dtype=torch.float64).to(half.device)
    weight = hermitian_weight(w, half.device).expand_as(r)
    edges = torch.linspace(0, math.sqrt(2) + 1e-9, nbins + 1, dtype=torch.float64)
    idx = torch.bucketize(r.flatten().cpu(), edges, right=True) - 1
    vals = half.to(torch.float64).flatten().cpu()
    wts = weight.flatten().cpu()
    radius, value = [], []
    for i in range(nbins):
        sel = idx == i
        if bool(sel.any()):
            radius.append(float((edges[i] + edges[i + 1]) / 2))
            value.append(float((vals[sel] * wts[sel]).sum() / wts[sel].sum()))
    return {"radius": radius, "value": value}


def spectrum_summary(x: Tensor, *, cutoff: float = 0.25, nbins: int = 16) -> dict:
    """Mean magnitude spectrum (centred full plane), radial profile and mean low-frequency ratio of planes ``x``."""
    half = jk.mean_magnitude(x.to(torch.float64)).cpu()
    w = x.shape[-1]
    return {
        "spectrum": centred(half_to_full(half, w)).tolist(),
        "radial": radial_profile(half, w, nbins),
        "low_freq_ratio": float(jk.low_freq_ratio(x.to(torch.float64), cutoff).mean()),
    }


# Cutoffs at which J's low-frequency ratio is always recorded, so a study can add a cutoff without
# re-evaluating its finished runs (keys: cutoff_key).
RATIO_CUTOFFS = tuple(round(0.05 * k, 2) for k in range(1, 21))


def cutoff_key(cutoff: float) -> str:
    """The JSON key of a cutoff: ``"0.25"`` (``%g``)."""
    return f"{float(cutoff):g}"


def low_freq_ratios(x: Tensor, cutoffs) -> dict[float, Tensor]:
    """``{cutoff: (B,) low-frequency ratio of x at r <= cutoff}`` from one float64 FFT: the same bins
    (:class:`RadialBand` limits) and the same value as ``jk.low_freq_ratio(x, cutoff)`` at every cutoff (0 for
    an all-zero sample)."""
    h, w = x.shape[-2:]
    power = torch.fft.rfft2(x.to(torch.float64)).abs().square().sum(dim=1) * hermitian_weight(w, x.device)  # (B, H, W//2+1)
    total = power.flatten(1).sum(dim=1)
    q = squared_radius_index(h, w, x.device)
    out = {}
    for c in cutoffs:
        lo, hi = RadialBand.low(float(c)).q_limits(h, w)
        low = (power * ((q >= lo) & (q <= hi))).flatten(1).sum(dim=1)
        out[c] = torch.where(total > 0, low / total.clamp_min(torch.finfo(torch.float64).tiny), torch.zeros_like(total))
    return out


def jacobian_spectrum(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    cutoff: float = 0.25,
    cutoffs=(),
    batch_size: int = 250,
    nbins: int = 16,
    device="cpu",
) -> dict:
    """Frequency profile of the model's input gradients on images ``x`` (N, C, H, W) with labels ``y`` (N,).

    Returns ``{"spectrum": (H, W) centred mean |F J| as nested lists, "radial": radial profile,
    "low_freq_ratio": mean over images of the low-band (r <= cutoff) energy share of J,
    "ratio_by_cutoff": {cutoff_key: the same at every cutoff of RATIO_CUTOFFS, ``cutoff`` and ``cutoffs``}}``;
    eval-mode model.
    """
    model.eval()
    h, w = x.shape[-2:]
    grid = sorted({float(c) for c in (*RATIO_CUTOFFS, cutoff, *cutoffs)})
    total = torch.zeros((h, w // 2 + 1), dtype=torch.float64)
    sums = dict.fromkeys(grid, 0.0)
    for i in range(0, x.shape[0], batch_size):
        xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
        jac = input_gradients(model, xb, yb).to(torch.float64)
        total += jk.mean_magnitude(jac).cpu() * xb.shape[0]
        for c, ratio in low_freq_ratios(jac, grid).items():
            sums[c] += float(ratio.sum())
    half = total / x.shape[0]
    by_cutoff = {cutoff_key(c): v / x.shape[0] for c, v in sums.items()}
    return {
        "spectrum": centred(half_to_full(half, w)).tolist(),
        "radial": radial_profile(half, w, nbins),
        "low_freq_ratio": by_cutoff[cutoff_key(cutoff)],
        "ratio_by_cutoff": by_cutoff,
    }


def fourier_basis(h: int, w: int, u: Tensor, v: Tensor, *, dtype=torch.float32, device=None) -> Tensor:
    """Real unit-L2-norm Fourier basis images (K, H, W) for frequencies (u[k], v[k]) in rfft2 layout.

    Each is ``irfft2`` of a single spectral spike, i.e. a cosine grating at that frequency (its conjugate
    partner included), normalised to L2 norm 1.
    """
    spec = torch.zeros((u.numel(), h, w // 2 + 1), dtype=torch.complex128, device=device)
    spec[torch.arange(u.numel(), device=device), u.to(device), v.to(device)] = 1.0
    basis = torch.fft.irfft2(spec, s=(h, w))
    norm = basis.flatten(1).norm(dim=1).clamp_min(1e-12)
    return (basis / norm[:, None, None]).to(dtype)


def fourier_heat_map(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    seed: int = 0,
    bases_per_batch: int = 8,
    device="cpu",
    progress: bool = False,
) -> dict:
    """Error rate under single Fourier-basis perturbations of L2 norm ``eps`` (per channel), Yin et al. 2019.

    For every frequency (u, v) of the rfft2 half plane, each image gets ``x + eps * s_c * U_uv`` (random sign
    s_c per image and channel), clamped to [0, 1]; the error rate over the N images is recorded. Images
    ``x`` (N, C, H, W) in [0, 1] are evaluated against ``bases_per_batch`` bases per forward pass.

    Returns ``{"eps": eps, "n": N, "clean_error": e0, "error": (H, W) centred error-rate map as nested
    lists}``. The map is symmetric under (u, v) -> (-u, -v) by construction (the same real basis).
    """
    from tqdm.auto import tqdm

    model.eval()
    n, c, h, w = x.shape
    x, y = x.to(device), y.to(device)
    gen = torch.Generator(device=device).manual_seed(seed)
    uu, vv = torch.meshgrid(torch.arange(h), torch.arange(w // 2 + 1), indexing="ij")
    uu, vv = uu.flatten(), vv.flatten()
    errors = torch.zeros(uu.numel(), dtype=torch.float64)
    with torch.no_grad():
        clean_error = float((model(x).argmax(1) != y).double().mean())
        for start in tqdm(range(0, uu.numel(), bases_per_batch), desc="fourier heat map", disable=not progress, leave=False):
            sl = slice(start, start + bases_per_batch)
            basis = fourier_basis(h, w, uu[sl], vv[sl], dtype=x.dtype, device=device)  # (K, H, W)
            k = basis.shape[0]
            sign = torch.randint(0, 2, (k, n, c, 1, 1), generator=gen, device=device).to(x.dtype) * 2 - 1
            xp = (x[None] + eps * sign * basis[:, None, None]).clamp(0, 1)  # (K, N, C, H, W)
            pred = model(xp.reshape(k * n, c, h, w)).argmax(1).reshape(k, n)
            errors[sl] = (pred != y[None]).double().mean(dim=1).cpu()
    half = errors.reshape(h, w // 2 + 1)
    # columns v = 0 (and v = W/2 for even W) hold both (u, v) and (-u, v), the same real basis measured
    # twice with independent signs: average the two estimates so the map is exactly symmetric
    neg = (-torch.arange(h)) % h
    for col in {0, w // 2} if w % 2 == 0 else {0}:
        half[:, col] = (half[:, col] + half[neg, col]) / 2
    return {"eps": float(eps), "n": n, "clean_error": clean_error, "error": centred(half_to_full(half, w)).tolist()}


def default_heat_map_eps(h: int, w: int) -> float:
    """Yin et al.'s eps = 4.0 on 32x32 planes, scaled to the same per-pixel RMS on H x W (3.5 on 28 x 28)."""
    return 4.0 * math.sqrt(h * w / 1024.0)
