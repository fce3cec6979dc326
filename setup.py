"""Build of the jafr_kernels C++/CUDA extension (``jafr_kernels._C``).

The CUDA path is compiled whenever nvcc and a CUDA build of torch are present, GPU or not; since no GPU may
be visible to infer architectures, explicit ``-gencode`` flags target sm_80 and sm_90 plus PTX for newer cards
(override with ``TORCH_CUDA_ARCH_LIST``). Switches: ``JAFR_SKIP_CUDA_BUILD=1`` builds the CPU path only,
``JAFR_FORCE_CUDA=1`` fails instead of silently dropping CUDA, ``JAFR_PTXAS_VERBOSE=1`` prints ptxas register and
spill figures per kernel, ``MAX_JOBS`` limits parallel compilation.
Install with ``pip install --no-build-isolation .`` after torch (torch is not a build requirement on purpose:
the extension must be built against the torch that will run it).
"""
import os
import shutil

from setuptools import setup

import torch
from torch.utils import cpp_extension

CSRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "csrc")


def _cuda_toolkit():
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and os.path.exists(os.path.join(home, "bin", "nvcc")):
        return home
    nvcc = shutil.which("nvcc")
    return os.path.dirname(os.path.dirname(nvcc)) if nvcc else None


def _want_cuda():
    if os.environ.get("JAFR_SKIP_CUDA_BUILD", "0") == "1":
        return False, "JAFR_SKIP_CUDA_BUILD=1"
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if _cuda_toolkit() is None:
        return False, "nvcc not found (set CUDA_HOME)"
    return True, ""


def extensions():
    use_cuda, why = _want_cuda()
    if not use_cuda and os.environ.get("JAFR_FORCE_CUDA", "0") == "1":
        raise RuntimeError(f"JAFR_FORCE_CUDA=1 but the CUDA path cannot be built: {why}")
    cxx = ["-O3", "-fopenmp-simd"]
    # Host logic and op schemas, then one source per dispatch key (distinct stems: ninja names objects by stem).
    sources = [os.path.join("csrc", "spectral.cpp"), os.path.join("csrc", "spectral_cpu.cpp")]
    if not use_cuda:
        print(f"jafr_kernels: building the CPU path only ({why})")
        return [cpp_extension.CppExtension("jafr_kernels._C", sources, extra_compile_args={"cxx": cxx})]
    os.environ.setdefault("CUDA_HOME", _cuda_toolkit())
    nvcc = ["-O3", "-DJAFR_WITH_CUDA"]
    if os.environ.get("JAFR_PTXAS_VERBOSE", "0") == "1":
        nvcc.append("-Xptxas=-v")
    if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
        nvcc += [
            "-gencode=arch=compute_80,code=sm_80",
            "-gencode=arch=compute_90,code=sm_90",
            "-gencode=arch=compute_90,code=compute_90",
        ]
    print(f"jafr_kernels: building the CPU and CUDA paths (CUDA_HOME={os.environ['CUDA_HOME']})")
    return [
        cpp_extension.CUDAExtension(
            "jafr_kernels._C",
            sources + [os.path.join("csrc", "spectral_cuda.cu")],
            define_macros=[("JAFR_WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx + ["-DJAFR_WITH_CUDA"], "nvcc": nvcc},
        )
    ]


setup(ext_modules=extensions(), cmdclass={"build_ext": cpp_extension.BuildExtension})
