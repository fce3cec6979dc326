// C++ backend of jafr_kernels: masked spectral energies and batch-mean magnitude spectra, with backwards.
//
// The host logic below is device-agnostic (ATen FFT / GEMM dispatch to CPU or CUDA); only the per-bin
// stages differ: at::parallel_for loops here, CUDA kernels in spectral_cuda.cu, both calling the same
// inline maths of spectral_math.h.
//
// Two transform paths compute the spectrum X of each (b, c) plane:
//  * full:    X = rfft2(x) (pocketfft / MKL on CPU, cuFFT on CUDA);
//  * partial: only the rows |u| <= U and columns v <= V that the mask can touch, as two thin real GEMMs
//             (x @ [cos | -sin] over columns, then [cos; -sin] @ . over rows). A low band of small cutoff
//             touches few bins, so this costs O(H W V + U V H) per plane instead of a full FFT, and its
//             backward is the transpose: two more thin GEMMs give the band-passed plane directly.
// The backward recomputes the spectrum: nothing is stored between forward and backward but x.
#include "spectral.h"

#include <ATen/Parallel.h>

#include <cmath>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "spectral_math.h"

namespace jafr {
namespace {

enum Path : int64_t { kAuto = 0, kPartial = 1, kFull = 2 };

at::ScalarType compute_type(const at::Tensor& x) {
  return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// (B, C, H, W) of any float dtype and strides -> contiguous (P, H, W) planes in the compute dtype.
at::Tensor as_planes(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 4, "jafr: expected a (B, C, H, W) tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.is_floating_point(), "jafr: expected a real floating tensor, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "jafr: planes must be at least 2x2, got ", x.size(2), "x", x.size(3));
  return x.to(compute_type(x)).contiguous().view({-1, x.size(2), x.size(3)});
}

int64_t isqrt_floor(int64_t n) {
  int64_t r = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (r > 0 && r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}

// Which spectrum bins a call needs, and which transform path computes them.
struct Plan {
  int64_t H, W;
  at::Tensor rows;  // (U,) int64 row frequencies, on the tensor's device
  int64_t cols;     // V: columns 0..V-1
  bool full;
  at::Tensor weight;  // (U, V) gathered weight map, or undefined

  bool empty() const { return rows.size(0) == 0 || cols == 0; }  // the mask selects no bin
};

Plan make_plan(const at::Tensor& planes, const c10::optional<at::Tensor>& weight_opt, int64_t q_hi, int64_t path) {
  const int64_t H = planes.size(1), W = planes.size(2), Wr = W / 2 + 1;
  at::Tensor weight;
  std::vector<int64_t> rows;
  int64_t cols = 0;
  if (weight_opt.has_value() && weight_opt->defined()) {
    weight = weight_opt->to(planes.scalar_type()).contiguous();
    TORCH_CHECK(weight.dim() == 2 && weight.size(0) == H && weight.size(1) == Wr, "jafr: weight map must be (H, W//2+1) = (",
                H, ", ", Wr, "), got ", weight.sizes());
    const at::Tensor nz = weight.ne(0).cpu();
    const at::Tensor row_any = nz.any(1), col_any = nz.any(0);
    const auto row_nz = row_any.accessor<bool, 1>();
    const auto col_nz = col_any.accessor<bool, 1>();
    for (int64_t u = 0; u < H; ++u)
      if (row_nz[u]) rows.push_back(u);
    for (int64_t v = Wr - 1; v >= 0; --v)
      if (col_nz[v]) {
        cols = v + 1;
        break;
      }
  } else {
    const int64_t ur = std::min(H / 2, isqrt_floor(q_hi / (W * W)));
    cols = std::min(W / 2, isqrt_floor(q_hi / (H * H))) + 1;
    for (int64_t u = 0; u < H; ++u)
      if (std::min(u, H - u) <= ur) rows.push_back(u);
  }
  const int64_t U = static_cast<int64_t>(rows.size());
  // Real multiply-adds per plane: the partial transform (forward) vs a full real FFT (~2.5 N log2 N flops,
  // at several times lower throughput than a GEMM). The factor was measured on the CPU; see benchmarks/.
  const double partial_cost = 2.0 * cols * H * W + 4.0 * U * cols * H;
  const double fft_cost = 2.5 * H * W * std::log2(static_cast<double>(H * W));
  bool full = path == kFull || (path == kAuto && partial_cost > fft_cost);
  if (U == 0 || cols == 0) full = false;  // empty mask: nothing to transform
  Plan plan{H, W, at::Tensor(), cols, full, at::Tensor()};
  if (full) {
    plan.rows = at::arange(H, planes.options().dtype(at::kLong));
    plan.cols = Wr;
    plan.weight = weight;
  } else {
    plan.rows = at::tensor(rows, at::TensorOptions().dtype(at::kLong)).to(planes.device());
    if (weight.defined()) plan.weight = weight.index_select(0, plan.rows).narrow(1, 0, cols).contiguous();
  }
  return plan;
}

// (n, 2k) real DFT factors [cos(2 pi j t / n) | -sin(2 pi j t / n)] for t < n (rows), j in `freqs` (cols),
// zero-padded on the right to `width` columns. Cached per (n, freqs, width, dtype, device): building them
// costs more than a small plane's transform.
at::Tensor dft_factors(int64_t n, const at::Tensor& freqs, const at::TensorOptions& opts, int64_t width = 0) {
  static std::mutex mutex;
  static auto* cache = new std::map<std::string, at::Tensor>();  // never destroyed: outlives CUDA teardown
  const at::Tensor f_cpu = freqs.cpu().contiguous();
  std::string key = std::to_string(n) + "/" + std::to_string(width) + "/" + c10::toString(opts.dtype().toScalarType()) +
                    "/" + opts.device().str() + "/";
  const int64_t* fp = f_cpu.data_ptr<int64_t>();
  for (int64_t i = 0; i < f_cpu.numel(); ++i) key += std::to_string(fp[i]) + ",";
  {
    const std::lock_guard<std::mutex> lock(mutex);
    const auto it = cache->find(key);
    if (it != cache->end()) return it->second;
  }
  const at::Tensor t = at::arange(n, at::TensorOptions().dtype(at::kLong));
  const at::Tensor phase = at::remainder(t.unsqueeze(1) * f_cpu.unsqueeze(0), n).to(at::kDouble) * (2.0 * M_PI / n);
  at::Tensor f = at::cat({at::cos(phase), -at::sin(phase)}, 1);
  if (width > f.size(1)) f = at::constant_pad_nd(f, {0, width - f.size(1)});
  f = f.to(opts).contiguous();
  const std::lock_guard<std::mutex> lock(mutex);
  if (cache->size() > 256) cache->clear();  // bounded: a training run touches a handful of sizes
  cache->emplace(key, f);
  return f;
}

// GEMMs with very narrow outputs run far below peak in BLAS; padding the column transform to a multiple
// of 16 outputs costs a few zero columns and is several times faster (measured, see benchmarks/).
int64_t padded_width(int64_t cols) { return (cols + 15) / 16 * 16; }

// Spectrum (P, U, V, 2) of the planes on the plan's bins.
at::Tensor spectrum(const at::Tensor& planes, const Plan& plan) {
  const int64_t P = planes.size(0), H = plan.H, W = plan.W;
  if (plan.full) return at::view_as_real(at::fft_rfft2(planes)).contiguous();
  const int64_t U = plan.rows.size(0), V = plan.cols, Vp = padded_width(2 * V);
  const at::Tensor cw = dft_factors(W, at::arange(V, at::kLong), planes.options(), Vp);  // (W, Vp)
  const at::Tensor rh = dft_factors(H, plan.rows, planes.options());                     // (H, 2U)
  // Columns first: y[p, h, :] = [Re | Im | 0] of the 1-D DFT of each row, one (P H, W) x (W, Vp) GEMM.
  const at::Tensor y = at::mm(planes.view({P * H, W}), cw).view({P, H, Vp});
  // Then rows, computed transposed: z[p] = y[p]^T rh, (P, Vp, 2U).
  const at::Tensor z = at::matmul(y.transpose(1, 2), rh);
  const at::Tensor yr = z.slice(1, 0, V), yi = z.slice(1, V, 2 * V);  // (P, V, 2U)
  const at::Tensor re = yr.slice(2, 0, U) - yi.slice(2, U, 2 * U);     // cos Yr + sin Yi
  const at::Tensor im = yi.slice(2, 0, U) + yr.slice(2, U, 2 * U);     // cos Yi - sin Yr
  return at::stack({re, im}, -1).transpose(1, 2).contiguous();         // (P, U, V, 2)
}

// Re(sum_{u in rows, v < V} G_uv e^{+2 pi i (u h / H + v w / W)}) for G (P, U, V, 2): the partial transform's adjoint.
at::Tensor partial_synthesis(const at::Tensor& g, const Plan& plan) {
  const int64_t P = g.size(0), H = plan.H, W = plan.W, U = plan.rows.size(0), V = plan.cols, Vp = padded_width(2 * V);
  const at::Tensor cw = dft_factors(W, at::arange(V, at::kLong), g.options(), Vp);  // (W, Vp)
  const at::Tensor rh = dft_factors(H, plan.rows, g.options());                     // (H, 2U)
  const at::Tensor gt = g.transpose(1, 2);                                           // (P, V, U, 2)
  const at::Tensor gr = gt.select(3, 0), gi = gt.select(3, 1);
  // s[p] (Vp, 2U) = [[Gr^T, Gi^T], [Gi^T, -Gr^T], [0]] so that rh s[p]^T = [Re | Im] of the row synthesis.
  at::Tensor s = at::cat({at::cat({gr, gi}, 2), at::cat({gi, -gr}, 2)}, 1);  // (P, 2V, 2U)
  if (Vp > 2 * V) s = at::constant_pad_nd(s, {0, 0, 0, Vp - 2 * V});
  const at::Tensor q = at::matmul(s, rh.t()).transpose(1, 2).reshape({P * H, Vp});  // (P H, Vp)
  return at::mm(q, cw.t()).view({P, H, W});
}

// For real x, X[-u, v] = conj(X[u, v]) on the edge columns v = 0 and (even W) v = W/2, so the phasor
// X/|X| there is Hermitian in u and Re(sum_u g_uv X_uv/|X_uv| e^{+i..}) only sees the symmetric part of g.
// Symmetrising g on those columns (a tiny (H, W//2+1) operation) makes G Hermitian, which is what irfft2
// needs to reproduce the sum exactly.
at::Tensor symmetrize_edge_columns(const at::Tensor& g, int64_t W) {
  const int64_t H = g.size(0), V = g.size(1);
  const at::Tensor u = at::arange(H, g.options().dtype(at::kLong));
  const at::Tensor mirrored = g.index_select(0, at::remainder(H - u, H));
  const at::Tensor v = at::arange(V, g.options().dtype(at::kLong));
  const at::Tensor edge = (v == 0).logical_or(v * 2 == W).view({1, V});
  return at::where(edge, (g + mirrored) / 2, g).contiguous();
}

template <typename scalar_t>
std::vector<scalar_t> bin_table(const at::Tensor& rows_cpu, int64_t V, int64_t H, int64_t W, int64_t q_lo, int64_t q_hi,
                                const at::Tensor& weight, bool hermitian) {
  const int64_t U = rows_cpu.size(0);
  const int64_t* r = rows_cpu.data_ptr<int64_t>();
  const at::Tensor w_cpu = weight.defined() ? weight.cpu().contiguous() : weight;
  const scalar_t* wp = w_cpu.defined() ? w_cpu.data_ptr<scalar_t>() : nullptr;
  std::vector<scalar_t> table(U * V);
  for (int64_t i = 0; i < U; ++i)
    for (int64_t v = 0; v < V; ++v) {
      const scalar_t m = mask_value<scalar_t>(r[i], v, H, W, q_lo, q_hi, wp ? wp + i * V + v : nullptr);
      table[i * V + v] = hermitian ? m * hermitian_weight<scalar_t>(v, W) : m;
    }
  return table;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- stages (CPU)
at::Tensor energy_stage(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H, int64_t W,
                        int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& inv_scale) {
#ifdef JAFR_WITH_CUDA
  if (spec.is_cuda()) return energy_stage_cuda(spec, rows, weight, H, W, q_lo, q_hi, power, inv_scale);
#endif
  TORCH_CHECK(spec.device().is_cpu(), "jafr: this build has no CUDA support for ", spec.device());
  const int64_t P = spec.size(0), U = spec.size(1), V = spec.size(2);
  at::Tensor out = at::empty({P}, spec.options());
  AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_energy_stage", [&] {
    const std::vector<scalar_t> table = bin_table<scalar_t>(rows.cpu(), V, H, W, q_lo, q_hi, weight, true);
    const scalar_t* s = spec.data_ptr<scalar_t>();
    const scalar_t* is = inv_scale.defined() ? inv_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* sp = s + p * U * V * 2;
        const scalar_t f = is ? is[p] : scalar_t(1);
        double acc = 0.0;  // double accumulation: sums of up to ~1e5 bins stay far below fp32 rounding
        for (int64_t k = 0; k < U * V; ++k)
          if (table[k] != scalar_t(0)) acc += static_cast<double>(table[k] * bin_energy(f * sp[2 * k], f * sp[2 * k + 1], power));
        o[p] = static_cast<scalar_t>(acc);
      }
    });
  });
  return out;
}

at::Tensor energy_grad_stage(const at::Tensor& spec, const at::Tensor& rows, const at::Tensor& weight, int64_t H,
                             int64_t W, int64_t q_lo, int64_t q_hi, int64_t power, const at::Tensor& grad,
                             double scale, bool hermitian, const at::Tensor& inv_scale) {
#ifdef JAFR_WITH_CUDA
  if (spec.is_cuda())
    return energy_grad_stage_cuda(spec, rows, weight, H, W, q_lo, q_hi, power, grad, scale, hermitian, inv_scale);
#endif
  TORCH_CHECK(spec.device().is_cpu(), "jafr: this build has no CUDA support for ", spec.device());
  const int64_t P = spec.size(0), U = spec.size(1), V = spec.size(2);
  at::Tensor out = at::empty_like(spec);
  AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_energy_grad_stage", [&] {
    const std::vector<scalar_t> table = bin_table<scalar_t>(rows.cpu(), V, H, W, q_lo, q_hi, weight, hermitian);
    const scalar_t* s = spec.data_ptr<scalar_t>();
    const scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* is = inv_scale.defined() ? inv_scale.data_ptr<scalar_t>() : nullptr;
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t gp = g[p] * static_cast<scalar_t>(scale);
        const scalar_t f = is ? is[p] : scalar_t(1);
        const int64_t base = p * U * V * 2;
        for (int64_t k = 0; k < U * V; ++k)
          bin_energy_grad(f * s[base + 2 * k], f * s[base + 2 * k + 1], gp * table[k], static_cast<int>(power),
                          o + base + 2 * k, o + base + 2 * k + 1);
      }
    });
  });
  return out;
}

at::Tensor phasor_stage(const at::Tensor& spec, const at::Tensor& g, int64_t W, double scale) {
#ifdef JAFR_WITH_CUDA
  if (spec.is_cuda()) return phasor_stage_cuda(spec, g, W, scale);
#endif
  TORCH_CHECK(spec.device().is_cpu(), "jafr: this build has no CUDA support for ", spec.device());
  const int64_t P = spec.size(0), U = spec.size(1), V = spec.size(2);
  at::Tensor out = at::empty_like(spec);
  AT_DISPATCH_FLOATING_TYPES(spec.scalar_type(), "jafr_phasor_stage", [&] {
    const scalar_t* s = spec.data_ptr<scalar_t>();
    const scalar_t* gv = g.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const int64_t base = p * U * V * 2;
        for (int64_t k = 0; k < U * V; ++k) {
          const scalar_t f = static_cast<scalar_t>(scale) * gv[k] / hermitian_weight<scalar_t>(k % V, W);
          bin_energy_grad(s[base + 2 * k], s[base + 2 * k + 1], f, 1, o + base + 2 * k, o + base + 2 * k + 1);
        }
      }
    });
  });
  return out;
}

// ---------------------------------------------------------------------------------------------- ops
// Gradient (P, H, W) of sum_p grad_p E_p with E_p the masked energy of plane p scaled by inv_scale_p (when
// defined; the chain factor inv_scale_p itself is left to the caller): Re(sum h_v G e^{+i..}) with G from
// energy_grad_stage, synthesised by irfft2 (full plan) or by the partial transform's adjoint.
at::Tensor energy_gradient(const at::Tensor& planes, const Plan& plan, int64_t q_lo, int64_t q_hi, int64_t power,
                           const at::Tensor& grad, const at::Tensor& inv_scale) {
  if (plan.empty()) return at::zeros_like(planes);
  const at::Tensor spec = spectrum(planes, plan);
  if (plan.full) {
    // N irfft2(G) = Re(sum h_v G e^{+i..}): the mask is symmetric, so G's edge columns are already Hermitian.
    const double n = static_cast<double>(plan.H * plan.W);
    const at::Tensor gs =
        energy_grad_stage(spec, plan.rows, plan.weight, plan.H, plan.W, q_lo, q_hi, power, grad, n, false, inv_scale);
    return at::fft_irfft2(at::view_as_complex(gs), at::IntArrayRef({plan.H, plan.W}));
  }
  const at::Tensor gs =
      energy_grad_stage(spec, plan.rows, plan.weight, plan.H, plan.W, q_lo, q_hi, power, grad, 1.0, true, inv_scale);
  return partial_synthesis(gs, plan);
}

at::Tensor energy(const at::Tensor& x, const c10::optional<at::Tensor>& weight, int64_t q_lo, int64_t q_hi, int64_t power,
                  int64_t path) {
  TORCH_CHECK(power == 1 || power == 2, "jafr: power must be 1 or 2, got ", power);
  const at::Tensor planes = as_planes(x);
  const Plan plan = make_plan(planes, weight, q_hi, path);
  if (plan.empty()) return at::zeros({x.size(0), x.size(1)}, planes.options());
  const at::Tensor e =
      energy_stage(spectrum(planes, plan), plan.rows, plan.weight, plan.H, plan.W, q_lo, q_hi, power, at::Tensor());
  return e.view({x.size(0), x.size(1)});
}

at::Tensor energy_backward(const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                           int64_t q_lo, int64_t q_hi, int64_t power, int64_t path) {
  TORCH_CHECK(power == 1 || power == 2, "jafr: power must be 1 or 2, got ", power);
  const at::Tensor planes = as_planes(x);
  const Plan plan = make_plan(planes, weight, q_hi, path);
  const at::Tensor g = grad.to(planes.scalar_type()).contiguous().view({-1});
  return energy_gradient(planes, plan, q_lo, q_hi, power, g, at::Tensor()).view(x.sizes()).to(x.scalar_type());
}

at::Tensor mean_magnitude(const at::Tensor& x) {
  const at::Tensor planes = as_planes(x);
  return at::abs(at::fft_rfft2(planes)).mean(0);
}

at::Tensor mean_magnitude_backward(const at::Tensor& grad, const at::Tensor& x) {
  const at::Tensor planes = as_planes(x);
  const int64_t P = planes.size(0), H = planes.size(1), W = planes.size(2);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == H && grad.size(1) == W / 2 + 1, "jafr: grad must be (H, W//2+1)");
  const at::Tensor spec = at::view_as_real(at::fft_rfft2(planes)).contiguous();
  const at::Tensor g = symmetrize_edge_columns(grad.to(planes.scalar_type()), W);
  // dx = Re(sum_{u, v half} (g/P) X/|X| e^{+i..}) = N irfft2(G / h_v), G Hermitian on the edge columns.
  const at::Tensor gc =
      at::view_as_complex(phasor_stage(spec, g, W, static_cast<double>(H * W) / static_cast<double>(P)));
  return at::fft_irfft2(gc, at::IntArrayRef({H, W})).view(x.sizes()).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------- fused ratio (p = 2)
// Per-sample stats (B, 2): [max |x_b|, N sum (x_b / max|x_b|)^2] (the second is E_all of the scaled sample by
// Parseval); NaN as the max when the sample holds NaN or Inf.
at::Tensor sample_stats(const at::Tensor& planes, int64_t B) {
  const int64_t n_per = planes.numel() / B, N = planes.size(1) * planes.size(2);
  if (planes.is_cuda()) {
    const at::Tensor flat = planes.view({B, n_per});
    const at::Tensor amax = flat.abs().amax(1).to(at::kDouble);
    const at::Tensor sumsq = flat.to(at::kDouble).square().sum(1);
    const at::Tensor safe = at::where(amax > 0, amax, at::ones_like(amax));
    return at::stack({amax, sumsq * static_cast<double>(N) / (safe * safe)}, 1).to(planes.scalar_type());
  }
  at::Tensor out = at::empty({B, 2}, planes.options());
  AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "jafr_sample_stats", [&] {
    const scalar_t* x = planes.data_ptr<scalar_t>();
    scalar_t* o = out.data_ptr<scalar_t>();
    at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
      for (int64_t b = begin; b < end; ++b) {
        const scalar_t* xb = x + b * n_per;
        // Two vectorised passes: max |x|, then the sum of (x / max|x|)^2, whose terms are <= 1 (no overflow).
        scalar_t amax = 0;
        _Pragma("omp simd reduction(max : amax)") for (int64_t i = 0; i < n_per; ++i) {
          const scalar_t a = xb[i] < 0 ? -xb[i] : xb[i];
          amax = a > amax ? a : amax;
        }
        const scalar_t inv = amax > 0 ? scalar_t(1) / amax : scalar_t(0);
        scalar_t sumsq = 0;
        if (std::isfinite(static_cast<double>(inv)) || !std::isfinite(static_cast<double>(amax))) {
          _Pragma("omp simd reduction(+ : sumsq)") for (int64_t i = 0; i < n_per; ++i) {
            const scalar_t v = xb[i] * inv;
            sumsq += v * v;
          }
        } else {  // subnormal max: 1/max overflows in fp32, so scale in double
          double acc = 0.0;
          for (int64_t i = 0; i < n_per; ++i) {
            const double v = static_cast<double>(xb[i]) / static_cast<double>(amax);
            acc += v * v;
          }
          sumsq = static_cast<scalar_t>(acc);
        }
        // NaN (or Inf, which makes inv = 0 and Inf * 0 = NaN) anywhere makes sumsq NaN: report it through
        // the max, which callers check.
        const double m = std::isfinite(static_cast<double>(sumsq)) ? static_cast<double>(amax)
                                                                     : std::numeric_limits<double>::quiet_NaN();
        o[2 * b] = static_cast<scalar_t>(m);
        o[2 * b + 1] = static_cast<scalar_t>(m > 0 ? static_cast<double>(N) * static_cast<double>(sumsq) : 0.0);
      }
    });
  });
  return out;
}

// ratio_b = sum_c E_low(x_bc / s_b) / E_all(x_b / s_b), s_b = max |x_b|; 0 for an all-zero sample.
std::tuple<at::Tensor, at::Tensor> band_ratio(const at::Tensor& x, const c10::optional<at::Tensor>& weight, int64_t q_lo,
                                              int64_t q_hi, int64_t path) {
  const at::Tensor planes = as_planes(x);
  const int64_t B = x.size(0), C = x.size(1);
  const at::Tensor stats = sample_stats(planes, B);
  const at::Tensor scale = stats.select(1, 0), e_all = stats.select(1, 1);
  const at::Tensor inv = at::where(scale > 0, scale.reciprocal(), at::zeros_like(scale));
  const Plan plan = make_plan(planes, weight, q_hi, path);
  at::Tensor e_low = at::zeros({B}, planes.options());
  if (!plan.empty())
    e_low = energy_stage(spectrum(planes, plan), plan.rows, plan.weight, plan.H, plan.W, q_lo, q_hi, 2,
                         inv.repeat_interleave(C))
                .view({B, C})
                .sum(1);
  const at::Tensor ratio = at::where(e_all > 0, e_low / at::where(e_all > 0, e_all, at::ones_like(e_all)), at::zeros_like(e_all));
  return {ratio, stats};
}

// d(sum_b grad_b ratio_b)/dx = (2 Re sum h m (X/s) e^{+i..} - ratio 2N (x/s)) grad / (s E_all(x/s)).
at::Tensor band_ratio_backward(const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                               int64_t q_lo, int64_t q_hi, const at::Tensor& ratio, const at::Tensor& stats, int64_t path) {
  const at::Tensor planes = as_planes(x);
  const int64_t B = x.size(0), C = x.size(1), N = planes.size(1) * planes.size(2);
  const at::Tensor st = stats.to(planes.scalar_type());
  const at::Tensor scale = st.select(1, 0), e_all = st.select(1, 1);
  const at::Tensor live = (e_all > 0).logical_and(scale > 0);
  const at::Tensor inv = at::where(live, scale.reciprocal(), at::zeros_like(scale));
  // k_b = grad_b / (s_b E_all_b): finite for s from 1e-30 to 1e30 because the 1/s factors are applied to x/s.
  const at::Tensor k = at::where(live, grad.to(planes.scalar_type()) / (at::where(live, scale, at::ones_like(scale)) *
                                                                         at::where(live, e_all, at::ones_like(e_all))),
                                 at::zeros_like(e_all));
  const Plan plan = make_plan(planes, weight, q_hi, path);
  const at::Tensor dx = energy_gradient(planes, plan, q_lo, q_hi, 2, k.repeat_interleave(C), inv.repeat_interleave(C));
  // dx -= (2 N k_b ratio_b) * (x / s_b), fused on the CPU so no temporary of x's size is made.
  const at::Tensor coef = 2.0 * static_cast<double>(N) * k * ratio.to(planes.scalar_type());
  const at::Tensor dxf = dx.view({B, -1});
  const at::Tensor xf = planes.view({B, -1});
  if (planes.is_cuda()) {
    dxf.sub_(xf * inv.unsqueeze(1) * coef.unsqueeze(1));
  } else {
    AT_DISPATCH_FLOATING_TYPES(planes.scalar_type(), "jafr_ratio_backward", [&] {
      const int64_t n_per = xf.size(1);
      scalar_t* d = dxf.data_ptr<scalar_t>();
      const scalar_t* xp = xf.data_ptr<scalar_t>();
      const at::Tensor coef_c = coef.contiguous(), inv_c = inv.contiguous();
      const scalar_t* cp = coef_c.data_ptr<scalar_t>();
      const scalar_t* ipp = inv_c.data_ptr<scalar_t>();
      at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
        for (int64_t b = begin; b < end; ++b) {
          scalar_t* db = d + b * n_per;
          const scalar_t* xb = xp + b * n_per;
          const scalar_t c = cp[b], f = ipp[b];
          _Pragma("omp simd")
          for (int64_t i = 0; i < n_per; ++i) db[i] -= c * (xb[i] * f);
        }
      });
    });
  }
  return dx.view(x.sizes()).to(x.scalar_type());
}

}  // namespace jafr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "jafr_kernels C++/CUDA backend: masked spectral energies and mean magnitude spectra, with backwards";
  m.def("energy", &jafr::energy, "(B, C) masked spectral energies", py::arg("x"), py::arg("weight"), py::arg("q_lo"),
        py::arg("q_hi"), py::arg("power"), py::arg("path") = 0);
  m.def("energy_backward", &jafr::energy_backward, "gradient of sum(grad * energy(x)) w.r.t. x", py::arg("grad"),
        py::arg("x"), py::arg("weight"), py::arg("q_lo"), py::arg("q_hi"), py::arg("power"), py::arg("path") = 0);
  m.def("mean_magnitude", &jafr::mean_magnitude, "(H, W//2+1) mean over batch and channels of |rfft2(x)|", py::arg("x"));
  m.def("mean_magnitude_backward", &jafr::mean_magnitude_backward, "gradient of sum(grad * mean_magnitude(x))",
        py::arg("grad"), py::arg("x"));
  m.def("band_ratio", &jafr::band_ratio, "fused (B,) low-band energy ratio for power 2, and per-sample stats (B, 2)",
        py::arg("x"), py::arg("weight"), py::arg("q_lo"), py::arg("q_hi"), py::arg("path") = 0);
  m.def("band_ratio_backward", &jafr::band_ratio_backward, "gradient of sum(grad * band_ratio(x)) w.r.t. x",
        py::arg("grad"), py::arg("x"), py::arg("weight"), py::arg("q_lo"), py::arg("q_hi"), py::arg("ratio"),
        py::arg("stats"), py::arg("path") = 0);
  m.def("built_with_cuda", [] {
#ifdef JAFR_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
}
