// The stages of `Stages` (spectral.h) as host templates over a launcher `Exec`: each allocates its outputs,
// dispatches on dtypes, fills one routine of spectral_math.h and hands it to `Exec::run<T>(items, routine,
// like)`, which runs routine(item, block, work) for every item: at::parallel_for on the CPU
// (spectral_cpu.cpp), one CUDA thread block per item on the GPU (spectral_cuda.cu). Each stage is one
// launch on CUDA. `Exec::kFusedByDefault` says whether `auto` runs the band ratio fused on small planes.
#pragma once

#include <ATen/Dispatch.h>

#include "spectral.h"

namespace jafr {

// Dispatch on x's dtype (fp16, bf16, fp32, fp64) with `in_t` its element type and `T` the compute type.
#define JAFR_DISPATCH_INPUT(dtype, name, ...)                                                       \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, name, [&] {                      \
    using in_t = scalar_t;                                                                           \
    using T = acc_type<in_t>;                                                                        \
    __VA_ARGS__();                                                                                   \
  })

inline at::ScalarType compute_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

template <class Exec>
struct StageImpl {
  static at::Tensor band_table(const Bins& bins, const at::TensorOptions& opts) {
    const int64_t U = bins.U(), V = bins.V;
    at::Tensor out = at::empty({U, V}, opts);
    AT_DISPATCH_FLOATING_TYPES(out.scalar_type(), "jafr_band_table", [&] {
      const BandTableRoutine<scalar_t> r{bins.band<scalar_t>(), out.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(U, r, out);
    });
    return out;
  }

  static at::Tensor energy(const at::Tensor& spec, const Bins& bins, int64_t power) {
    const int64_t P = spec.size(0);
    at::Tensor out = at::empty({P}, spec.options());
    AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_energy", [&] {
      const EnergyRoutine<scalar_t> r{spec.data_ptr<scalar_t>(), bins.band<scalar_t>(), static_cast<int>(power),
                                      out.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(P, r, spec);
    });
    return out;
  }

  static at::Tensor energy_grad(const at::Tensor& spec, const Bins& bins, int64_t power, const at::Tensor& grad,
                                double scale, bool hermitian) {
    const int64_t P = spec.size(0);
    at::Tensor out = at::empty_like(spec);
    AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_energy_grad", [&] {
      const EnergyGradRoutine<scalar_t> r{spec.data_ptr<scalar_t>(), bins.band<scalar_t>(), static_cast<int>(power),
                                          grad.data_ptr<scalar_t>(), grad.stride(0), static_cast<scalar_t>(scale),
                                          hermitian, out.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(P, r, spec);
    });
    return out;
  }

  static at::Tensor phasor(const at::Tensor& spec, const at::Tensor& g, int64_t W, double scale) {
    const int64_t P = spec.size(0);
    at::Tensor out = at::empty_like(spec);
    AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_phasor", [&] {
      const PhasorRoutine<scalar_t> r{spec.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(), static_cast<int>(spec.size(1)),
                                      static_cast<int>(spec.size(2)), static_cast<int>(W), static_cast<scalar_t>(scale),
                                      out.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(P, r, spec);
    });
    return out;
  }

  // The unfused ratio's stages each run one item per (sample, chunk of rows): see Chunks in spectral_math.h.
  static std::tuple<at::Tensor, at::Tensor> scale(const at::Tensor& x, const at::Tensor& stats_in, bool hpw) {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const auto acc = x.options().dtype(compute_type(x.scalar_type()));
    const Chunks chunks = make_chunks(C * H, W);
    at::Tensor xs = hpw ? at::empty({H, B * C, W}, acc) : at::empty({B * C, H, W}, acc);
    at::Tensor parts = stats_in.defined() ? at::Tensor() : at::empty({2, B, chunks.count}, acc);  // maxima, sums
    JAFR_DISPATCH_INPUT(x.scalar_type(), "jafr_scale", [&] {
      T* maxima = parts.defined() ? parts.data_ptr<T>() : nullptr;
      if (maxima != nullptr) {
        const SampleMaxRoutine<in_t, T> m{x.data_ptr<in_t>(), static_cast<int>(W), C * H * W, chunks, maxima};
        Exec::template run<T>(B * chunks.count, m, x);
      }
      const ScaleRoutine<in_t, T> r{x.data_ptr<in_t>(),
                                    static_cast<int>(C),
                                    static_cast<int>(H),
                                    static_cast<int>(W),
                                    B * C,
                                    hpw,
                                    chunks,
                                    stats_in.defined() ? stats_in.data_ptr<T>() : nullptr,
                                    maxima,
                                    xs.data_ptr<T>(),
                                    maxima != nullptr ? maxima + B * chunks.count : nullptr};
      Exec::template run<T>(B * chunks.count, r, x);
    });
    return {xs, parts};
  }

  template <typename T>
  static SpecView<T> spec_view(const at::Tensor& spec, int64_t spec_Vp, const Bins& bins, int64_t P) {
    return SpecView<T>{spec.data_ptr<T>(), P, static_cast<int>(bins.U()), static_cast<int>(bins.V),
                       static_cast<int>(spec_Vp)};
  }

  static std::tuple<at::Tensor, at::Tensor> ratio_value(const at::Tensor& spec, int64_t spec_Vp, const Bins& bins,
                                                        int64_t C, const at::Tensor& parts, bool complement) {
    const int64_t B = parts.size(1), x_chunks = parts.size(2);
    const Chunks chunks = make_chunks(C * bins.U(), bins.V);
    at::Tensor energies = at::empty({B, chunks.count}, parts.options());
    at::Tensor value = at::empty({B}, parts.options()), stats = at::empty({B, 2}, parts.options());
    AT_DISPATCH_FLOATING_TYPES(parts.scalar_type(), "jafr_ratio_value", [&] {
      const RatioValueRoutine<scalar_t> r{spec_view<scalar_t>(spec, spec_Vp, bins, B * C), bins.band<scalar_t>(),
                                          static_cast<int>(C), chunks, energies.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(B * chunks.count, r, parts);
      const scalar_t* maxima = parts.data_ptr<scalar_t>();
      const RatioFinishRoutine<scalar_t> f{maxima,
                                           maxima + B * x_chunks,
                                           static_cast<int>(x_chunks),
                                           energies.data_ptr<scalar_t>(),
                                           chunks.count,
                                           bins.H * bins.W,
                                           complement,
                                           value.data_ptr<scalar_t>(),
                                           stats.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(B, f, parts);
    });
    return {value, stats};
  }

  static at::Tensor ratio_grad(const at::Tensor& spec, int64_t spec_Vp, const Bins& bins, int64_t C,
                               const at::Tensor& grad, const at::Tensor& value, const at::Tensor& stats,
                               bool complement, double scale, bool hermitian) {
    const int64_t B = stats.size(0), P = B * C;
    const Chunks chunks = make_chunks(C * bins.U(), bins.V);
    AT_DISPATCH_FLOATING_TYPES(stats.scalar_type(), "jafr_ratio_grad", [&] {
      const RatioGradRoutine<scalar_t> r{spec_view<scalar_t>(spec, spec_Vp, bins, P),
                                         bins.band<scalar_t>(),
                                         static_cast<int>(C),
                                         chunks,
                                         grad.data_ptr<scalar_t>(),
                                         grad.stride(0),
                                         value.data_ptr<scalar_t>(),
                                         stats.data_ptr<scalar_t>(),
                                         complement,
                                         static_cast<scalar_t>(scale),
                                         hermitian,
                                         spec.data_ptr<scalar_t>()};
      Exec::template run<scalar_t>(B * chunks.count, r, stats);
    });
    return spec;
  }

  static at::Tensor ratio_combine(const at::Tensor& syn, bool hpw, const at::Tensor& x, const at::Tensor& grad,
                                  const at::Tensor& value, const at::Tensor& stats, bool complement) {
    const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
    const Chunks chunks = make_chunks(C * H, W);
    at::Tensor dx = !hpw && syn.scalar_type() == x.scalar_type() ? syn.view(x.sizes()) : at::empty(x.sizes(), x.options());
    JAFR_DISPATCH_INPUT(x.scalar_type(), "jafr_ratio_combine", [&] {
      const RatioCombineRoutine<in_t, T> r{syn.data_ptr<T>(),
                                           hpw,
                                           x.data_ptr<in_t>(),
                                           static_cast<int>(C),
                                           static_cast<int>(H),
                                           static_cast<int>(W),
                                           B * C,
                                           chunks,
                                           grad.data_ptr<T>(),
                                           grad.stride(0),
                                           value.data_ptr<T>(),
                                           stats.data_ptr<T>(),
                                           complement,
                                           dx.data_ptr<in_t>()};
      Exec::template run<T>(B * chunks.count, r, x);
    });
    return dx;
  }

  static std::tuple<at::Tensor, at::Tensor> fused_ratio(const at::Tensor& x, const Bins& bins, const at::Tensor& cw,
                                                        const at::Tensor& rw, bool complement) {
    const int64_t B = x.size(0);
    const auto acc = x.options().dtype(compute_type(x.scalar_type()));
    at::Tensor value = at::empty({B}, acc), stats = at::empty({B, 2}, acc);
    JAFR_DISPATCH_INPUT(x.scalar_type(), "jafr_fused_ratio", [&] {
      const FusedRatioForward<in_t, T> r{x.data_ptr<in_t>(),  static_cast<int>(x.size(1)), bins.band<T>(),
                                         {cw.data_ptr<T>(), rw.data_ptr<T>()}, complement, value.data_ptr<T>(),
                                         stats.data_ptr<T>()};
      Exec::template run<T>(B, r, x);
    });
    return {value, stats};
  }

  static at::Tensor fused_ratio_backward(const at::Tensor& grad, const at::Tensor& x, const Bins& bins,
                                         const at::Tensor& cw, const at::Tensor& rw, bool complement,
                                         const at::Tensor& value, const at::Tensor& stats) {
    const int64_t B = x.size(0);
    at::Tensor dx = at::empty(x.sizes(), x.options());
    JAFR_DISPATCH_INPUT(x.scalar_type(), "jafr_fused_ratio_backward", [&] {
      const FusedRatioBackward<in_t, T> r{x.data_ptr<in_t>(),
                                          static_cast<int>(x.size(1)),
                                          bins.band<T>(),
                                          {cw.data_ptr<T>(), rw.data_ptr<T>()},
                                          complement,
                                          grad.data_ptr<T>(),
                                          grad.stride(0),
                                          value.data_ptr<T>(),
                                          stats.data_ptr<T>(),
                                          dx.data_ptr<in_t>()};
      Exec::template run<T>(B, r, x);
    });
    return dx;
  }

  static std::tuple<at::Tensor, at::Tensor> fused_ratio_and_grad(const at::Tensor& x, const Bins& bins,
                                                                  const at::Tensor& cw, const at::Tensor& rw,
                                                                  bool complement, double scale) {
    const int64_t B = x.size(0);
    const auto acc = x.options().dtype(compute_type(x.scalar_type()));
    at::Tensor value = at::empty({B}, acc), dx = at::empty(x.sizes(), x.options());
    // The unit band gradient is synthesised into dx itself when it has the compute dtype, else into a buffer.
    at::Tensor syn = x.scalar_type() == acc.dtype().toScalarType() ? dx : at::empty(x.sizes(), acc);
    JAFR_DISPATCH_INPUT(x.scalar_type(), "jafr_fused_ratio_and_grad", [&] {
      const FusedRatioValueGrad<in_t, T> r{x.data_ptr<in_t>(),
                                           static_cast<int>(x.size(1)),
                                           bins.band<T>(),
                                           {cw.data_ptr<T>(), rw.data_ptr<T>()},
                                           complement,
                                           static_cast<T>(scale),
                                           value.data_ptr<T>(),
                                           syn.data_ptr<T>(),
                                           dx.data_ptr<in_t>()};
      Exec::template run<T>(B, r, x);
    });
    return {value, dx};
  }

  static Stages table() {
    return Stages{&band_table,  Exec::kFusedByDefault, Exec::kGemmCost, &energy,        &energy_grad,
                  &phasor,      &scale,                &ratio_value,    &ratio_grad,    &ratio_combine,
                  &fused_ratio, &fused_ratio_backward, &fused_ratio_and_grad};
  }
};

}  // namespace jafr
