// Declarations shared by the host logic (spectral.cpp) and the CUDA per-bin kernels (spectral_cuda.cu).
#pragma once

#include <torch/extension.h>

namespace jafr {

// Per-bin stages over a spectrum `spec` (P, U, V, 2) (real, imag) in the compute dtype, whose rows are the
// frequencies `rows` (U,) int64 and whose columns are v = 0..V-1 of an H x W plane. `weight` (U, V), when
// defined, replaces the radial band [q_lo, q_hi].

// `inv_scale` (P,), when defined, multiplies X of plane p before anything else (the fused ratio works on
// x / max|x| so that energies neither overflow nor underflow in fp32).

// E[p] = sum_{i,v} h_v m |X s_p|^power  ->  (P,)
at::Tensor energy_stage(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H, int64_t W,
                        int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& inv_scale);

// G[p] = grad[p] * scale * (hermitian ? h_v : 1) * m * d|X|^power/dX evaluated at X s_p  ->  (P, U, V, 2)
at::Tensor energy_grad_stage(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H,
                             int64_t W, int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& grad,
                             double scale, bool hermitian, const at::Tensor& inv_scale);

// G[p] = scale * g[i, v] * X / |X| (0 where X = 0), divided by h_v  ->  (P, U, V, 2)
at::Tensor phasor_stage(const at::Tensor& spec, const at::Tensor& g, int64_t W, double scale);

#ifdef JAFR_WITH_CUDA
at::Tensor energy_stage_cuda(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H,
                             int64_t W, int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& inv_scale);
at::Tensor energy_grad_stage_cuda(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H,
                                  int64_t W, int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& grad,
                                  double scale, bool hermitian, const at::Tensor& inv_scale);
at::Tensor phasor_stage_cuda(const at::Tensor& spec, const at::Tensor& g, int64_t W, double scale);
#endif

}  // namespace jafr
