"""``python -m jafr_kernels.info``: what was built and which backend serves which device here."""
from __future__ import annotations

import platform

import torch

from jafr_kernels import __version__, backends


def main() -> int:
    print(f"jafr_kernels {__version__}  torch {torch.__version__}  python {platform.python_version()}")
    ext = backends.REGISTRY["cpu"].load()
    if isinstance(ext, str):
        print(f"C++ extension: not available: {ext}")
    else:
        print(f"C++ extension: built (CPU path; CUDA path: {'yes' if ext.built_with_cuda() else 'no'})")
    triton = backends.REGISTRY["triton"].load()
    if isinstance(triton, str):
        print(f"Triton: {triton}")
    else:
        import triton as _triton

        mode = "interpreter (TRITON_INTERPRET=1)" if backends.triton_interpreted() else "compiled"
        print(f"Triton: {_triton.__version__}, {mode}")
    cuda = torch.cuda.is_available()
    print(f"CUDA device: {torch.cuda.get_device_name(0) if cuda else 'none visible'}")
    for device_type, table in backends.availability().items():
        print(f"\n{device_type} tensors:")
        for name, reason in table.items():
            print(f"  {name:<10} {'available' if reason is None else 'no: ' + reason}")
        try:
            print(f"  auto ->     {backends.choose('auto', torch.device(device_type))}")
        except backends.BackendUnavailableError as exc:
            print(f"  auto ->     none ({exc})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
