// CUDA per-bin stages of the C++ backend: the same maths as the CPU loops in spectral.cpp, from
// spectral_math.h, with the radial mask generated from bin indices in registers.
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>

#include "spectral.h"
#include "spectral_math.h"

namespace jafr {
namespace {

constexpr int kThreads = 256;

// One block per plane: each thread accumulates a strided subset of bins, then a shared-memory tree reduction.
template <typename scalar_t>
__global__ void energy_kernel(const scalar_t* __restrict__ spec, const int64_t* __restrict__ rows,
                              const scalar_t* __restrict__ weight, int64_t U, int64_t V, int64_t H, int64_t W,
                              int64_t q_lo, int64_t q_hi, int power, const scalar_t* __restrict__ inv_scale,
                              scalar_t* __restrict__ out) {
  __shared__ double partial[kThreads];
  const int64_t p = blockIdx.x;
  const scalar_t* sp = spec + p * U * V * 2;
  const scalar_t f = inv_scale ? inv_scale[p] : scalar_t(1);
  double acc = 0.0;
  for (int64_t k = threadIdx.x; k < U * V; k += blockDim.x) {
    const int64_t i = k / V, v = k % V;
    const scalar_t m = mask_value<scalar_t>(rows[i], v, H, W, q_lo, q_hi, weight ? weight + k : nullptr);
    if (m != scalar_t(0)) acc += static_cast<double>(m * hermitian_weight<scalar_t>(v, W) * bin_energy(f * sp[2 * k], f * sp[2 * k + 1], power));
  }
  partial[threadIdx.x] = acc;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) partial[threadIdx.x] += partial[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[p] = static_cast<scalar_t>(partial[0]);
}

template <typename scalar_t>
__global__ void energy_grad_kernel(const scalar_t* __restrict__ spec, const int64_t* __restrict__ rows,
                                   const scalar_t* __restrict__ weight, int64_t P, int64_t U, int64_t V, int64_t H,
                                   int64_t W, int64_t q_lo, int64_t q_hi, int power, const scalar_t* __restrict__ grad,
                                   scalar_t scale, bool hermitian, const scalar_t* __restrict__ inv_scale,
                                   scalar_t* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= P * U * V) return;
  const int64_t k = idx % (U * V), p = idx / (U * V);
  const int64_t i = k / V, v = k % V;
  scalar_t m = mask_value<scalar_t>(rows[i], v, H, W, q_lo, q_hi, weight ? weight + k : nullptr);
  if (hermitian) m *= hermitian_weight<scalar_t>(v, W);
  const scalar_t f = inv_scale ? inv_scale[p] : scalar_t(1);
  bin_energy_grad(f * spec[2 * idx], f * spec[2 * idx + 1], grad[p] * scale * m, power, out + 2 * idx, out + 2 * idx + 1);
}

template <typename scalar_t>
__global__ void phasor_kernel(const scalar_t* __restrict__ spec, const scalar_t* __restrict__ g, int64_t P, int64_t U,
                              int64_t V, int64_t W, scalar_t scale, scalar_t* __restrict__ out) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= P * U * V) return;
  const int64_t k = idx % (U * V), v = k % V;
  const scalar_t f = scale * g[k] / hermitian_weight<scalar_t>(v, W);
  bin_energy_grad(spec[2 * idx], spec[2 * idx + 1], f, 1, out + 2 * idx, out + 2 * idx + 1);
}

int64_t blocks_for(int64_t n) { return (n + kThreads - 1) / kThreads; }

}  // namespace

at::Tensor energy_stage_cuda(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H,
                             int64_t W, int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& inv_scale) {
  const c10::cuda::CUDAGuard guard(spec.device());
  const int64_t P = spec.size(0), U = spec.size(1), V = spec.size(2);
  at::Tensor out = at::empty({P}, spec.options());
  if (P == 0) return out;
  const at::Tensor r = rows.to(spec.device()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_energy_stage_cuda", [&] {
    energy_kernel<scalar_t><<<P, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        spec.data_ptr<scalar_t>(), r.data_ptr<int64_t>(), weight.defined() ? weight.data_ptr<scalar_t>() : nullptr, U, V,
        H, W, q_lo, q_hi, static_cast<int>(power), inv_scale.defined() ? inv_scale.data_ptr<scalar_t>() : nullptr,
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor energy_grad_stage_cuda(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H,
                                  int64_t W, int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& grad,
                                  double scale, bool hermitian, const at::Tensor& inv_scale) {
  const c10::cuda::CUDAGuard guard(spec.device());
  const int64_t P = spec.size(0), U = spec.size(1), V = spec.size(2);
  at::Tensor out = at::empty_like(spec);
  if (P * U * V == 0) return out;
  const at::Tensor r = rows.to(spec.device()).contiguous();
  AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_energy_grad_stage_cuda", [&] {
    energy_grad_kernel<scalar_t><<<blocks_for(P * U * V), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        spec.data_ptr<scalar_t>(), r.data_ptr<int64_t>(), weight.defined() ? weight.data_ptr<scalar_t>() : nullptr, P, U,
        V, H, W, q_lo, q_hi, static_cast<int>(power), grad.data_ptr<scalar_t>(), static_cast<scalar_t>(scale), hermitian,
        inv_scale.defined() ? inv_scale.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor phasor_stage_cuda(const at::Tensor& spec, const at::Tensor& g, int64_t W, double scale) {
  const c10::cuda::CUDAGuard guard(spec.device());
  const int64_t P = spec.size(0), U = spec.size(1), V = spec.size(2);
  at::Tensor out = at::empty_like(spec);
  if (P * U * V == 0) return out;
  AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_phasor_stage_cuda", [&] {
    phasor_kernel<scalar_t><<<blocks_for(P * U * V), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
        spec.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), P, U, V, W, static_cast<scalar_t>(scale),
        out.data_ptr<scalar_t>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace jafr
