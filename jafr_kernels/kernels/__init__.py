"""Device kernels and their launchers (Triton). Nothing here knows about autograd: see :mod:`jafr_kernels.ops`.

``triton_spectral`` is imported lazily by :mod:`jafr_kernels.backends`, so a missing or broken Triton never
breaks ``import jafr_kernels``.
"""
