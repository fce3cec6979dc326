"""L-infinity attacks shared by adversarial training and evaluation, called as ``attack(model, x, y)``.

Inputs are images in [0, 1]; every returned ``x_adv`` satisfies ``|x_adv - x| <= eps`` and ``0 <= x_adv <= 1``.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def cw_margin_loss(logits: Tensor, y: Tensor, kappa: float = 50.0, reduction: str = "mean") -> Tensor:
    """Carlini-Wagner margin as a loss to *maximise*: ``-relu(z_y - max_{j != y} z_j + kappa)``.

    This is the authors' evaluation loss (kappa = 50): it rises as the true-class margin shrinks.
    """
    z_y = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf"))
    per_sample = -F.relu(z_y - others.amax(dim=1) + kappa)
    return per_sample.mean() if reduction == "mean" else per_sample


def _attack_loss(logits: Tensor, y: Tensor, loss: str, reduction: str = "mean") -> Tensor:
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction=reduction)
    if loss == "cw":
        return cw_margin_loss(logits, y, reduction=reduction)
    raise ValueError(f"loss must be 'ce' or 'cw', got {loss!r}")


def _project(x_adv: Tensor, x: Tensor, eps: float) -> Tensor:
    return torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0.0, 1.0)


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    alpha: float,
    steps: int,
    *,
    restarts: int = 1,
    random_start: bool = True,
    loss: str = "ce",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Projected gradient ascent in the L-inf ball of radius ``eps`` (signed steps of size ``alpha``).

    With ``restarts > 1`` each example keeps the restart with the highest cross-entropy (as in the authors'
    evaluation, whatever ``loss`` drives the ascent). ``steps=1, alpha=1.25*eps, random_start=False`` is
    zero-init FGSM. The model's train/eval mode is left as the caller set it.
    """
    if eps < 0 or alpha < 0 or steps < 0 or restarts < 1:
        raise ValueError(f"need eps, alpha, steps >= 0 and restarts >= 1; got eps={eps}, alpha={alpha}, steps={steps}, restarts={restarts}")
    x = x.detach()
    best, best_loss = x, None
    for _ in range(restarts):
        if random_start:
            noise = torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            delta = (noise * 2 - 1) * eps
        else:
            delta = torch.zeros_like(x)
        x_adv = _project(x + delta, x, eps)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            with torch.enable_grad():
                objective = _attack_loss(model(x_adv), y, loss)
            (grad,) = torch.autograd.grad(objective, x_adv)
            x_adv = _project(x_adv.detach() + alpha * grad.sign(), x, eps)
        if restarts == 1:
            return x_adv.detach()
        with torch.no_grad():  # keep the better restart per example: torch.where, no boolean indexing (a sync)
            ce = F.cross_entropy(model(x_adv), y, reduction="none")
        better = ce > best_loss if best_loss is not None else torch.ones_like(ce, dtype=torch.bool)
        best = torch.where(better.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
        best_loss = ce if best_loss is None else torch.where(better, ce, best_loss)
    return best.detach()


def fgsm(model: nn.Module, x: Tensor, y: Tensor, eps: float, alpha: float | None = None) -> Tensor:
    """Zero-init FGSM: one signed step of ``alpha`` (default 1.25 * eps, as in fast adversarial training), clipped to eps."""
    return pgd(model, x, y, eps, 1.25 * eps if alpha is None else alpha, 1, random_start=False)
