"""Adversarial evaluation: FGSM, PGD-k with random restarts (CE or CW-margin loss), optional AutoAttack.

All functions take a classifier ``model`` mapping (B, C, H, W) images in [0, 1] to (B, K) logits, put it in
eval mode (BatchNorm running statistics), and return plain JSON-serialisable dicts of accuracies in [0, 1].
Perturbation budgets are L-infinity radii in pixel units of [0, 1] images (8/255 on CIFAR, 0.1 on
Fashion-MNIST). Attacks come from :mod:`jafr_kernels.attacks`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from jafr_kernels.attacks import fgsm, pgd
from jafr_kernels.train.accuracy import batches as _batches
from jafr_kernels.train.accuracy import clean_accuracy
from jafr_kernels.train.accuracy import predict as _predict


def eps_key(eps: float) -> str:
    """The JSON key of a radius: ``"0.0314"`` style, 4 decimals (enough to tell k/255 apart)."""
    return f"{eps:.4f}"


def robust_correct(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    steps: int,
    alpha: float | None = None,
    restarts: int = 1,
    loss: str = "ce",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Per-example robustness (bool, (B,)) under PGD-``steps`` with ``restarts`` random starts.

    An example counts as robust only if it is classified correctly clean *and* after every restart (the
    worst restart per example), so adding restarts can never raise the measured accuracy. ``alpha``
    defaults to ``eps / 4`` (the authors' evaluation).
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    alpha = eps / 4 if alpha is None else alpha
    correct = _predict(model, x) == y
    for _ in range(restarts):
        x_adv = pgd(model, x, y, eps, alpha, steps, restarts=1, random_start=True, loss=loss, generator=generator)
        correct &= _predict(model, x_adv) == y
    return correct


def evaluate_adversarial(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps_list,
    *,
    steps: int = 10,
    restarts: int = 1,
    alpha_ratio: float = 0.25,
    losses=("ce",),
    cw_eps=None,
    fgsm_eps=None,
    batch_size: int = 250,
    seed: int = 0,
    device="cpu",
    progress: bool = False,
) -> dict:
    """Robust accuracies of ``model`` on (N, C, H, W) images ``x`` in [0, 1] with labels ``y`` (N,).

    Args:
        eps_list: L-inf radii for PGD with the CE loss (and FGSM unless ``fgsm_eps`` is given).
        steps, restarts: PGD-``steps`` x ``restarts`` random restarts, step ``alpha_ratio * eps``.
        losses: ``"ce"`` and/or ``"cw"`` (CW margin, kappa = 50). CE runs at every radius of ``eps_list``;
            CW at ``cw_eps`` (default: every radius).
        fgsm_eps: radii for zero-init FGSM (step 1.25 eps, clipped); default ``eps_list``; ``()`` skips it.
        seed: seeds the random starts (a ``torch.Generator`` on ``device``), so results are reproducible.

    Returns:
        ``{"n": N, "clean": acc, "fgsm": {eps_key: acc}, "pgd_ce": {eps_key: acc}, "pgd_cw": {...},
        "pgd": {"steps", "restarts", "alpha_ratio"}}`` with keys from :func:`eps_key`.
    """
    from tqdm.auto import tqdm

    for loss in losses:
        if loss not in ("ce", "cw"):
            raise ValueError(f"losses must contain only 'ce' and 'cw', got {loss!r}")
    model.eval()
    eps_list = [float(e) for e in eps_list]
    fgsm_eps = eps_list if fgsm_eps is None else [float(e) for e in fgsm_eps]
    cw_eps = eps_list if cw_eps is None else [float(e) for e in cw_eps]
    generator = torch.Generator(device=device).manual_seed(seed)
    jobs = [("fgsm", e) for e in fgsm_eps]
    jobs += [(f"pgd_{loss}", e) for loss in losses for e in (eps_list if loss == "ce" else cw_eps)]
    counts = {job: 0 for job in jobs}
    clean = 0
    n = x.shape[0]
    bar = tqdm(total=n * len(jobs), desc="adversarial", unit="img", disable=not progress, leave=False)
    for xb, yb in _batches(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        clean_ok = _predict(model, xb) == yb
        clean += int(clean_ok.sum())
        for kind, eps in jobs:
            if kind == "fgsm":
                ok = clean_ok & (_predict(model, fgsm(model, xb, yb, eps)) == yb)
            else:
                ok = robust_correct(
                    model, xb, yb, eps, steps=steps, alpha=alpha_ratio * eps, restarts=restarts,
                    loss=kind[4:], generator=generator,
                )
            counts[(kind, eps)] += int(ok.sum())
            bar.update(xb.shape[0])
    bar.close()
    out: dict = {"n": n, "clean": clean / n, "pgd": {"steps": steps, "restarts": restarts, "alpha_ratio": alpha_ratio}}
    for (kind, eps), c in counts.items():
        out.setdefault(kind, {})[eps_key(eps)] = c / n
    return out


def autoattack_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    n_classes: int,
    seed: int = 0,
    batch_size: int = 250,
    device="cpu",
) -> float:
    """Robust accuracy under standard L-inf AutoAttack (``torchattacks.AutoAttack``), per-point worst case.

    Needs the optional ``torchattacks`` package (``pip install torchattacks`` or ``jafr_kernels[attack]``).
    """
    try:
        import torchattacks
    except ImportError as err:
        raise ImportError(
            "AutoAttack evaluation needs the optional package 'torchattacks': pip install torchattacks "
            "(or pip install 'jafr_kernels[attack]')"
        ) from err
    model.eval()
    attack = torchattacks.AutoAttack(model, norm="Linf", eps=eps, version="standard", n_classes=n_classes, seed=seed)
    correct = 0
    for xb, yb in _batches(x, y, batch_size):
        xb, yb = xb.to(device), yb.to(device)
        correct += int((_predict(model, attack(xb, yb)) == yb).sum())
    return correct / max(1, x.shape[0])
