"""Shared test setup: Triton's interpreter on GPU-less machines, the tolerance table, case generators, and
the op recorder that counts computing ops, kernel launches and host reads of tensors."""
import os

import torch

# Where the Triton tests run: the compiled kernels on a GPU, the interpreter on CPU tensors otherwise
# (JAFR_TRITON_TEST_DEVICE forces one). Triton reads TRITON_INTERPRET when it is first imported, so this
# must run before any test module imports it.
import sys  # noqa: E402

TRITON_TEST_DEVICE = os.environ.get("JAFR_TRITON_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
_TRITON_ALREADY_COMPILED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET", "0") != "1"
if TRITON_TEST_DEVICE == "cpu":
    os.environ["TRITON_INTERPRET"] = "1"


def triton_tests_skip_reason():
    """Why the Triton test modules cannot run here (None if they can)."""
    if TRITON_TEST_DEVICE == "cuda" and not torch.cuda.is_available():
        return "JAFR_TRITON_TEST_DEVICE=cuda but no CUDA device is visible"
    if TRITON_TEST_DEVICE == "cpu" and _TRITON_ALREADY_COMPILED:
        return ("triton was imported before TRITON_INTERPRET=1 was set, so its kernels cannot run on CPU tensors; "
                "run the Triton test files on their own")
    return None

import pytest  # noqa: E402

from jafr_kernels import backends  # noqa: E402

# Relative (normwise: max|a - b| / max|b|) tolerance against the float64 reference, by compute dtype.
# fp32 spectral sums of <= 1e5 terms carry ~1e-7 relative error (double accumulation on the CPU path);
# 1e-5 leaves two orders of margin while any formula slip (a wrong weight, a missing bin) is >= 1e-3.
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-5, torch.bfloat16: 1e-5}

CPU = torch.device("cpu")


def rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """Normwise relative error max|actual - expected| / max|expected|, in float64."""
    actual, expected = actual.detach().cpu().double(), expected.detach().cpu().double()
    scale = expected.abs().max().clamp_min(1e-300)
    return float((actual - expected).abs().max() / scale)


def cpu_backends():
    """Backends that can serve CPU tensors here, Triton excluded (it has its own, slower, interpreter tests)."""
    return [b for b in ("cpu", "reference") if backends.unavailable_reason(b, CPU) is None]


@pytest.fixture(params=["partial", "full", "auto"])
def cpp_path(request, monkeypatch):
    """Force each transform path of the C++ backend."""
    monkeypatch.setenv("JAFR_CPP_PATH", request.param)
    return request.param


class OpRecorder(torch.utils._python_dispatch.TorchDispatchMode):
    """Records every aten op that computes (allocations, views and metadata ops left out) and every host read
    of a tensor value (``_local_scalar_dense``: ``item()``, ``bool()``, ``float()``; ``tolist()``/``numpy()``,
    which bypass the dispatcher on CPU, are caught by :func:`record_ops`). ``paused`` hides a kernel's own ops
    (the Triton interpreter copies tensors to NumPy and back)."""

    NOT_COMPUTING = {
        "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "view", "_unsafe_view", "expand",
        "as_strided", "t", "transpose", "permute", "reshape", "alias", "detach", "lift_fresh", "squeeze", "unsqueeze",
        "select", "slice", "view_as_real", "view_as_complex", "_reshape_alias", "unbind", "split", "chunk",
    }
    HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal"}

    def __init__(self):
        super().__init__()
        self.ops, self.host_reads, self.launches = [], [], []
        self.paused = False

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name.split("::")[-1]
        if not self.paused:
            if name in self.HOST_READS:
                self.host_reads.append(name)
            elif name not in self.NOT_COMPUTING:
                self.ops.append(name)
        return func(*args, **(kwargs or {}))


class _CountedKernel:
    """Stands in for a Triton kernel object: records each launch, pausing the recorder while it runs."""

    def __init__(self, kernel, recorder):
        self.kernel, self.recorder = kernel, recorder

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            fn = getattr(self.kernel, "fn", None)
            self.recorder.launches.append(getattr(fn, "__name__", repr(self.kernel)))
            self.recorder.paused = True
            try:
                return self.kernel[grid](*args, **kwargs)
            finally:
                self.recorder.paused = False

        return launch


@pytest.fixture
def record_ops(monkeypatch):
    """A context-manager factory: ``with record_ops() as rec:`` records ops, Triton launches and host reads."""
    import contextlib

    try:
        from jafr_kernels.kernels import triton_large, triton_packed, triton_ratio, triton_spectral

        kernel_modules = (triton_ratio, triton_packed, triton_large, triton_spectral)
    except Exception:  # no usable Triton here: nothing to wrap
        kernel_modules = ()

    @contextlib.contextmanager
    def make():
        rec = OpRecorder()
        for module in kernel_modules:
            for name in dir(module):
                if name.startswith("_") and name.endswith(("_kernel", "_tuned")):
                    monkeypatch.setattr(module, name, _CountedKernel(getattr(module, name), rec))
        active = [True]
        for method in ("tolist", "numpy"):
            original = getattr(torch.Tensor, method)

            def read(self, *args, _original=original, _method=method, **kwargs):
                if active[0] and not rec.paused:
                    rec.host_reads.append(_method)
                return _original(self, *args, **kwargs)

            monkeypatch.setattr(torch.Tensor, method, read)
        try:
            with rec:
                yield rec
        finally:
            active[0] = False

    return make


class NaNAfter(torch.nn.Module):
    """Wraps a model; its output becomes NaN from the ``n``-th forward on (to force a divergence)."""

    def __init__(self, inner, n):
        super().__init__()
        self.inner, self.n, self.calls = inner, n, 0

    def forward(self, x):
        self.calls += 1
        out = self.inner(x)
        return out * float("nan") if self.calls >= self.n else out


# --------------------------------------------------------------------------- GPU helpers (tests marked gpu)
def count_device_ops(fn):
    """Kernel launches plus memcpy/memset operations on the GPU during fn() (after one warm-up call), from
    torch.profiler, and their names."""
    fn()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    device_events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    return len(device_events), sorted({e.name for e in device_events})


def run_without_sync(fn, warm_up: bool = True):
    """Call ``fn`` under ``set_sync_debug_mode("error")``: any host-device synchronisation inside raises. The
    first call (compilation, autotuning, table caches) is made outside."""
    if warm_up:
        fn()
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        fn()
    finally:
        torch.cuda.set_sync_debug_mode(0)
    torch.cuda.synchronize()
