"""Common corruptions (Hendrycks & Dietterich 2019) in batched torch, with the CIFAR-10-C severity tables.

Every corruption takes images ``x`` of shape (B, C, H, W) with values in [0, 1] (any H, W; C = 1 or 3;
float32 or float64), a severity 1..5 and a ``torch.Generator`` that makes it deterministic, and returns a
tensor of the same shape, dtype and device with values in [0, 1]. Parameters follow ``make_cifar_c.py``
(the published CIFAR-10-C generator): the 15 standard corruptions but frost, and the 4 extra ones
(gaussian_blur, saturate, spatter, speckle_noise). Frost cannot be generated: it blends crops of published
frost photographs (:data:`NOT_GENERATED`). This is a reimplementation, so it reproduces the distributions of
the published files, not their pixels (motion blur and snow there go through ImageMagick, spatter's edges
through OpenCV). When the published ``.npy`` files are on disk, :mod:`jafr_kernels.eval.corruption_data`
reads them instead. :func:`generate` seeds each (corruption, severity) from a hash of the study seed and
the name, so adding or reordering corruptions changes no other corruption's draws.

The frequency character of each corruption is measured, not assumed: :func:`difference_low_freq_ratio`
gives the low-frequency ratio of ``corrupted - clean`` (via :func:`jafr_kernels.low_freq_ratio`), and
:func:`frequency_groups` splits corruptions into low- and high-frequency ones by the rule stated there.
"""
from __future__ import annotations

import hashlib
import math
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

import jafr_kernels as jk

# --------------------------------------------------------------------------- severity tables (CIFAR-10-C)
GAUSSIAN_NOISE = (0.04, 0.06, 0.08, 0.09, 0.10)
SHOT_NOISE = (500, 250, 100, 75, 50)
IMPULSE_NOISE = (0.01, 0.02, 0.03, 0.05, 0.07)
SPECKLE_NOISE = (0.06, 0.10, 0.12, 0.16, 0.20)
GAUSSIAN_BLUR = (0.4, 0.6, 0.7, 0.8, 1.0)
DEFOCUS_BLUR = ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1.0, 0.2), (1.5, 0.1))  # (disk radius, alias sigma)
MOTION_BLUR = ((6, 1.0), (6, 1.5), (6, 2.0), (8, 2.0), (9, 2.5))  # (radius, sigma)
GLASS_BLUR = ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2))  # (sigma, delta, iterations)
ZOOM_BLUR = ((1.00, 1.06, 0.01), (1.00, 1.11, 0.01), (1.00, 1.16, 0.02), (1.00, 1.21, 0.02), (1.00, 1.26, 0.03))
FOG = ((0.2, 3.0), (0.5, 3.0), (0.75, 2.5), (1.0, 2.0), (1.5, 1.75))  # (amount, wibble decay)
CONTRAST = (0.75, 0.5, 0.4, 0.3, 0.15)
BRIGHTNESS = (0.05, 0.1, 0.15, 0.2, 0.3)
SATURATE = ((0.3, 0.0), (0.1, 0.0), (1.5, 0.0), (2.0, 0.1), (2.5, 0.2))  # (scale, shift) of HSV saturation
JPEG_QUALITY = (80, 65, 58, 50, 40)
PIXELATE = (0.95, 0.9, 0.85, 0.75, 0.65)
# (alpha, sigma, affine) as fractions of the image side (make_cifar_c.py uses IMSIZE * these).
ELASTIC = ((0.0, 0.0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
# (layer mean, layer std, zoom, threshold, motion-blur radius, motion-blur sigma, blend)
SNOW = ((0.1, 0.2, 1.0, 0.6, 8, 3, 0.95), (0.1, 0.2, 1.0, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8))
# (layer mean, layer std, blur sigma, threshold, intensity (water) or mud blur sigma (mud), kind)
SPATTER = ((0.62, 0.1, 0.7, 0.7, 0.5, "water"), (0.65, 0.1, 0.8, 0.7, 0.5, "water"), (0.65, 0.3, 1.0, 0.69, 0.5, "water"),
           (0.65, 0.1, 0.7, 0.69, 0.6, "mud"), (0.65, 0.1, 0.5, 0.68, 0.6, "mud"))
WATER_RGB = (175 / 255, 238 / 255, 238 / 255)  # pale turquoise
MUD_RGB = (63 / 255, 42 / 255, 20 / 255)  # mud brown
LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 luma weights (RGB -> grey)


def _check(x: Tensor, severity: int) -> None:
    if not isinstance(x, Tensor) or x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"x must be a floating tensor of shape (B, C, H, W) in [0, 1], got {getattr(x, 'shape', type(x))}")
    if severity not in (1, 2, 3, 4, 5):
        raise ValueError(f"severity must be an integer in 1..5, got {severity!r}")


def _randn(shape, generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=like.dtype, device=like.device)


def _rand(shape, generator, like: Tensor) -> Tensor:
    return torch.rand(shape, generator=generator, dtype=like.dtype, device=like.device)


# --------------------------------------------------------------------------- filtering helpers
def _conv_planes(x: Tensor, kernel: Tensor) -> Tensor:
    """Convolve every plane with one 2-D kernel (reflect padding), keeping the size."""
    b, c, h, w = x.shape
    kh, kw = kernel.shape
    ph, pw = kh // 2, kw // 2
    planes = x.reshape(b * c, 1, h, w)
    # reflect padding needs pad < size; fall back to replicate for large kernels on tiny images
    mode = "reflect" if ph < h and pw < w else "replicate"
    planes = F.pad(planes, (pw, kw - 1 - pw, ph, kh - 1 - ph), mode=mode)
    out = F.conv2d(planes, kernel.to(x)[None, None])
    return out.reshape(b, c, h, w)


def _gaussian_kernel1d(sigma: float, dtype=torch.float64) -> Tensor:
    radius = max(1, int(math.ceil(4.0 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def gaussian_filter(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian smoothing of every plane (reflect padding); ``sigma`` in pixels (0 = identity)."""
    if sigma <= 0:
        return x.clone()
    k = _gaussian_kernel1d(sigma)
    return _conv_planes(_conv_planes(x, k[None, :]), k[:, None])


def _sample(x: Tensor, grid: Tensor, padding_mode: str = "reflection") -> Tensor:
    return F.grid_sample(x, grid.to(x.dtype), mode="bilinear", padding_mode=padding_mode, align_corners=False)


def _identity_grid(b: int, h: int, w: int, like: Tensor) -> Tensor:
    """(B, H, W, 2) grid of pixel centres in grid_sample's normalised coordinates (x first)."""
    ys = (torch.arange(h, dtype=like.dtype, device=like.device) + 0.5) / h * 2 - 1
    xs = (torch.arange(w, dtype=like.dtype, device=like.device) + 0.5) / w * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1).expand(b, h, w, 2)


# --------------------------------------------------------------------------- noise
def gaussian_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Additive white Gaussian noise of standard deviation ``GAUSSIAN_NOISE[s-1]``."""
    _check(x, severity)
    return (x + GAUSSIAN_NOISE[severity - 1] * _randn(x.shape, generator, x)).clamp(0, 1)


def shot_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Poisson (photon) noise: ``Poisson(x * lam) / lam`` with ``lam = SHOT_NOISE[s-1]``."""
    _check(x, severity)
    lam = SHOT_NOISE[severity - 1]
    return (torch.poisson(x.clamp(0, 1) * lam, generator=generator) / lam).clamp(0, 1)


def impulse_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Salt-and-pepper noise: a share ``IMPULSE_NOISE[s-1]`` of entries set to 0 or 1 with equal odds."""
    _check(x, severity)
    amount = IMPULSE_NOISE[severity - 1]
    hit = _rand(x.shape, generator, x) < amount
    salt = _rand(x.shape, generator, x) < 0.5
    return torch.where(hit, salt.to(x.dtype), x)


def speckle_noise(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Multiplicative noise ``x + x * N(0, c^2)`` with ``c = SPECKLE_NOISE[s-1]``."""
    _check(x, severity)
    c = SPECKLE_NOISE[severity - 1]
    return (x + x * c * _randn(x.shape, generator, x)).clamp(0, 1)


# --------------------------------------------------------------------------- blur
def gaussian_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Gaussian blur with ``sigma = GAUSSIAN_BLUR[s-1]`` pixels."""
    _check(x, severity)
    return gaussian_filter(x, GAUSSIAN_BLUR[severity - 1]).clamp(0, 1)


def _disk_kernel(radius: float, alias_sigma: float) -> Tensor:
    size = max(1, int(math.ceil(radius)))
    t = torch.arange(-size - 1, size + 2, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    disk = ((xx**2 + yy**2) <= radius**2).to(torch.float64)
    disk = disk / disk.sum()
    # soften the disk edge with a small 3x3 Gaussian (anti-aliasing), as the published generator does
    g = torch.exp(-0.5 * (torch.arange(-1, 2, dtype=torch.float64) / alias_sigma) ** 2)
    g = g / g.sum()
    disk = F.conv2d(disk[None, None], (g[:, None] * g[None, :])[None, None], padding=1)[0, 0]
    return disk / disk.sum()


def defocus_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Convolution with an anti-aliased disk of radius ``DEFOCUS_BLUR[s-1][0]`` pixels."""
    _check(x, severity)
    radius, alias = DEFOCUS_BLUR[severity - 1]
    return _conv_planes(x, _disk_kernel(radius, alias)).clamp(0, 1)


def _motion(x: Tensor, radius: int, sigma: float, angle: Tensor) -> Tensor:
    """One-sided linear motion blur: ``out(p) = sum_t w_t x(p + t (cos a, sin a))``, t = 0..radius pixels,
    Gaussian tap weights ``w_t ~ exp(-t^2 / 2 sigma^2)``, one angle (radians, y pointing down) per image."""
    b, _, h, w = x.shape
    base = _identity_grid(b, h, w, x)
    taps = torch.arange(radius + 1, dtype=x.dtype, device=x.device)
    weights = torch.exp(-0.5 * (taps / sigma) ** 2)
    weights = weights / weights.sum()
    out = torch.zeros_like(x)
    for t, wt in zip(taps, weights):
        shift = torch.stack([t * torch.cos(angle) * 2 / w, t * torch.sin(angle) * 2 / h], dim=-1)
        out = out + wt * _sample(x, base + shift[:, None, None, :], padding_mode="border")
    return out


def motion_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """One-sided linear motion blur of ``radius`` pixels with Gaussian tap weights, angle U(-45, 45) deg per image."""
    _check(x, severity)
    radius, sigma = MOTION_BLUR[severity - 1]
    angle = (_rand((x.shape[0],), generator, x) * 90 - 45) * math.pi / 180
    return _motion(x, radius, sigma, angle).clamp(0, 1)


def glass_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Gaussian blur, then pixels displaced by up to ``delta`` (random local shuffle) ``iterations`` times, then blur.

    The published generator swaps pixels sequentially; here every pixel reads from a random neighbour in one
    vectorised gather per iteration, which gives the same frosted-glass look.
    """
    _check(x, severity)
    sigma, delta, iterations = GLASS_BLUR[severity - 1]
    b, c, h, w = x.shape
    out = gaussian_filter(x, sigma)
    rows = torch.arange(h, device=x.device)[:, None].expand(h, w)
    cols = torch.arange(w, device=x.device)[None, :].expand(h, w)
    for _ in range(iterations):
        dy = torch.randint(-delta, delta + 1, (b, h, w), generator=generator, device=x.device)
        dx = torch.randint(-delta, delta + 1, (b, h, w), generator=generator, device=x.device)
        src = (rows + dy).clamp(0, h - 1) * w + (cols + dx).clamp(0, w - 1)
        out = out.flatten(2).gather(2, src.flatten(1)[:, None, :].expand(b, c, h * w)).reshape(b, c, h, w)
    return gaussian_filter(out, sigma).clamp(0, 1)


def _zoom(x: Tensor, factor: float) -> Tensor:
    """Zoom into the centre by ``factor`` (>= 1), keeping the size."""
    b, _, h, w = x.shape
    grid = _identity_grid(b, h, w, x) / factor
    return _sample(x, grid)


def zoom_blur(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Average of the image and its centre zooms by factors ``arange(*ZOOM_BLUR[s-1])``."""
    _check(x, severity)
    start, stop, step = ZOOM_BLUR[severity - 1]
    factors = torch.arange(start, stop - 1e-9, step, dtype=torch.float64).tolist()
    out = x.clone()
    for z in factors:
        out = out + _zoom(x, z)
    return (out / (len(factors) + 1)).clamp(0, 1)


# --------------------------------------------------------------------------- weather / digital
def plasma_fractal(batch: int, size: int, decay: float, generator: torch.Generator, *, dtype=torch.float32, device=None) -> Tensor:
    """Diamond-square plasma fractals (B, size, size) normalised to [0, 1]; ``size`` a power of two.

    Each step halves the grid spacing and fills the new points with the mean of their neighbours plus
    uniform noise whose amplitude falls by ``decay`` per step (wraps around, like the published generator).
    """
    if size < 2 or size & (size - 1):
        raise ValueError(f"size must be a power of two >= 2, got {size}")
    m = torch.zeros((batch, size, size), dtype=dtype, device=device)
    step, wibble = size, 100.0

    def noisy_mean(total: Tensor) -> Tensor:
        noise = (torch.rand(total.shape, generator=generator, dtype=dtype, device=device) * 2 - 1) * wibble
        return total / 4 + wibble * noise

    while step >= 2:
        half = step // 2
        corners = m[:, 0::step, 0::step]
        square = corners + corners.roll(-1, dims=1)
        square = square + square.roll(-1, dims=2)
        m[:, half::step, half::step] = noisy_mean(square)
        centres = m[:, half::step, half::step]
        corners = m[:, 0::step, 0::step]
        m[:, 0::step, half::step] = noisy_mean(centres + centres.roll(1, dims=1) + corners + corners.roll(-1, dims=2))
        m[:, half::step, 0::step] = noisy_mean(centres + centres.roll(1, dims=2) + corners + corners.roll(-1, dims=1))
        step, wibble = half, wibble / decay
    m = m - m.amin(dim=(1, 2), keepdim=True)
    return m / m.amax(dim=(1, 2), keepdim=True).clamp_min(1e-12)


def fog(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Adds ``amount * plasma`` (a low-frequency fractal) and rescales: ``(x + a p) * max(x) / (max(x) + a)``."""
    _check(x, severity)
    amount, decay = FOG[severity - 1]
    b, _, h, w = x.shape
    size = 1 << max(1, math.ceil(math.log2(max(h, w))))
    plasma = plasma_fractal(b, size, decay, generator, dtype=x.dtype, device=x.device)[:, None, :h, :w]
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    return ((x + amount * plasma) * peak / (peak + amount)).clamp(0, 1)


def contrast(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Contrast reduction towards each channel's mean: ``(x - m) * c + m``."""
    _check(x, severity)
    c = CONTRAST[severity - 1]
    mean = x.mean(dim=(2, 3), keepdim=True)
    return ((x - mean) * c + mean).clamp(0, 1)


def brightness(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """HSV value ``V -> min(V + c, 1)`` with hue and saturation kept (grayscale: ``x + c``).

    With H and S fixed, RGB is proportional to V, so the change is ``rgb * V'/V`` (a black pixel becomes grey c).
    """
    _check(x, severity)
    c = BRIGHTNESS[severity - 1]
    if x.shape[1] == 1:
        return (x + c).clamp(0, 1)
    v = x.amax(dim=1, keepdim=True)
    v_new = (v + c).clamp(max=1.0)
    scaled = x * v_new / v.clamp_min(1e-12)
    return torch.where(v > 0, scaled, v_new.expand_as(x)).clamp(0, 1)


def saturate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """HSV saturation ``S -> clip(S * a + b, 0, 1)`` with hue and value kept (colour images only).

    With H and V fixed, ``rgb = V - V * S * g(H)``, so the change is ``V - (V - rgb) * S'/S``; a grey pixel
    (S = 0) has hue 0 (red), as in the usual RGB->HSV conversion.
    """
    _check(x, severity)
    if x.shape[1] != 3:
        raise ValueError(f"saturate needs RGB images (C = 3), got C = {x.shape[1]}")
    a, shift = SATURATE[severity - 1]
    v = x.amax(dim=1, keepdim=True)
    s = torch.where(v > 0, (v - x.amin(dim=1, keepdim=True)) / v.clamp_min(1e-12), torch.zeros_like(v))
    s_new = (s * a + shift).clamp(0, 1)
    red_hue = torch.tensor([0.0, 1.0, 1.0], dtype=x.dtype, device=x.device)[None, :, None, None]
    g = torch.where(s > 0, (v - x) / (v * s).clamp_min(1e-12), red_hue)
    return (v - v * s_new * g).clamp(0, 1)


def pixelate(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Box downsampling to ``factor`` of the size, then nearest-neighbour upsampling back."""
    _check(x, severity)
    factor = PIXELATE[severity - 1]
    h, w = x.shape[-2:]
    small = F.interpolate(x, size=(max(1, int(h * factor)), max(1, int(w * factor))), mode="area")
    return F.interpolate(small, size=(h, w), mode="nearest").clamp(0, 1)


def jpeg_compression(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """JPEG encode/decode at quality ``JPEG_QUALITY[s-1]`` (Pillow, on the CPU, per image; 4:2:0 chroma for RGB)."""
    import io

    import numpy as np
    from PIL import Image

    _check(x, severity)
    quality = JPEG_QUALITY[severity - 1]
    images = (x.detach().clamp(0, 1) * 255).round().to(torch.uint8).cpu().permute(0, 2, 3, 1).numpy()
    out = np.empty_like(images)
    for i, img in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(buf, format="JPEG", quality=quality)
        buf.seek(0)
        out[i] = np.asarray(Image.open(buf)).reshape(img.shape)
    return (torch.from_numpy(out).permute(0, 3, 1, 2).to(x.dtype) / 255).to(x.device)


def elastic_transform(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Small random affine warp plus a Gaussian-smoothed random displacement field (fractions of the side)."""
    _check(x, severity)
    alpha, sigma, affine = ELASTIC[severity - 1]
    b, _, h, w = x.shape
    side = min(h, w)
    # random affine: every entry of the 2x3 matrix jitters by U(-affine, affine) in normalised units
    # (1 unit = half the side), so points move by a few pixels, as in the published generator
    jitter = (_rand((b, 2, 3), generator, x) * 2 - 1) * affine
    theta = torch.eye(2, 3, dtype=x.dtype, device=x.device)[None] + jitter
    grid = F.affine_grid(theta, (b, 1, h, w), align_corners=False)
    if alpha > 0 and sigma > 0:
        field = _rand((b, 2, h, w), generator, x) * 2 - 1
        field = gaussian_filter(field, sigma * side) * alpha * side  # displacement in pixels
        scale = torch.tensor([2.0 / w, 2.0 / h], dtype=x.dtype, device=x.device)
        grid = grid + field.permute(0, 2, 3, 1) * scale
    return _sample(x, grid).clamp(0, 1)


def _grey(x: Tensor) -> Tensor:
    """(B, 1, H, W) luma of RGB images (ITU-R 601 weights); grayscale images unchanged."""
    if x.shape[1] == 1:
        return x
    weights = torch.tensor(LUMA, dtype=x.dtype, device=x.device)[None, :, None, None]
    return (x * weights).sum(dim=1, keepdim=True)


def _colour(rgb, x: Tensor) -> Tensor:
    """An RGB colour as a (1, C, 1, 1) tensor for images like ``x`` (its luma for grayscale images)."""
    c = torch.tensor(rgb, dtype=x.dtype, device=x.device)[None, :, None, None]
    return _grey(c) if x.shape[1] == 1 else c


def snow(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Falling snow: a thresholded, zoomed Gaussian layer, motion-blurred, added twice (and rotated 180 degrees).

    With ``(mean, std, zoom, threshold, radius, sigma, blend) = SNOW[s-1]``: one single-channel layer
    ``N(mean, std^2)`` per image is zoomed into its centre by ``zoom``, values below ``threshold`` are zeroed,
    the layer (clipped to [0, 1]) is motion-blurred (``radius`` pixels, Gaussian taps of ``sigma``, angle
    U(-135, -45) degrees); the image is whitened as ``blend x + (1 - blend) max(x, 1.5 grey(x) + 0.5)`` and
    the layer plus its 180-degree rotation are added. The published generator blurs through ImageMagick, so
    the flakes' streak profile differs from it in detail.
    """
    _check(x, severity)
    mean, std, zoom, threshold, radius, sigma, blend = SNOW[severity - 1]
    b, _, h, w = x.shape
    layer = mean + std * _randn((b, 1, h, w), generator, x)
    if zoom != 1:
        layer = _zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer).clamp(0, 1)
    angle = (_rand((b,), generator, x) * 90 - 135) * math.pi / 180
    layer = _motion(layer, radius, sigma, angle)
    whitened = blend * x + (1 - blend) * torch.maximum(x, 1.5 * _grey(x) + 0.5)
    return (whitened + layer + layer.flip(-2, -1)).clamp(0, 1)


def _edge_distance(mask: Tensor, limit: int = 20) -> Tensor:
    """Chessboard distance (pixels, truncated at ``limit``) of every pixel to the nearest edge of a (B, 1, H, W)
    boolean mask; edge pixels are those whose 3x3 neighbourhood holds both values (0 at an edge)."""
    m = mask.to(torch.float32)
    grown = F.max_pool2d(m, 3, 1, 1)
    shrunk = -F.max_pool2d(-m, 3, 1, 1)
    reached = (grown != shrunk).to(torch.float32)
    dist = torch.full_like(m, float(limit))
    dist[reached > 0] = 0
    for d in range(1, limit):
        if bool(reached.all()):
            break
        reached_next = F.max_pool2d(reached, 3, 1, 1)
        dist[(reached_next > 0) & (reached == 0)] = d
        reached = reached_next
    return dist


def _equalise(v: Tensor) -> Tensor:
    """Per-image histogram equalisation: each value becomes the share of the image's values at or below it."""
    flat = v.flatten(1)
    ordered = flat.sort(dim=1).values
    rank = torch.searchsorted(ordered, flat, right=True).to(v.dtype)
    return (rank / flat.shape[1]).reshape(v.shape)


_RELIEF = torch.tensor([[-2.0, -1.0, 0.0], [-1.0, 1.0, 1.0], [0.0, 1.0, 2.0]])  # emboss kernel: lit from bottom right


def spatter(x: Tensor, severity: int, generator: torch.Generator) -> Tensor:
    """Water drops (severities 1-3) or mud (4-5) splashed on the image.

    With ``(mean, std, sigma, threshold, amount, kind) = SPATTER[s-1]``: a single-channel layer
    ``N(mean, std^2)`` per image is blurred with ``sigma`` and thresholded (values below ``threshold`` zeroed).
    *Water*: a relief map is built from the distance of every pixel to the edges of the wet region (truncated
    at 20 px, 3x3 box blur, histogram equalisation, an emboss filter, 3x3 box blur); the liquid
    ``layer * relief`` is scaled to a per-image maximum of ``amount`` and adds pale turquoise
    (175, 238, 238)/255 to the image. *Mud*: the wet mask is blurred with ``sigma2 = amount``, values below
    0.8 are dropped and mud brown (63, 42, 20)/255 replaces the image in proportion to the rest. Grayscale
    images use the colours' luma. The published generator finds the edges with Canny (OpenCV) and uses an
    exact Euclidean distance; here the edges of the thresholded mask and the chessboard distance stand in.
    """
    _check(x, severity)
    mean, std, sigma, threshold, amount, kind = SPATTER[severity - 1]
    b, _, h, w = x.shape
    layer = gaussian_filter(mean + std * _randn((b, 1, h, w), generator, x), sigma)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    wet = layer > 0
    if kind == "mud":
        m = gaussian_filter(wet.to(x.dtype), amount)
        m = torch.where(m < 0.8, torch.zeros_like(m), m)
        return (x * (1 - m) + _colour(MUD_RGB, x) * m).clamp(0, 1)
    box = torch.full((3, 3), 1.0 / 9)
    dist = _conv_planes(_edge_distance(wet).to(x.dtype), box)
    relief = _conv_planes(_conv_planes(_equalise(dist), _RELIEF).clamp(0, 1), box)
    liquid = layer * relief
    peak = liquid.amax(dim=(1, 2, 3), keepdim=True)
    liquid = torch.where(peak > 0, liquid / peak.clamp_min(1e-12), liquid) * amount
    return (x + liquid * _colour(WATER_RGB, x)).clamp(0, 1)


# --------------------------------------------------------------------------- registry
Corruption = Callable[[Tensor, int, torch.Generator], Tensor]

CORRUPTIONS: dict[str, Corruption] = {
    "gaussian_noise": gaussian_noise,
    "shot_noise": shot_noise,
    "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur,
    "glass_blur": glass_blur,
    "motion_blur": motion_blur,
    "zoom_blur": zoom_blur,
    "gaussian_blur": gaussian_blur,
    "fog": fog,
    "brightness": brightness,
    "contrast": contrast,
    "saturate": saturate,
    "elastic_transform": elastic_transform,
    "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
    "snow": snow,
    "spatter": spatter,
}
COLOUR_ONLY = ("saturate",)
# Published CIFAR-10-C corruptions that cannot be generated here, and why.
NOT_GENERATED = {"frost": "blends crops of six published frost photographs, which are not available here"}


def available_corruptions(channels: int) -> list[str]:
    """Names of the corruptions that apply to images with ``channels`` channels (saturate needs colour)."""
    return [n for n in CORRUPTIONS if channels == 3 or n not in COLOUR_ONLY]


def corrupt(x: Tensor, name: str, severity: int, generator: torch.Generator) -> Tensor:
    """Apply corruption ``name`` at ``severity`` (1..5) to (B, C, H, W) images in [0, 1]; same shape and dtype."""
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; choose from {sorted(CORRUPTIONS)}")
    return CORRUPTIONS[name](x, severity, generator)


def corruption_seed(seed: int, name: str, severity: int) -> int:
    """The generator seed of corruption ``name`` at ``severity`` in a study seeded by ``seed``: a hash of the
    three, so it depends on neither the corruption's position in :data:`CORRUPTIONS` nor the other corruptions."""
    digest = hashlib.sha256(f"{int(seed)}/{name}/{int(severity)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generate(x: Tensor, name: str, severity: int, seed: int = 0, batch_size: int = 1000) -> Tensor:
    """``corrupt`` with the generator of :func:`corruption_seed`, in batches of ``batch_size`` images (one
    generator across batches): the one way the study and :func:`frequency_character` draw corruptions."""
    gen = torch.Generator(device=x.device).manual_seed(corruption_seed(seed, name, severity))
    return torch.cat([corrupt(x[i : i + batch_size], name, severity, gen) for i in range(0, x.shape[0], batch_size)])


# --------------------------------------------------------------------------- frequency character
LOW_FREQ_THRESHOLD = 0.5


def difference_low_freq_ratio(clean: Tensor, corrupted: Tensor, cutoff: float = 0.25) -> float:
    """Mean over images of the low-frequency ratio (``r <= cutoff``) of ``corrupted - clean``.

    Images whose difference is exactly zero are left out (their ratio is undefined); returns NaN if all are.
    """
    diff = (corrupted - clean).to(torch.float64)
    ratio = jk.low_freq_ratio(diff, cutoff)
    changed = diff.flatten(1).abs().amax(dim=1) > 0
    if not bool(changed.any()):
        return float("nan")
    return float(ratio[changed].mean())


def frequency_character(
    x: Tensor,
    names: list[str] | None = None,
    *,
    cutoff: float = 0.25,
    seed: int = 0,
    severities=(1, 2, 3, 4, 5),
    corrupted: Optional[Callable[[str, int], Tensor]] = None,
) -> dict[str, dict[str, float]]:
    """Measured low-frequency ratio of ``corrupted - clean`` per corruption and severity.

    Args:
        x: clean images (N, C, H, W) in [0, 1].
        corrupted: ``(name, severity) -> images`` matching ``x`` (e.g. read from published files); default:
            :func:`generate` with ``seed``.

    Returns ``{name: {"1": ratio, ..., "5": ratio, "mean": mean over severities}}`` (JSON-ready).
    """
    names = available_corruptions(x.shape[1]) if names is None else names
    load = corrupted or (lambda name, s: generate(x, name, s, seed))
    out: dict[str, dict[str, float]] = {}
    for name in names:
        per = {str(s): difference_low_freq_ratio(x, load(name, s), cutoff) for s in severities}
        vals = [v for v in per.values() if not math.isnan(v)]
        per["mean"] = sum(vals) / len(vals) if vals else float("nan")
        out[name] = per
    return out


def frequency_groups(character: dict[str, dict[str, float]], threshold: float = LOW_FREQ_THRESHOLD) -> dict[str, list[str]]:
    """Split corruptions by their measured difference spectrum.

    Rule: a corruption is *low-frequency* when, averaged over severities, more than ``threshold`` (default
    one half) of the energy of ``corrupted - clean`` lies in the low band ``r <= cutoff``; otherwise it is
    *high-frequency*. (White noise puts only the band's share of bins, about 5 % at cutoff 0.25, there.)
    """
    low = [n for n, v in character.items() if v["mean"] > threshold]
    high = [n for n, v in character.items() if not v["mean"] > threshold]
    return {"low": low, "high": high}
