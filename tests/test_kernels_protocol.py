"""Every kernel backend of ``backends.REGISTRY`` provides every method of the ``backends.Kernels`` protocol, with
the protocol's positional parameters in the protocol's order (a backend may add keyword-only options)."""
import inspect

import pytest
import torch

from jafr_kernels import backends

PROTOCOL = {name: inspect.signature(fn) for name, fn in vars(backends.Kernels).items()
            if inspect.isfunction(fn) and not name.startswith("_")}
KERNEL_BACKENDS = [name for name, b in backends.REGISTRY.items() if b.load is not None]


def test_protocol_lists_the_fused_value_and_gradient():
    assert {"energy", "energy_backward", "mean_magnitude", "mean_magnitude_backward", "ratio", "ratio_backward",
            "ratio_and_grad"} <= set(PROTOCOL)


@pytest.mark.parametrize("name", KERNEL_BACKENDS)
def test_backend_fills_the_protocol(name):
    module = backends.REGISTRY[name].load()
    if isinstance(module, str):
        pytest.skip(f"{name} cannot load here: {module}")
    for method, signature in PROTOCOL.items():
        fn = getattr(module, method, None)
        assert callable(fn), f"backend {name!r} lacks {method}"
        want = [p for p in signature.parameters if p != "self"]
        params = inspect.signature(fn).parameters.values()
        got = [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        assert got == want, f"{name}.{method}{inspect.signature(fn)} does not take the protocol's {want}"
        extra = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
        assert not extra, f"{name}.{method} has required keyword-only parameters {extra}"


def test_reference_has_no_kernels_but_serves_everything():
    with pytest.raises(ValueError, match="has no kernels"):
        backends.get("reference")
    assert backends.unavailable_reason("reference", torch.device("cpu")) is None
