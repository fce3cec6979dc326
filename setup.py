"""Build of the jafr_kernels C++/CUDA extension (``jafr_kernels._C``).

The CUDA path is compiled whenever a CUDA toolkit (nvcc and the CUDA runtime library it links against) and a
CUDA build of torch are present, GPU or not; since no GPU may be visible to infer architectures, explicit
``-gencode`` flags target sm_80 and sm_90 plus PTX for newer cards (override with ``TORCH_CUDA_ARCH_LIST``).
The toolkit is ``CUDA_HOME`` (or ``CUDA_PATH``) when set, else found from the ``nvcc`` on ``PATH``, which may be a
wrapper script or symlink outside the toolkit (see :func:`find_cuda_home`); without one, the CPU path is built
with a one-line warning. Switches: ``JAFR_SKIP_CUDA_BUILD=1`` builds the CPU path only, ``JAFR_FORCE_CUDA=1``
fails instead of dropping CUDA, ``JAFR_PTXAS_VERBOSE=1`` prints ptxas register and spill figures per kernel,
``MAX_JOBS`` limits parallel compilation.
Install with ``pip install --no-build-isolation .`` after torch (torch is not a build requirement on purpose:
the extension must be built against the torch that will run it).
"""
import glob
import os
import re
import shutil
import subprocess

from setuptools import setup

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")
NO_TORCH = ("jafr_kernels builds its extension against the installed torch, and none is importable here. Install "
            "torch first (python -m pip install torch), then build with: python -m pip install --no-build-isolation . "
            "(without --no-build-isolation pip builds in a fresh environment that has no torch)")


def has_cudart(home: str) -> bool:
    """Whether ``home`` is a CUDA toolkit the extension can link: ``bin/nvcc`` and ``libcudart`` in ``lib64``
    or ``lib`` (where torch's build looks for it)."""
    if not os.path.isfile(os.path.join(home, "bin", "nvcc")):
        return False
    return any(glob.glob(os.path.join(home, d, f"libcudart.{ext}")) for d in ("lib64", "lib") for ext in ("so", "a"))


def _nvcc_top(nvcc: str):
    """The toolkit root nvcc reports for itself (``TOP`` in a ``--dryrun``, which compiles nothing), or None."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    found = re.search(r"^#\$ TOP=(.+)$", out.stderr + out.stdout, re.MULTILINE)
    return os.path.realpath(found.group(1).strip()) if found else None


def find_cuda_home():
    """``(root, note)``: the CUDA toolkit to build with, or ``(None, why)``.

    The nvcc is ``$CUDA_HOME/bin/nvcc`` (or ``$CUDA_PATH``) when set, else the one on ``PATH``. It is followed to
    the real toolkit: the folder above it, then the same after resolving symlinks, then the root nvcc itself
    reports (for a wrapper script in ``/usr/local/bin`` or a virtualenv that execs the real nvcc); the first
    that holds ``libcudart`` is taken. Reads and runs ``nvcc --dryrun`` only; builds nothing.
    """
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home:
        nvcc = os.path.join(home, "bin", "nvcc")
        if not os.path.isfile(nvcc):
            return None, f"CUDA_HOME={home} holds no bin/nvcc"
    else:
        nvcc = shutil.which("nvcc")
        if nvcc is None:
            return None, "no nvcc on PATH; set CUDA_HOME to the CUDA toolkit for the CUDA path"
    candidates = [os.path.dirname(os.path.dirname(nvcc)), os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))]
    for root in candidates:
        if has_cudart(root):
            return root, ""
    top = _nvcc_top(nvcc)
    if top is not None and has_cudart(top):
        return top, ""
    return None, f"no libcudart next to the nvcc at {nvcc} or in the toolkit it runs; set CUDA_HOME to the CUDA toolkit for the CUDA path"


def _want_cuda(torch):
    """``(root, "")`` when the CUDA path is to be built, else ``(None, why)``."""
    if os.environ.get("JAFR_SKIP_CUDA_BUILD", "0") == "1":
        return None, "JAFR_SKIP_CUDA_BUILD=1"
    if torch.version.cuda is None:
        return None, "torch is a CPU-only build"
    return find_cuda_home()


def extensions():
    """The extension to build: CPU path always, CUDA path when a toolkit is found (see :func:`find_cuda_home`)."""
    try:
        import torch
    except ImportError:
        raise SystemExit(f"error: {NO_TORCH}") from None
    home, why = _want_cuda(torch)
    if home is None and os.environ.get("JAFR_FORCE_CUDA", "0") == "1":
        raise RuntimeError(f"JAFR_FORCE_CUDA=1 but the CUDA path cannot be built: {why}")
    if home is not None:
        os.environ["CUDA_HOME"] = home  # before cpp_extension is imported: it reads CUDA_HOME once, at import
    from torch.utils import cpp_extension

    cxx = ["-O3", "-fopenmp-simd"]
    # Host logic and op schemas, then one source per dispatch key (distinct stems: ninja names objects by stem).
    sources = [os.path.join("csrc", "spectral.cpp"), os.path.join("csrc", "spectral_cpu.cpp")]
    if home is None:
        quiet = why.startswith(("JAFR_SKIP", "torch is"))
        print(f"jafr_kernels: {'' if quiet else 'warning: '}building the CPU path only: {why}")
        return [cpp_extension.CppExtension("jafr_kernels._C", sources, extra_compile_args={"cxx": cxx})]
    cpp_extension.CUDA_HOME = home
    nvcc = ["-O3", "-DJAFR_WITH_CUDA"]
    if os.environ.get("JAFR_PTXAS_VERBOSE", "0") == "1":
        nvcc.append("-Xptxas=-v")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        nvcc += [
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
            "-gencode=arch=compute_90,code=compute_90",
        ]
    print(f"jafr_kernels: building the CPU and CUDA paths (CUDA_HOME={home})")
    return [
        cpp_extension.CUDAExtension(
            "jafr_kernels._C",
            sources + [os.path.join("csrc", "spectral_cuda.cu")],
            define_macros=[("JAFR_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx + ["-DJAFR_WITH_CUDA"], "nvcc": nvcc},
        )
    ]


if __name__ == "__main__":  # pip's build backend and `python setup.py ...` run it as __main__; tests import it
    _ext = extensions()
    from torch.utils.cpp_extension import BuildExtension

    setup(ext_modules=_ext, cmdclass={"build_ext": BuildExtension})
