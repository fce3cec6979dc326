// Declarations shared by the device-agnostic host logic (spectral.cpp) and the per-device stages
// (spectral_cpu.cpp, spectral_cuda.cu), which implement the routines of spectral_math.h as CPU loops or
// CUDA kernels. Ops are registered in the `jafr_cpp` torch.library namespace: one schema block in
// spectral.cpp, one TORCH_LIBRARY_IMPL per dispatch key in the per-device files.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <tuple>

#include "spectral_math.h"

namespace jafr {

// Transform paths (the `path` argument of every op; JAFR_CPP_PATH in jafr_kernels/kernels/cpp.py):
//  * partial: separable DFT restricted to the rows |u| <= ur and columns v < V the mask can touch, as two
//    thin GEMMs (ATen/BLAS/cuBLAS), per-bin and per-sample stages in between;
//  * full:    rfft2 / irfft2 (pocketfft/MKL or cuFFT), same stages;
//  * fused:   (ratio only) the whole per-sample ratio in one routine each way (FusedRatioForward/Backward);
//  * auto:    on CUDA, fused for planes up to kFusedMaxSide; otherwise partial or full by a cost model.
enum Path : int64_t { kAuto = 0, kPartial = 1, kFull = 2, kFused = 3 };
constexpr int64_t kFusedMaxSide = 64;

// GEMMs with very narrow outputs run far below peak in BLAS; padding the partial column transform to a
// multiple of 16 outputs ([Re | Im | 0]) costs a few zero columns and is several times faster (measured,
// see benchmarks/).
inline int64_t padded_width(int64_t cols) { return (cols + 15) / 16 * 16; }

// Host description of the bins a call transforms and of its mask (Band<T> is the device view).
struct Bins {
  int64_t H = 0, W = 0;
  int64_t ur = 0;  // rows u with min(u, H-u) <= ur
  int64_t V = 0;   // columns v < V
  int64_t q_lo = 0, q_hi = 0;
  at::Tensor weight;  // (H, W/2+1) weight map in the compute dtype, contiguous; undefined for a radial band
  at::Tensor table;   // (U, V) h_v m on the transformed bins, or undefined (then computed per bin)
  bool fused = false;  // band ratio: the fused per-sample routine
  bool full = false;   // otherwise: rfft2 rather than the partial DFT

  RowSet rows() const { return RowSet{static_cast<int>(H), static_cast<int>(ur)}; }
  int64_t U() const { return rows().count(); }
  bool empty() const { return V == 0 || U() == 0; }  // the mask selects no bin
  template <typename T>
  Band<T> band() const {
    return Band<T>{static_cast<int>(H),
                   static_cast<int>(W),
                   rows(),
                   static_cast<int>(V),
                   q_lo,
                   q_hi,
                   weight.defined() ? weight.data_ptr<T>() : nullptr,
                   table.defined() ? table.data_ptr<T>() : nullptr};
  }
};

// The per-device stages the host logic composes. Spectra are (P, U, V, 2) in the compute dtype; stats are
// (B, 2) = [e, E_all(x 2^e)]; grad vectors may have any stride.
struct Stages {
  // (U, V) lookup table h_v m of the bins (bins.table undefined), in `dtype`.
  at::Tensor (*band_table)(const Bins& bins, const at::TensorOptions& opts);
  // Whether path `auto` runs the band ratio as the fused routine on planes up to kFusedMaxSide: on CUDA (one
  // launch each way); not on the CPU, where the GEMM path is faster than the serial per-sample routine.
  bool fused_by_default;
  // Relative cost of one multiply-add of the partial DFT's GEMMs against one flop of the FFT estimate
  // 2.5 N log2 N, in the cost model that picks partial or full (make_bins in spectral.cpp).
  double gemm_cost;
  // (P,) masked energies sum h_v m |X|^power.
  at::Tensor (*energy)(const at::Tensor& spec, const Bins& bins, int64_t power);
  // (P, U, V, 2) grad_p * scale * (hermitian ? h_v : 1) * m * d|X|^power/dX.
  at::Tensor (*energy_grad)(const at::Tensor& spec, const Bins& bins, int64_t power, const at::Tensor& grad,
                            double scale, bool hermitian);
  // (P, U, V, 2) scale * g * X/|X| / h_v.
  at::Tensor (*phasor)(const at::Tensor& spec, const at::Tensor& g, int64_t W, double scale);
  // x' = x 2^e in the compute dtype as (P, H, W) planes, or (H, P, W) with `hpw` (the partial DFT's GEMM
  // layout), and the per-chunk partial results (2, B, K) = [max |x|, sum x'^2] (e computed from the maxima);
  // with stats_in, its e is reused and the second result is undefined.
  std::tuple<at::Tensor, at::Tensor> (*scale)(const at::Tensor& x, const at::Tensor& stats_in, bool hpw);
  // (value (B,), stats (B, 2)) from the band spectrum of x' (spec_Vp == 0: canonical; else the GEMM layout
  // (2U, P, Vp)) and the partial results of `scale`.
  std::tuple<at::Tensor, at::Tensor> (*ratio_value)(const at::Tensor& spec, int64_t spec_Vp, const Bins& bins,
                                                    int64_t C, const at::Tensor& parts, bool complement);
  // The ratio's band gradient k_b * scale * (hermitian ? h_v : 1) * m * 2X before synthesis, written over
  // `spec` (returned) in its layout: canonical, or the partial adjoint's GEMM operand (2U, P, Vp).
  at::Tensor (*ratio_grad)(const at::Tensor& spec, int64_t spec_Vp, const Bins& bins, int64_t C,
                           const at::Tensor& grad, const at::Tensor& value, const at::Tensor& stats, bool complement,
                           double scale, bool hermitian);
  // dx (B, C, H, W) in x's dtype from the synthesised band gradient syn ((P, H, W), or (H, P, W) with `hpw`);
  // written over syn when layouts and dtypes agree.
  at::Tensor (*ratio_combine)(const at::Tensor& syn, bool hpw, const at::Tensor& x, const at::Tensor& grad,
                              const at::Tensor& value, const at::Tensor& stats, bool complement);
  // The fused ratio, forward (value, stats) and backward (dx); cw (2, V, W) and rw (2, U, H) twiddles.
  std::tuple<at::Tensor, at::Tensor> (*fused_ratio)(const at::Tensor& x, const Bins& bins, const at::Tensor& cw,
                                                    const at::Tensor& rw, bool complement);
  at::Tensor (*fused_ratio_backward)(const at::Tensor& grad, const at::Tensor& x, const Bins& bins,
                                     const at::Tensor& cw, const at::Tensor& rw, bool complement,
                                     const at::Tensor& value, const at::Tensor& stats);
  // The fused ratio's value and gradient in one routine: (value (B,), dx = scale * d value / dx).
  std::tuple<at::Tensor, at::Tensor> (*fused_ratio_and_grad)(const at::Tensor& x, const Bins& bins, const at::Tensor& cw,
                                                             const at::Tensor& rw, bool complement, double scale);
};

const Stages& cpu_stages();
#ifdef JAFR_WITH_CUDA
const Stages& cuda_stages();
#endif

// ---------------------------------------------------------------------------------------------- ops
// Device-agnostic host logic (spectral.cpp); `st` supplies the device's stages. Semantics: see the schema
// block in spectral.cpp and jafr_kernels/kernels/cpp.py.
at::Tensor energy(const at::Tensor& x, const c10::optional<at::Tensor>& weight, int64_t q_lo, int64_t q_hi,
                  int64_t power, int64_t path, const Stages& st);
at::Tensor energy_backward(const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                           int64_t q_lo, int64_t q_hi, int64_t power, int64_t path, const Stages& st);
at::Tensor mean_magnitude(const at::Tensor& x);
at::Tensor mean_magnitude_backward(const at::Tensor& grad, const at::Tensor& x, const Stages& st);
std::tuple<at::Tensor, at::Tensor> band_ratio(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                              int64_t q_lo, int64_t q_hi, bool complement, int64_t path,
                                              const Stages& st);
at::Tensor band_ratio_backward(const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                               int64_t q_lo, int64_t q_hi, bool complement, const at::Tensor& value,
                               const at::Tensor& stats, int64_t path, const Stages& st);
std::tuple<at::Tensor, at::Tensor> band_ratio_and_grad(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                       int64_t q_lo, int64_t q_hi, bool complement, double scale,
                                                       int64_t path, const Stages& st);

// The ops bound to one device's stages, for TORCH_LIBRARY_IMPL(jafr_cpp, <key>, m) { OpsOn<...>::impl(m); }.
// Each op excludes autocast for its body: the maths run in fp32 (fp64) by design, and an autocast region
// around a call would otherwise recast the op's inner GEMMs to bf16/fp16.
struct NoAutocast {
  c10::impl::ExcludeDispatchKeyGuard guard{c10::autocast_dispatch_keyset};
};

template <const Stages& (*S)()>
struct OpsOn {
  static at::Tensor energy_op(const at::Tensor& x, const c10::optional<at::Tensor>& weight, int64_t q_lo,
                              int64_t q_hi, int64_t power, int64_t path) {
    const NoAutocast no_autocast;
    return energy(x, weight, q_lo, q_hi, power, path, S());
  }
  static at::Tensor energy_backward_op(const at::Tensor& grad, const at::Tensor& x,
                                       const c10::optional<at::Tensor>& weight, int64_t q_lo, int64_t q_hi,
                                       int64_t power, int64_t path) {
    const NoAutocast no_autocast;
    return energy_backward(grad, x, weight, q_lo, q_hi, power, path, S());
  }
  static at::Tensor mean_magnitude_op(const at::Tensor& x) {
    const NoAutocast no_autocast;
    return mean_magnitude(x);
  }
  static at::Tensor mean_magnitude_backward_op(const at::Tensor& grad, const at::Tensor& x) {
    const NoAutocast no_autocast;
    return mean_magnitude_backward(grad, x, S());
  }
  static std::tuple<at::Tensor, at::Tensor> band_ratio_op(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                          int64_t q_lo, int64_t q_hi, bool complement, int64_t path) {
    const NoAutocast no_autocast;
    return band_ratio(x, weight, q_lo, q_hi, complement, path, S());
  }
  static at::Tensor band_ratio_backward_op(const at::Tensor& grad, const at::Tensor& x,
                                           const c10::optional<at::Tensor>& weight, int64_t q_lo, int64_t q_hi,
                                           bool complement, const at::Tensor& value, const at::Tensor& stats,
                                           int64_t path) {
    const NoAutocast no_autocast;
    return band_ratio_backward(grad, x, weight, q_lo, q_hi, complement, value, stats, path, S());
  }
  static std::tuple<at::Tensor, at::Tensor> band_ratio_and_grad_op(const at::Tensor& x,
                                                                   const c10::optional<at::Tensor>& weight, int64_t q_lo,
                                                                   int64_t q_hi, bool complement, double scale,
                                                                   int64_t path) {
    const NoAutocast no_autocast;
    return band_ratio_and_grad(x, weight, q_lo, q_hi, complement, scale, path, S());
  }
  static void impl(torch::Library& m) {
    m.impl("energy", TORCH_FN(energy_op));
    m.impl("energy_backward", TORCH_FN(energy_backward_op));
    m.impl("mean_magnitude", TORCH_FN(mean_magnitude_op));
    m.impl("mean_magnitude_backward", TORCH_FN(mean_magnitude_backward_op));
    m.impl("band_ratio", TORCH_FN(band_ratio_op));
    m.impl("band_ratio_backward", TORCH_FN(band_ratio_backward_op));
    m.impl("band_ratio_and_grad", TORCH_FN(band_ratio_and_grad_op));
  }
};

}  // namespace jafr
