"""Training-step benchmarks through the objective API of :mod:`jafr_kernels.train`.

One timed call is one optimiser step (zero_grad, objective, ``loss.backward()``, ``opt.step()``) on a
fixed random batch, model in train mode:

* ``standard``: ``CE(f(x), y)``;
* ``jafr_double``: ``jafr_objective(..., jacobian_mode="double_backward")`` (the paper's double backprop);
* ``jafr_fd``: ``jafr_objective(..., jacobian_mode="finite_difference")`` (two forwards, two backwards);
* ``gradalign``: ``gradalign_objective`` with the clean batch as the main input (no FGSM attack timed);
* ``penalty``: not a step: ``jk.freq_penalty`` forward+backward on the model's real J (same shape and
  backend as inside the JaFR step), to give the penalty's share of a step.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import jafr_kernels as jk
from jafr_kernels import backends
from benchmarks.calls import run_timed

LAMBDA = 0.1
CUTOFF = 0.25
GRADALIGN_EPS = 8 / 255


def _batch(case, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(case.batch, case.channels, case.size, case.size, generator=gen)
    y = torch.randint(0, case.num_classes, (case.batch,), generator=gen)
    return x.to(case.device), y.to(case.device)


def _sync(device: str):
    return torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)


def make_step(case, seed: int = 0):
    """``(callable, info)``: the zero-argument step to time and a description of how it runs."""
    from jafr_kernels.train import build_model
    from jafr_kernels.train.objective import gradalign_objective, jafr_objective

    torch.manual_seed(seed)  # parameter initialisation of build_model
    model = build_model(case.model, in_channels=case.channels, num_classes=case.num_classes).to(case.device).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x, y = _batch(case, seed)
    sync = _sync(case.device)
    info = {"backend": backends.choose("auto", x.device)}

    if case.method == "penalty":
        xc = x.clone().requires_grad_(True)
        (jac,) = torch.autograd.grad(F.cross_entropy(model(xc), y), xc)
        jac = jac.detach().requires_grad_(True)

        def penalty():
            (g,) = torch.autograd.grad(jk.freq_penalty(jac, CUTOFF), jac)
            sync()
            return g

        info["path"] = f"jk.freq_penalty fwd+bwd on J {tuple(jac.shape)}"
        return penalty, info

    def objective():
        if case.method == "standard":
            return F.cross_entropy(model(x), y)
        if case.method == "jafr_double":
            return jafr_objective(model, x, y, LAMBDA, cutoff=CUTOFF, jacobian_mode="double_backward").loss
        if case.method == "jafr_fd":
            return jafr_objective(model, x, y, LAMBDA, cutoff=CUTOFF, jacobian_mode="finite_difference").loss
        if case.method == "gradalign":
            return gradalign_objective(model, x, y, x, GRADALIGN_EPS, generator=torch.Generator().manual_seed(seed)).loss
        raise ValueError(f"unknown training method {case.method!r}")

    def step():
        opt.zero_grad(set_to_none=True)
        loss = objective()
        loss.backward()
        opt.step()
        sync()
        return loss

    info["path"] = {"standard": "CE backward", "jafr_double": "jafr_objective double_backward",
                    "jafr_fd": "jafr_objective finite_difference", "gradalign": "gradalign_objective"}[case.method]
    return step, info


def test_train_step(benchmark, train_case, bench_rounds):
    fn, info = make_step(train_case)
    run_timed(benchmark, fn, bench_rounds, "train", {**train_case.as_dict(), **info})
