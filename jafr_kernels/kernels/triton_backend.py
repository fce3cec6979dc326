"""The Triton backend's kernels (the ``backends.Kernels`` protocol): energies and mean magnitudes from
:mod:`.triton_spectral`, the fused power-2 ratio from :mod:`.triton_ratio`."""
from jafr_kernels.kernels.triton_ratio import ratio, ratio_and_grad, ratio_backward
from jafr_kernels.kernels.triton_spectral import energy, energy_backward, mean_magnitude, mean_magnitude_backward

__all__ = ["energy", "energy_backward", "mean_magnitude", "mean_magnitude_backward", "ratio", "ratio_backward",
           "ratio_and_grad"]
