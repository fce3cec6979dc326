// Per-bin spectral maths shared by the CPU loops (spectral.cpp) and the CUDA kernels (spectral_cuda.cu).
//
// Everything that decides *what* is computed at one frequency bin (u, v) of an H x W plane lives here
// once, so the CPU tests exercise exactly the arithmetic the CUDA kernels run. Formulas: see
// jafr_kernels/reference.py.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define JAFR_HD __host__ __device__ __forceinline__
#else
#define JAFR_HD inline
#endif

namespace jafr {

// Hermitian weight h_v of column v of an rfft2 half spectrum of width W: 1 at DC and (even W) Nyquist, else 2.
template <typename T>
JAFR_HD T hermitian_weight(int64_t v, int64_t W) {
  return (v == 0 || 2 * v == W) ? T(1) : T(2);
}

// Integer squared radius q = min(u, H-u)^2 W^2 + v^2 H^2 = r^2 (H W)^2 / 4, exact for any plane size.
JAFR_HD int64_t squared_radius(int64_t u, int64_t v, int64_t H, int64_t W) {
  const int64_t uu = u <= H - u ? u : H - u;
  return uu * uu * W * W + v * v * H * H;
}

// Mask value of bin (u, v): the user weight if one is given, else the radial band q_lo <= q <= q_hi.
template <typename T>
JAFR_HD T mask_value(int64_t u, int64_t v, int64_t H, int64_t W, int64_t q_lo, int64_t q_hi, const T* weight_uv) {
  if (weight_uv != nullptr) return *weight_uv;
  const int64_t q = squared_radius(u, v, H, W);
  return (q >= q_lo && q <= q_hi) ? T(1) : T(0);
}

// Energy term |X|^p of one bin (p = 1 or 2), before weighting.
template <typename T>
JAFR_HD T bin_energy(T re, T im, int power) {
  const T sq = re * re + im * im;
  return power == 2 ? sq : std::sqrt(sq);
}

// d(scale * |X|^p)/dX as a complex number (gr, gi): p = 2 -> 2 scale X; p = 1 -> scale X/|X| (0 at X = 0).
template <typename T>
JAFR_HD void bin_energy_grad(T re, T im, T scale, int power, T* gr, T* gi) {
  if (power == 2) {
    *gr = T(2) * scale * re;
    *gi = T(2) * scale * im;
    return;
  }
  const T mag = std::sqrt(re * re + im * im);
  const T f = mag > T(0) ? scale / mag : T(0);
  *gr = f * re;
  *gi = f * im;
}

}  // namespace jafr
