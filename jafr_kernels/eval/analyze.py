"""Frequency analyses of any image classifier: ``jafr analyze`` and the functions it composes.

The analyses of :mod:`jafr_kernels.eval.frequency` (the spectrum of the input gradient J = dCE/dx, its
radial profile and low-frequency ratio, the Fourier heat map) work on any ``nn.Module`` that maps
(N, C, H, W) images in [0, 1] to logits. This module brings a practitioner's model to that form:

* :func:`load_model`: a state dict (with ``arch``: ``torchvision:resnet18``, ``timm:NAME``, a model of this
  package such as ``small_cnn``, or ``package.module:callable`` of your own), a checkpoint dict holding one
  (``state_dict`` / ``model_state_dict`` / ``model``; a ``module.`` prefix from DDP is dropped), a pickled
  module (with ``trust_pickle``), a ``jafr train`` checkpoint or run folder;
* :class:`InputAdapter`: feeds the model images of another layout: a grey image repeated to the model's
  3 input channels, and the model's input normalisation ``(x - mean) / std``. Both sit inside the
  analysed function, so J is the gradient with respect to the image as the dataset stores it;
* :func:`analyze_model` computes everything on images ``x`` with labels ``y`` and :func:`plot_analysis`
  draws it.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Optional, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from jafr_kernels.eval.adversarial import clean_accuracy
from jafr_kernels.eval.frequency import default_heat_map_eps, fourier_heat_map, jacobian_spectrum, spectrum_summary

ARCH_FORMS = "torchvision:NAME, timm:NAME, a jafr model name (small_cnn, preact_resnet18, ...), or package.module:callable"
_STATE_KEYS = ("state_dict", "model_state_dict", "model")


class InputAdapter(nn.Module):
    """``model(normalise(repeat(x)))``: repeats a ``x`` of one channel ``repeat`` times (a grey image for an RGB
    model) and applies ``(x - mean) / std`` per channel (the model's own input normalisation, if any)."""

    def __init__(self, model: nn.Module, repeat: int = 1, mean: Optional[Sequence[float]] = None,
                 std: Optional[Sequence[float]] = None):
        super().__init__()
        self.model, self.repeat = model, int(repeat)
        if (mean is None) != (std is None):
            raise ValueError("give mean and std together (the model's input normalisation), or neither")
        if std is not None and any(s <= 0 for s in std):
            raise ValueError(f"std must be > 0; got {list(std)}")
        self.register_buffer("mean", None if mean is None else torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", None if std is None else torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        if self.repeat > 1:
            x = x.repeat(1, self.repeat, 1, 1)
        if self.mean is not None:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return self.model(x)


def input_channels(model: nn.Module) -> Optional[int]:
    """The input channels of the model's first 2-D convolution (None if it has none)."""
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    return None if conv is None else conv.in_channels


def adapt_input(model: nn.Module, data_channels: int, mean=None, std=None) -> tuple[nn.Module, str]:
    """Wrap ``model`` in an :class:`InputAdapter` when its input channels or normalisation need one; returns
    ``(model, note)`` (note empty when nothing was done). A 1-channel dataset feeds a 3-channel model by
    repetition; any other mismatch raises ``ValueError``."""
    wants = input_channels(model)
    repeat = 1
    if wants is not None and wants != data_channels:
        if data_channels != 1:
            raise ValueError(f"the model takes {wants}-channel images and the dataset has {data_channels} channels; only "
                             "1-channel images are adapted (repeated); wrap the model yourself (see InputAdapter)")
        repeat = wants
    if mean is not None and len(mean) not in (1, data_channels * repeat):
        raise ValueError(f"--mean/--std need 1 or {data_channels * repeat} values (the model's input channels); got {len(mean)}")
    if repeat == 1 and mean is None:
        return model, ""
    notes = []
    if repeat > 1:
        notes.append(f"each 1-channel image is repeated to the model's {repeat} input channels")
    if mean is not None:
        notes.append(f"inputs normalised as (x - {list(mean)}) / {list(std)}")
    return InputAdapter(model, repeat, mean, std), "; ".join(notes) + " (J is taken with respect to the dataset's image)"


def build_arch(arch: str, num_classes: Optional[int] = None, in_channels: int = 3) -> nn.Module:
    """A freshly initialised model (no weights are downloaded) named by ``arch`` (see ARCH_FORMS).

    ``num_classes`` None keeps the constructor's default (1000 for torchvision's ImageNet models);
    ``in_channels`` is used by this package's models only.
    """
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    kind, _, name = arch.partition(":")
    if kind == "torchvision" and name:
        import torchvision

        try:
            return torchvision.models.get_model(name, weights=None, **kwargs)
        except ValueError as exc:
            raise ValueError(f"--arch {arch}: {exc}") from None
    if kind == "timm" and name:
        try:
            import timm
        except ImportError:
            raise ValueError(f"--arch {arch} needs timm (pip install timm)") from None
        return timm.create_model(name, pretrained=False, **kwargs)
    if name:
        if os.getcwd() not in sys.path:  # the `jafr` script does not put the working folder on the path; users expect it
            sys.path.append(os.getcwd())
        try:
            factory = getattr(importlib.import_module(kind), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"--arch {arch}: cannot import {name} from {kind} ({exc}); expected {ARCH_FORMS}") from None
        return factory(**kwargs)
    from jafr_kernels.train.models import MODELS, build_model

    if arch not in MODELS:
        raise ValueError(f"--arch {arch!r} is not known; expected {ARCH_FORMS}")
    return build_model(arch, in_channels, 10 if num_classes is None else num_classes)


def _state_dict(obj) -> Optional[dict]:
    """The tensors-by-name dict inside a loaded object (a state dict or a checkpoint dict holding one), or None."""
    if not isinstance(obj, dict):
        return None
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        prefix = "module."
        if all(k.startswith(prefix) for k in obj):  # saved from a DDP / DataParallel wrapper
            return {k[len(prefix):]: v for k, v in obj.items()}
        return obj
    for key in _STATE_KEYS:
        inner = _state_dict(obj.get(key))
        if inner is not None:
            return inner
    return None


def _with_weights(arch: str, state: dict, num_classes, dataset_classes: int, in_channels: int) -> tuple[nn.Module, str]:
    """Build ``arch`` so that ``state`` loads strictly: the given ``num_classes``, else the dataset's, else the default."""
    tries = [num_classes] if num_classes is not None else [dataset_classes, None]
    errors = []
    for n in tries:
        model = build_arch(arch, n, in_channels)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            errors.append(str(exc).strip().splitlines()[-1].strip() or str(exc).strip().splitlines()[0])
            continue
        return model, f"{arch}" + ("" if n is None else f" with {n} classes")
    raise ValueError(f"the state dict does not fit --arch {arch} ({errors[0]}); check --arch, or give --num-classes")


def load_model(source: str, *, arch: Optional[str] = None, num_classes: Optional[int] = None, dataset_classes: int = 10,
               in_channels: int = 3, trust_pickle: bool = False) -> tuple[nn.Module, str]:
    """Load a classifier for analysis from ``source``; returns ``(model in eval mode, float32, CPU; description)``.

    ``source``: a ``jafr train`` run folder or checkpoint, a state dict or a dict holding one (needs ``arch``), or
    a whole pickled module (needs ``trust_pickle``: unpickling runs code from the file). ``num_classes``: the
    model's output classes (default: the dataset's ``dataset_classes`` if the weights fit, else the constructor's
    default). ``in_channels``: for this package's models built by name.
    """
    from jafr_kernels.train import checkpoint as ckpt
    from jafr_kernels.train.loop import load_trained_model
    from jafr_kernels.train.models import build_model

    if os.path.isdir(source):
        if not os.path.isfile(os.path.join(source, "config.json")):
            raise ValueError(f"{source} is a folder but not a jafr run folder (no config.json); give a model file")
        return load_trained_model(source).float(), f"the jafr run {source}"
    if not os.path.isfile(source):
        raise ValueError(f"{source} does not exist (give a state dict, a pickled model, or a jafr run folder)")
    if ckpt.is_valid(source):  # a jafr checkpoint: its config names the model
        state = ckpt.load_checkpoint(source)
        conf = state.get("config", {})
        from jafr_kernels.train.data import dataset_info

        info = dataset_info(conf.get("dataset", "fashion_mnist"))
        model = build_model(conf.get("model", "small_cnn"), info.channels, info.num_classes)
        model.load_state_dict(state["model"])
        return model.float().eval(), f"the jafr checkpoint {source} ({conf.get('model')})"
    try:
        obj = torch.load(source, map_location="cpu", weights_only=not trust_pickle)
    except Exception as exc:  # noqa: BLE001 - torch raises several kinds for a file it will not unpickle safely
        if not trust_pickle and "weights_only" in str(exc):
            raise ValueError(f"{source} holds more than tensors (a pickled model?); loading it runs code from the file: "
                             "pass --trust-pickle if you trust it, or save model.state_dict() and give --arch") from None
        raise ValueError(f"cannot read {source}: {' '.join(str(exc).split())[:300]}") from None
    if isinstance(obj, nn.Module):
        return obj.float().eval(), f"the pickled {type(obj).__name__} in {source}"
    state = _state_dict(obj)
    if state is None:
        raise ValueError(f"{source} holds no model: neither a module nor a state dict (tensors by name)")
    if arch is None:
        raise ValueError(f"{source} is a state dict: name its model with --arch ({ARCH_FORMS})")
    model, what = _with_weights(arch, state, num_classes, dataset_classes, in_channels)
    return model.float().eval(), what


def analyze_model(model: nn.Module, x: Tensor, y: Tensor, *, cutoff: float = 0.25, heat_map_images: int = 100,
                  heat_map_eps: Optional[float] = None, seed: int = 0, device="cpu", progress: bool = False) -> dict:
    """Clean accuracy, image spectrum, Jacobian spectrum and Fourier heat map of ``model`` on images ``x``
    (N, C, H, W) in [0, 1] with labels ``y`` (N,).

    Returns a JSON-ready dict: ``{"n", "clean", "cutoff", "images": spectrum_summary(x), "jacobian":
    jacobian_spectrum(...), "heat_map": fourier_heat_map(...) on the first heat_map_images images (absent if 0)}``
    (see :mod:`jafr_kernels.eval.frequency` for each part). ``heat_map_eps`` defaults to Yin et al.'s 4.0 scaled to
    the image size.
    """
    model = model.to(device).eval()
    x, y = x.to(next(model.parameters()).dtype), y.long()
    out = {"n": int(x.shape[0]), "clean": clean_accuracy(model, x, y, device=device), "cutoff": float(cutoff),
           "images": spectrum_summary(x, cutoff=cutoff),
           "jacobian": jacobian_spectrum(model, x, y, cutoff=cutoff, device=device)}
    n_heat = min(heat_map_images, x.shape[0])
    if n_heat > 0:
        eps = default_heat_map_eps(*x.shape[-2:]) if heat_map_eps is None else heat_map_eps
        out["heat_map"] = fourier_heat_map(model, x[:n_heat], y[:n_heat], eps, seed=seed, bases_per_batch=16,
                                           device=device, progress=progress)
    return out


FIGURES = ("jacobian_spectra.png", "radial_profile.png", "fourier_heatmap.png")


def plot_analysis(result: dict, out_dir: str, label: str = "model") -> list[str]:
    """Draw an :func:`analyze_model` result into ``out_dir``: the image and Jacobian spectra (one colour scale),
    their radial profiles, and the Fourier heat map; returns the paths written."""
    from jafr_kernels.eval.report import _extent, _plt, _save, spectra_figure

    os.makedirs(out_dir, exist_ok=True)
    images, jac = result["images"], result["jacobian"]
    paths = [os.path.join(out_dir, name) for name in FIGURES]
    spectra_figure([("images", np.asarray(images["spectrum"]), f"{images['low_freq_ratio']:.3f}"),
                    (f"J: {label}", np.asarray(jac["spectrum"]), f"{jac['low_freq_ratio']:.3f}")], paths[0],
                   f"Mean magnitude spectrum over {result['n']} images, centred (DC in the middle)")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, prof, style in (("images", images["radial"], "k--"), (f"J: {label}", jac["radial"], "-")):
        v = np.asarray(prof["value"])
        ax.semilogy(prof["radius"], v / v.sum(), style, marker="o", ms=3, label=name)
    ax.axvline(result["cutoff"], color="grey", lw=0.8, ls=":", label=f"cutoff {result['cutoff']:g}")
    ax.set_xlabel("normalised radius r (1 = Nyquist)")
    ax.set_ylabel("mean |F| in ring (unit sum)")
    ax.set_title(f"Radial profile; J's low-frequency ratio {jac['low_freq_ratio']:.3f} (images {images['low_freq_ratio']:.3f})")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    _save(plt, fig, paths[1])
    if "heat_map" not in result:
        return paths[:2]
    heat = result["heat_map"]
    err = np.asarray(heat["error"])
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(err, extent=_extent(*err.shape), cmap="magma", vmin=0, vmax=1)
    ax.set_xlabel("horizontal frequency (cycles/image)")
    ax.set_ylabel("vertical frequency (cycles/image)")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="error rate")
    ax.set_title(f"Fourier heat map of {label}: error under one basis of L2 norm {heat['eps']:.2f}\n"
                 f"{heat['n']} images, clean error {heat['clean_error']:.2f}, mean error {err.mean():.2f}", fontsize=9)
    _save(plt, fig, paths[2])
    return paths


# --------------------------------------------------------------------------- the command
def register(subparsers) -> None:
    """Add ``jafr analyze`` to the ``jafr`` command."""
    from jafr_kernels.cli import DefaultsFormatter
    from jafr_kernels.train.data import DATASETS

    p = subparsers.add_parser(
        "analyze", help="frequency analyses of any classifier (your own, torchvision, timm): spectra, ratio, heat map",
        description="Analyse a classifier on a dataset's test images: the spectrum of its input gradient J = dCE/dx, the "
        "radial profile and low-frequency ratio of J, and the Fourier heat map; writes analysis.json and figures to --out. "
        "Images are fed in [0, 1]; a 1-channel dataset is repeated to a 3-channel model's input; give the model's "
        "input normalisation with --mean/--std.",
        formatter_class=DefaultsFormatter)
    p.add_argument("model", help="a state dict file (with --arch), a checkpoint dict holding one, a pickled model "
                   "(with --trust-pickle), or a jafr run folder / checkpoint")
    p.add_argument("--arch", default=None, help=f"the model of a state dict: {ARCH_FORMS}; e.g. torchvision:resnet18")
    p.add_argument("--num-classes", type=int, default=None,
                   help="the model's outputs (default: the dataset's classes if the weights fit, else the constructor's default)")
    p.add_argument("--dataset", default="fashion_mnist", choices=DATASETS, help="test images to analyse on")
    p.add_argument("--data-dir", default=None, help="dataset root (Fashion-MNIST: /usr/share/datasets/fashion-mnist by default)")
    p.add_argument("--images", type=int, default=500, help="test images for accuracy and spectra (a seeded random subset)")
    p.add_argument("--heat-map-images", type=int, default=100, help="of those, images for the Fourier heat map (0: skip it)")
    p.add_argument("--heat-map-eps", type=float, default=None, help="L2 norm of the Fourier basis (default 4.0 scaled to the image size)")
    p.add_argument("--cutoff", type=float, default=0.25, help="low-band radius of the ratio (1 = Nyquist)")
    p.add_argument("--mean", type=float, nargs="+", default=None, help="the model's input normalisation: mean per channel")
    p.add_argument("--std", type=float, nargs="+", default=None, help="the model's input normalisation: std per channel")
    p.add_argument("--trust-pickle", action="store_true", help="allow a pickled model (unpickling runs code from the file)")
    p.add_argument("--out", default=None, help="output folder (default: runs/analyze/<model file name>)")
    p.add_argument("--seed", type=int, default=0, help="seed of the image subset and the heat map's signs")
    p.add_argument("--device", default="auto", help="auto (the GPU when one is visible, else the CPU), cpu, cuda, cuda:N")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=main)


def _check(args) -> None:
    import math

    from jafr_kernels.train.data import check_dataset

    for name in ("images", "heat_map_images", "num_classes"):
        value = getattr(args, name)
        if value is not None and value < (1 if name != "heat_map_images" else 0):
            raise ValueError(f"--{name.replace('_', '-')} must be >= {1 if name != 'heat_map_images' else 0}; got {value}")
    if not 0 < args.cutoff <= math.sqrt(2):
        raise ValueError(f"--cutoff must lie in (0, 1.414]; got {args.cutoff}")
    if args.heat_map_eps is not None and not args.heat_map_eps > 0:
        raise ValueError(f"--heat-map-eps must be > 0; got {args.heat_map_eps}")
    if (args.mean is None) != (args.std is None) or (args.mean is not None and len(args.mean) != len(args.std)):
        raise ValueError("--mean and --std go together, with one value per channel each")
    if not os.path.exists(args.model):
        raise ValueError(f"{args.model} does not exist (give a state dict, a pickled model, or a jafr run folder)")
    check_dataset(args.dataset, args.data_dir)


def main(args: argparse.Namespace) -> int:
    """``jafr analyze``: check, load, analyse, write ``analysis.json`` and the figures, print the headline."""
    from jafr_kernels.eval.study import eval_set
    from jafr_kernels.train.data import dataset_info
    from jafr_kernels.train.device import choose_device

    _check(args)
    device = choose_device(args.device)
    info = dataset_info(args.dataset)
    model, what = load_model(args.model, arch=args.arch, num_classes=args.num_classes, dataset_classes=info.num_classes,
                             in_channels=info.channels, trust_pickle=args.trust_pickle)
    model, note = adapt_input(model, info.channels, args.mean, args.std)
    stem = os.path.splitext(os.path.basename(os.path.normpath(args.model)))[0]
    out = args.out or os.path.join("runs", "analyze", stem)
    print(f"analysing {what} on {args.images} {info.name} test images ({device})" + (f"; {note}" if note else ""))
    x, y, _ = eval_set(info.name, args.data_dir, args.images, args.seed)
    with torch.no_grad():
        outputs = model.to(device)(x[:1].to(device)).shape[-1]
    if outputs < info.num_classes:
        raise ValueError(f"the model has {outputs} outputs but {info.name} has {info.num_classes} classes; give --num-classes")
    if outputs != info.num_classes:
        print(f"note: the model has {outputs} outputs for {info.num_classes} classes; J is that of the CE over all {outputs} logits")
    result = analyze_model(model, x, y, cutoff=args.cutoff, heat_map_images=args.heat_map_images,
                           heat_map_eps=args.heat_map_eps, seed=args.seed, device=device, progress=not args.no_progress)
    result["model"] = {"source": os.path.abspath(args.model), "what": what, "input": note, "outputs": outputs}
    result["dataset"] = info.name
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "analysis.json"), "w") as f:
        json.dump(result, f, indent=1)
    figures = plot_analysis(result, out, label=stem)
    heat = result.get("heat_map")
    print(f"clean accuracy {100 * result['clean']:.1f}% ({result['n']} images); J low-freq ratio "
          f"{result['jacobian']['low_freq_ratio']:.3f} at cutoff {args.cutoff:g} (images {result['images']['low_freq_ratio']:.3f})"
          + (f"; Fourier heat map mean error {float(np.mean(heat['error'])):.3f} (eps {heat['eps']:.2f}, {heat['n']} images)" if heat else ""))
    print(f"wrote {os.path.join(out, 'analysis.json')} and {', '.join(os.path.basename(p) for p in figures)}")
    return 0

