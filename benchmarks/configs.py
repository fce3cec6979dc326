"""Benchmark configurations: small dataclasses and the grids built from them.

A :class:`Suite` says where and how hard to run (device, smoke or full, dtypes); the ``*_cases``
functions turn it into the list of cases each benchmark file is parametrised with. Pruning of the CPU
grid (so the full CPU suite stays within 15 minutes on 2 cores) happens here and nowhere else:

* batch 256 only for planes up to 64x64; 224x224 planes only at batch 32;
* cutoff 0.5 only for the eager reference and the extension backends: the reference (eager or compiled)
  always runs a full ``rfft2`` and a full-size mask multiply, so its cost does not depend on the cutoff,
  and ``torch.compile`` of it is timed at cutoff 0.25 only (each compile costs seconds on this machine);
* the official formulation has no cutoff, so it is timed once per shape;
* Triton on CPU tensors (``TRITON_INTERPRET=1``) is an interpreter for tests, not a backend to time.

The ``--gpu`` suite drops the pruning, adds bf16 and the (4096, 3, 32, 32) copy-bandwidth case.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Optional

import torch

# Ops of the kernel benchmarks: the public functions of jafr_kernels they call.
KERNEL_OPS = ("freq_penalty", "freq_penalty_official", "low_freq_ratio", "spectral_energy")
MODES = ("fwd", "fwd+bwd")
EXTENSION_BACKENDS = ("triton", "cuda", "cpu")

# The shape of the headline targets (CIFAR-sized Jacobians of a batch of 256).
TARGET_SHAPE = (256, 3, 32, 32)
GPU_BANDWIDTH_SHAPE = (4096, 3, 32, 32)
TARGET_CUTOFF = 0.25

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp64": torch.float64}


@dataclass(frozen=True)
class Suite:
    """Where and how thoroughly to run: device ("cpu" or "cuda"), smoke (tiny grid, few rounds), dtypes."""

    device: str = "cpu"
    smoke: bool = False
    dtypes: tuple[str, ...] = ("fp32",)

    @classmethod
    def make(cls, *, gpu: bool, smoke: bool) -> "Suite":
        return cls(device="cuda" if gpu else "cpu", smoke=smoke, dtypes=("fp32", "bf16") if gpu and not smoke else ("fp32",))

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)


@dataclass(frozen=True)
class KernelCase:
    """One timed kernel call.

    ``impl`` is a backend name (``"reference"`` = the eager pure-PyTorch reference), ``"compiled"``
    (``torch.compile`` of the reference), ``"authors"`` (eager port of the authors' official-penalty code)
    or ``"copy"`` (``dst.copy_(src)`` of the input: the read-J-write-dJ memory floor).
    """

    op: str
    mode: str
    impl: str
    shape: tuple[int, int, int, int]
    cutoff: Optional[float] = TARGET_CUTOFF
    dtype: str = "fp32"
    device: str = "cpu"

    @property
    def id(self) -> str:
        b, c, h, w = self.shape
        cut = "" if self.cutoff is None else f"-c{self.cutoff:g}"
        return f"{self.op}-{self.mode}-{self.impl}-{b}x{c}x{h}x{w}{cut}-{self.dtype}"

    @property
    def input_bytes(self) -> int:
        b, c, h, w = self.shape
        return b * c * h * w * DTYPES[self.dtype].itemsize

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["input_bytes"] = self.input_bytes
        return d


@dataclass(frozen=True)
class TrainCase:
    """One timed training step: ``method`` one of :data:`TRAIN_METHODS` (``penalty``: the penalty's
    forward+backward alone on the model's J)."""

    model: str
    method: str
    batch: int
    size: int
    channels: int
    num_classes: int = 10
    device: str = "cpu"
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @property
    def variant(self) -> str:
        """``"fp32"``, or the options joined: ``"bf16+channels_last+compile"``."""
        return "+".join(f for f in ("bf16", "channels_last", "compile") if getattr(self, f)) or "fp32"

    @property
    def id(self) -> str:
        return f"{self.model}-{self.method}-b{self.batch}-{self.size}px-{self.variant}"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class MemoryCase:
    """Peak extra memory of one ``freq_penalty`` forward+backward."""

    impl: str
    shape: tuple[int, int, int, int]
    formulation: str = "ratio"
    cutoff: float = TARGET_CUTOFF
    dtype: str = "fp32"
    device: str = "cpu"

    @property
    def id(self) -> str:
        b, c, h, w = self.shape
        return f"{self.formulation}-{self.impl}-{b}x{c}x{h}x{w}-{self.dtype}"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d


@dataclass(frozen=True)
class Rounds:
    """pytest-benchmark calibration: at least ``min_rounds`` rounds, at most about ``max_time`` seconds."""

    min_rounds: int
    max_time: float
    warmup_calls: int = 2


def rounds(suite: Suite) -> Rounds:
    return Rounds(min_rounds=1, max_time=0.0, warmup_calls=1) if suite.smoke else Rounds(min_rounds=5, max_time=0.2)


# --------------------------------------------------------------------------- grids
def available_backends(device: torch.device) -> list[str]:
    """Extension backends that can serve ``device`` (Triton only on a real GPU)."""
    from jafr_kernels import backends

    names = []
    for name in EXTENSION_BACKENDS:
        if name == "triton" and device.type != "cuda":
            continue
        if backends.unavailable_reason(name, device) is None:
            names.append(name)
    return names


def kernel_shapes(suite: Suite) -> list[tuple[int, int, int, int]]:
    if suite.smoke:
        return [(4, 1, 28, 28), (4, 3, 32, 32)]
    shapes = []
    for b in (32, 256):
        for c in (1, 3):
            for s in (28, 32, 64, 224):
                if suite.device == "cpu" and b == 256 and s > 64:
                    continue  # pruned on CPU: 224^2 planes only at batch 32
                shapes.append((b, c, s, s))
    return shapes


def kernel_cases(suite: Suite) -> list[KernelCase]:
    """The kernel grid: every op x mode x impl x shape x cutoff x dtype that the suite runs."""
    dev = suite.torch_device
    backends = available_backends(dev)
    cutoffs = (TARGET_CUTOFF,) if suite.smoke else (0.25, 0.5)
    compiled = not suite.smoke  # compiling takes ~20 s on a cold CPU: not in the CI smoke run
    cases = []
    for dtype in suite.dtypes:
        for op in KERNEL_OPS:
            for mode in MODES:
                for shape in kernel_shapes(suite):
                    if op == "freq_penalty_official":
                        # the authors' code calls torch.fft directly, which rejects bf16
                        authors = ["authors"] if dtype in ("fp32", "fp64") else []
                        impls = ["reference"] + authors + (["compiled"] if compiled else []) + backends
                        cases += [KernelCase(op, mode, i, shape, None, dtype, suite.device) for i in impls]
                        continue
                    for cut in cutoffs:
                        impls = ["reference"] + backends
                        if compiled and (cut == TARGET_CUTOFF or suite.device == "cuda"):
                            impls.insert(1, "compiled")
                        cases += [KernelCase(op, mode, i, shape, cut, dtype, suite.device) for i in impls]
    # Memory floors: copy the input once (read J, write dJ) at every shape, and the GPU bandwidth shape.
    floor_shapes = list(kernel_shapes(suite))
    if suite.device == "cuda" and not suite.smoke:
        floor_shapes.append(GPU_BANDWIDTH_SHAPE)
        for b in backends:
            cases.append(KernelCase("freq_penalty", "fwd+bwd", b, GPU_BANDWIDTH_SHAPE, TARGET_CUTOFF, "fp32", suite.device))
        cases.append(KernelCase("freq_penalty", "fwd+bwd", "reference", GPU_BANDWIDTH_SHAPE, TARGET_CUTOFF, "fp32", suite.device))
    for dtype in suite.dtypes:
        cases += [KernelCase("copy", "fwd+bwd", "copy", s, None, dtype, suite.device) for s in floor_shapes]
    return cases


# The headline cases of ``python -m benchmarks --gpu --quick``: freq_penalty forward+backward, fp32 and bf16.
QUICK_SHAPES = ((256, 3, 32, 32), (4096, 3, 32, 32), (256, 1, 28, 28), (256, 3, 64, 64), (32, 3, 224, 224))
# "eager": the penalty a user writes by hand (rfft2, |X|^2, a precomputed weighted mask, sums);
# "eager_compiled": torch.compile of that function; "reference": jk.freq_penalty(backend="reference").
QUICK_BASELINES = ("eager", "eager_compiled", "reference")
# Where a fused call's time goes (fp32 only): "autograd_floor" is an autograd.Function with empty forward and
# backward (allocations only) under the same mean + autograd.grad, the least any eager penalty pays per call;
# "<backend>_kernels" calls the backend's fused ratio forward and backward directly (no autograd, no API).
QUICK_PARTS = ("autograd_floor", "triton_kernels", "cuda_kernels")
# The transform paths, forced one at a time, fp32: impl "<backend>_kernels@<path>" calls the backend's ratio
# forward and backward directly on that path. At (32, 3, 224, 224) and two cutoffs, the crossover between the
# band-limited GEMM path and cuFFT (Triton's tiled GEMM path does not serve cutoff 0.5 at 224: 113 band rows,
# wider than its accumulators); at (4096, 3, 32, 32), Triton's two small-plane paths ("dft": one sample per
# program; "packed": several, with packed factors), which decides the automatic choice between them.
QUICK_LARGE_SHAPE = (32, 3, 224, 224)
QUICK_SMALL_SHAPE = (4096, 3, 32, 32)
QUICK_PATH_CASES = tuple((QUICK_LARGE_SHAPE, *case) for case in (
    ("triton", "gemm", 0.25), ("triton", "fft", 0.25), ("triton", "fft", 0.5), ("cuda", "partial", 0.25),
    ("cuda", "full", 0.25), ("cuda", "partial", 0.5), ("cuda", "full", 0.5))) + (
    (QUICK_SMALL_SHAPE, "triton", "dft", 0.25), (QUICK_SMALL_SHAPE, "triton", "packed", 0.25))


def quick_cases(suite: Suite) -> list[KernelCase]:
    """The quick grid: every headline shape x dtype x (baselines, GPU backends, copy floor).

    The ``torch.compile`` baselines (fp32 only) come last: each one compiles for seconds, so under a time
    limit (``--time-limit``) they are the cases that drop out, not the targets' cases."""
    backends = available_backends(suite.torch_device) if suite.device == "cuda" else ["triton", "cuda"]
    cases, compiled = [], []
    for dtype in ("fp32", "bf16"):
        for shape in QUICK_SHAPES:
            parts = [p for p in QUICK_PARTS if p == "autograd_floor" or p.removesuffix("_kernels") in backends]
            for impl in QUICK_BASELINES + tuple(backends) + tuple(parts if dtype == "fp32" else ()) + ("copy",):
                case = KernelCase("freq_penalty", "fwd+bwd", impl, shape, TARGET_CUTOFF, dtype, suite.device)
                if impl != "eager_compiled":
                    cases.append(case)
                elif dtype == "fp32":
                    compiled.append(case)
    for shape, backend, path, cutoff in QUICK_PATH_CASES:
        if backend in backends:
            cases.append(KernelCase("freq_penalty", "fwd+bwd", f"{backend}_kernels@{path}", shape, cutoff,
                                    "fp32", suite.device))
    return cases + compiled


def profile_cases(suite: Suite) -> list[KernelCase]:
    """Where the time goes at the headline shape: eager reference and every extension backend."""
    shape = (4, 3, 32, 32) if suite.smoke else TARGET_SHAPE
    impls = ["reference"] + available_backends(suite.torch_device)
    return [KernelCase("freq_penalty", "fwd+bwd", i, shape, TARGET_CUTOFF, "fp32", suite.device) for i in impls]


# Training steps timed side by side (``benchmarks/bench_training.py`` says what each one is).
TRAIN_METHODS = ("standard", "jafr_double", "jafr_fd", "jafr_fd_lazy", "jafr_fd_sub", "gradalign", "penalty")
LAZY_EVERY = 4  # jafr_fd_lazy: the JaFR term every 4th step (one timed call = 4 steps, reported per step)
SUB_FRACTION = 0.25  # jafr_fd_sub: the JaFR term on a quarter of each batch


# GPU step options timed on PreAct ResNet-18 for the steps users choose between (fp32 has every method).
GPU_STEP_VARIANTS = ({"bf16": True, "channels_last": True}, {"bf16": True, "channels_last": True, "compile": True})
GPU_VARIANT_METHODS = ("standard", "jafr_fd", "jafr_fd_lazy", "jafr_fd_sub")


def _train_models(suite: Suite) -> list[tuple[str, int, int, int]]:
    """(model, batch, size, channels) per suite."""
    if suite.smoke:
        return [("small_cnn", 4, 28, 1), ("preact_resnet18", 2, 32, 3)]
    if suite.device == "cpu":
        # the small CNN also at the batch it trains with (jafr train, the study), where a pass is not host-bound
        return [("small_cnn", 32, 28, 1), ("small_cnn", 128, 28, 1), ("preact_resnet18", 32, 32, 3)]
    return [("small_cnn", 256, 28, 1), ("preact_resnet18", 128, 32, 3)]


def train_cases(suite: Suite) -> list[TrainCase]:
    models = _train_models(suite)
    cases = [TrainCase(m, meth, b, s, c, device=suite.device) for m, b, s, c in models for meth in TRAIN_METHODS]
    if suite.device == "cuda" and not suite.smoke:
        m, b, s, c = models[-1]
        cases += [TrainCase(m, meth, b, s, c, device=suite.device, **v) for v in GPU_STEP_VARIANTS
                  for meth in GPU_VARIANT_METHODS]
    return cases


def profile_train_cases(suite: Suite) -> list[TrainCase]:
    """One finite-difference JaFR step per model, split by the profiler (penalty vs the rest, host vs device)."""
    return [TrainCase(m, "jafr_fd", b, s, c, device=suite.device) for m, b, s, c in _train_models(suite)]


def memory_cases(suite: Suite) -> list[MemoryCase]:
    shapes = [(4, 3, 32, 32)] if suite.smoke else [TARGET_SHAPE, (32, 3, 224, 224)]
    impls = ["reference"] + available_backends(suite.torch_device)
    cases = []
    for shape in shapes:
        for formulation in ("ratio", "official"):
            cases += [MemoryCase(i, shape, formulation, device=suite.device) for i in impls]
    return cases


@dataclass
class Meta:
    """What every result file is tagged with."""

    device: str
    device_name: str
    torch: str
    triton: Optional[str]
    threads: int
    git_revision: str
    git_dirty: bool
    smoke: bool
    created: str
    backends: dict = field(default_factory=dict)
    dtypes: list = field(default_factory=list)
