// C++ backend of jafr_kernels: masked spectral energies, the fused power-2 band ratio and batch-mean
// magnitude spectra, with backwards; the `jafr_cpp` op schemas and the device-agnostic host logic.
//
// The host logic below only decides which bins to transform and composes ATen transforms (FFT, GEMM) with
// the per-device stages of spectral.h (CPU loops in spectral_cpu.cpp, CUDA kernels in spectral_cuda.cu, both
// running the routines of spectral_math.h). It never reads a device tensor's values on the host: plans
// depend on host integers only (shapes, band limits), constant tables are cached under keys made of host
// integers, and non-finite or all-zero samples are handled inside the stages.
#include <torch/extension.h>

#include <cmath>
#include <map>
#include <mutex>
#include <string>

#include "spectral.h"

namespace jafr {
namespace {

at::ScalarType compute_type(const at::Tensor& x) { return x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

void check_planes(const at::Tensor& x, const char* name) {
  TORCH_CHECK(x.dim() == 4, "jafr: ", name, " must be a (B, C, H, W) tensor, got ", x.dim(), " dimensions");
  TORCH_CHECK(x.is_floating_point(), "jafr: ", name, " must be a real floating tensor, got ", x.scalar_type());
  TORCH_CHECK(x.size(2) >= 2 && x.size(3) >= 2, "jafr: ", name, " planes must be at least 2x2, got ", x.size(2), "x",
              x.size(3));
}

// (B, C, H, W) of any float dtype and strides -> contiguous (P, H, W) planes in the compute dtype.
at::Tensor as_planes(const at::Tensor& x) {
  check_planes(x, "x");
  return x.to(compute_type(x)).contiguous().view({-1, x.size(2), x.size(3)});
}

int64_t isqrt_floor(int64_t n) {
  int64_t r = static_cast<int64_t>(std::sqrt(static_cast<double>(n)));
  while (r > 0 && r * r > n) --r;
  while ((r + 1) * (r + 1) <= n) ++r;
  return r;
}

// ---------------------------------------------------------------------------------------------- constant tables
// Twiddle and band tables, cached under keys made only of host integers (sizes, frequency ranges, band limits,
// dtype, device) and built on the target device (no host->device copy, no host read): after the first call of
// a size a call costs a map lookup.
std::mutex table_mutex;
std::map<std::string, at::Tensor>& table_cache() {
  static auto* cache = new std::map<std::string, at::Tensor>();  // never destroyed: outlives CUDA teardown
  return *cache;
}

template <class Build>
at::Tensor cached_table(const std::string& key, Build build) {
  {
    const std::lock_guard<std::mutex> lock(table_mutex);
    const auto it = table_cache().find(key);
    if (it != table_cache().end()) return it->second;
  }
  at::Tensor t = build();
  const std::lock_guard<std::mutex> lock(table_mutex);
  if (table_cache().size() > 256) table_cache().clear();  // bounded: a training run touches a handful of sizes
  table_cache().emplace(key, t);
  return t;
}

std::string table_key(const char* kind, std::initializer_list<int64_t> ints, const at::TensorOptions& opts) {
  std::string key = kind;
  for (const int64_t i : ints) key += "/" + std::to_string(i);
  return key + "/" + c10::toString(opts.dtype().toScalarType()) + "/" + opts.device().str();
}

// The lookup table h_v m of the bins: for a radial band cached under its host integers (built once, by a stage
// of the device); for a CPU weight map built per call (cheap, U V entries); none for a device weight map
// (building it each call would cost a launch: the stages then read the map itself).
void attach_table(Bins& b, const at::Tensor& x, const Stages& st) {
  if (b.empty()) return;
  const auto opts = x.options().dtype(x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat);
  if (!b.weight.defined())
    b.table = cached_table(table_key("band", {b.H, b.W, b.ur, b.V, b.q_lo, b.q_hi}, opts),
                           [&] { return st.band_table(b, opts); });
  else if (b.weight.is_cpu())
    b.table = st.band_table(b, opts);
}

// Which bins a call needs and how it transforms them. A radial band r <= r_hi touches the rows |u| <= ur
// and columns v < V given by q_hi alone. A weight map's support is read only for CPU tensors (for a device
// tensor that would be a host-device synchronisation): on CUDA every bin is kept. The band ratio (`ratio`)
// runs fused when forced or (on CUDA) for small planes; otherwise the transform is chosen by a cost model
// unless `path` forces one.
Bins make_bins(const at::Tensor& x, const c10::optional<at::Tensor>& weight_opt, int64_t q_lo, int64_t q_hi,
               int64_t path, bool ratio, const Stages& st) {
  TORCH_CHECK(path >= kAuto && path <= kFused, "jafr: path must be 0 (auto), 1 (partial), 2 (full) or 3 (fused), got ",
              path);
  Bins b;
  b.H = x.size(2);
  b.W = x.size(3);
  b.q_lo = q_lo;
  b.q_hi = q_hi;
  const int64_t H = b.H, W = b.W, Wr = W / 2 + 1;
  if (weight_opt.has_value() && weight_opt->defined()) {
    const at::Tensor& w = *weight_opt;
    TORCH_CHECK(w.dim() == 2 && w.size(0) == H && w.size(1) == Wr, "jafr: weight map must be (H, W//2+1) = (", H,
                ", ", Wr, "), got ", w.sizes());
    TORCH_CHECK(w.device() == x.device(), "jafr: weight map is on ", w.device(), " but x is on ", x.device());
    b.weight = w.to(compute_type(x)).contiguous();
    b.ur = H / 2;
    b.V = Wr;
    if (w.is_cpu()) {
      const at::Tensor nz = b.weight.ne(0);
      const at::Tensor row_any = nz.any(1), col_any = nz.any(0);
      const auto rows = row_any.accessor<bool, 1>();
      const auto cols = col_any.accessor<bool, 1>();
      int64_t ur = -1, V = 0;
      for (int64_t u = 0; u < H; ++u)
        if (rows[u]) ur = std::max(ur, std::min(u, H - u));
      for (int64_t v = Wr - 1; v >= 0 && V == 0; --v)
        if (cols[v]) V = v + 1;
      b.ur = std::max<int64_t>(ur, 0);
      b.V = ur < 0 ? 0 : V;
    }
  } else {
    b.ur = std::min(H / 2, isqrt_floor(q_hi / (W * W)));
    b.V = std::min(W / 2, isqrt_floor(q_hi / (H * H))) + 1;
  }
  const bool small = b.H <= kFusedMaxSide && b.W <= kFusedMaxSide;
  if (ratio && (path == kFused || (path == kAuto && st.fused_by_default && small))) {
    b.fused = true;
    attach_table(b, x, st);
    return b;
  }
  // Real multiply-adds per plane of the partial transform (forward), weighted by the device's GEMM cost,
  // against a full real FFT (~2.5 N log2 N flops). See Stages::gemm_cost for each device's factor.
  const double partial_cost = st.gemm_cost * (2.0 * b.V * H * W + 4.0 * b.U() * b.V * H);
  const double fft_cost = 2.5 * H * W * std::log2(static_cast<double>(H * W));
  b.full = !b.empty() && (path == kFull || (path != kPartial && partial_cost > fft_cost));
  if (b.full) {
    b.ur = H / 2;
    b.V = Wr;
  }
  attach_table(b, x, st);
  return b;
}

// (2, F, n) = [cos; -sin](2 pi f t / n) for t < n and the frequencies f in [0, a_end) then [b_begin, b_end).
at::Tensor twiddles(int64_t n, int64_t a_end, int64_t b_begin, int64_t b_end, const at::TensorOptions& opts) {
  return cached_table(table_key("twiddles", {n, a_end, b_begin, b_end}, opts), [&] {
    const auto lopt = opts.dtype(at::kLong);
    const at::Tensor f = at::cat({at::arange(0, a_end, lopt), at::arange(b_begin, b_end, lopt)});
    const at::Tensor t = at::arange(n, lopt);
    const at::Tensor phase = at::remainder(f.unsqueeze(1) * t.unsqueeze(0), n).to(at::kDouble) * (2.0 * M_PI / n);
    return at::stack({at::cos(phase), -at::sin(phase)}).to(opts.dtype()).contiguous();
  });
}

// Column twiddles (2, V, W) of columns v < V; row twiddles (2, U, H) of the rows of `bins`.
at::Tensor column_twiddles(const Bins& b, const at::TensorOptions& opts) { return twiddles(b.W, b.V, 0, 0, opts); }
at::Tensor row_twiddles(const Bins& b, const at::TensorOptions& opts) {
  const RowSet rows = b.rows();
  return twiddles(b.H, rows.ur + 1, rows.high_start(), b.H, opts);
}

// GEMM factors of the partial transform: (W, Vp) = [cos | -sin | 0] over columns v < V, and (H, 2U) =
// [cos | -sin] over the band's rows.
at::Tensor gemm_column_factor(const Bins& b, const at::TensorOptions& opts) {
  const int64_t Vp = padded_width(2 * b.V);
  return cached_table(table_key("gemm_columns", {b.W, b.V, Vp}, opts), [&] {
    const at::Tensor f = column_twiddles(b, opts).reshape({2 * b.V, b.W}).t();
    return at::constant_pad_nd(f, {0, Vp - 2 * b.V}).contiguous();
  });
}
at::Tensor gemm_row_factor(const Bins& b, const at::TensorOptions& opts) {
  return cached_table(table_key("gemm_rows", {b.H, b.ur}, opts),
                      [&] { return row_twiddles(b, opts).reshape({2 * b.U(), b.H}).t().contiguous(); });
}

// ---------------------------------------------------------------------------------------------- transforms
// Spectrum (P, U, V, 2) of contiguous planes (P, H, W) on the bins of `b`.
at::Tensor spectrum(const at::Tensor& planes, const Bins& b) {
  const int64_t P = planes.size(0), H = b.H, W = b.W;
  if (b.full) return at::view_as_real(at::fft_rfft2(planes)).contiguous();
  const int64_t U = b.U(), V = b.V, Vp = padded_width(2 * V);
  const at::Tensor cw = gemm_column_factor(b, planes.options());  // (W, Vp)
  const at::Tensor rh = gemm_row_factor(b, planes.options());     // (H, 2U)
  // Columns first: y[p, h, :] = [Re | Im | 0] of the 1-D DFT of each row, one (P H, W) x (W, Vp) GEMM.
  const at::Tensor y = at::mm(planes.view({P * H, W}), cw).view({P, H, Vp});
  // Then rows, computed transposed: z[p] = y[p]^T rh, (P, Vp, 2U).
  const at::Tensor z = at::matmul(y.transpose(1, 2), rh);
  const at::Tensor yr = z.slice(1, 0, V), yi = z.slice(1, V, 2 * V);  // (P, V, 2U)
  const at::Tensor re = yr.slice(2, 0, U) - yi.slice(2, U, 2 * U);     // cos Yr + sin Yi
  const at::Tensor im = yi.slice(2, 0, U) + yr.slice(2, U, 2 * U);     // cos Yi - sin Yr
  return at::stack({re, im}, -1).transpose(1, 2).contiguous();         // (P, U, V, 2)
}

// Re(sum_{rows u, v < V} G_uv e^{+2 pi i (u h / H + v w / W)}) for G (P, U, V, 2): the partial transform's adjoint.
at::Tensor partial_synthesis(const at::Tensor& g, const Bins& b) {
  const int64_t P = g.size(0), H = b.H, W = b.W, V = b.V, Vp = padded_width(2 * V);
  const at::Tensor cw = gemm_column_factor(b, g.options());  // (W, Vp)
  const at::Tensor rh = gemm_row_factor(b, g.options());     // (H, 2U)
  const at::Tensor gt = g.transpose(1, 2);                   // (P, V, U, 2)
  const at::Tensor gr = gt.select(3, 0), gi = gt.select(3, 1);
  // s[p] (Vp, 2U) = [[Gr^T, Gi^T], [Gi^T, -Gr^T], [0]] so that rh s[p]^T = [Re | Im] of the row synthesis.
  at::Tensor s = at::cat({at::cat({gr, gi}, 2), at::cat({gi, -gr}, 2)}, 1);  // (P, 2V, 2U)
  if (Vp > 2 * V) s = at::constant_pad_nd(s, {0, 0, 0, Vp - 2 * V});
  const at::Tensor q = at::matmul(s, rh.t()).transpose(1, 2).reshape({P * H, Vp});  // (P H, Vp)
  return at::mm(q, cw.t()).view({P, H, W});
}

// Band-gradient synthesis of G (P, U, V, 2) from the grad stages: Re(sum h_v G e^{+i..}) (P, H, W). The full
// path feeds G without h_v and scaled by N to irfft2 (N irfft2(G) = that sum: the mask is symmetric, so G's
// edge columns are Hermitian); the partial path applies the transform's adjoint.
at::Tensor synthesis(const at::Tensor& g, const Bins& b) {
  if (b.full) return at::fft_irfft2(at::view_as_complex(g), at::IntArrayRef({b.H, b.W}));
  return partial_synthesis(g, b);
}
double synthesis_scale(const Bins& b) { return b.full ? static_cast<double>(b.H * b.W) : 1.0; }

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

void check_sample_vector(const at::Tensor& t, int64_t B, const char* name) {
  TORCH_CHECK(t.dim() == 1 && t.size(0) == B, "jafr: ", name, " must have shape (B,) = (", B, "), got ", t.sizes());
}

}  // namespace

// ---------------------------------------------------------------------------------------------- energy ops
at::Tensor energy(const at::Tensor& x, const c10::optional<at::Tensor>& weight, int64_t q_lo, int64_t q_hi, int64_t power,
                  int64_t path, const Stages& st) {
  TORCH_CHECK(power == 1 || power == 2, "jafr: power must be 1 or 2, got ", power);
  const at::Tensor planes = as_planes(x);
  const Bins b = make_bins(x, weight, q_lo, q_hi, path, false, st);
  if (b.empty()) return at::zeros({x.size(0), x.size(1)}, planes.options());
  return st.energy(spectrum(planes, b), b, power).view({x.size(0), x.size(1)});
}

at::Tensor energy_backward(const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                           int64_t q_lo, int64_t q_hi, int64_t power, int64_t path, const Stages& st) {
  TORCH_CHECK(power == 1 || power == 2, "jafr: power must be 1 or 2, got ", power);
  const at::Tensor planes = as_planes(x);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == x.size(0) && grad.size(1) == x.size(1),
              "jafr: grad must have shape (B, C) = (", x.size(0), ", ", x.size(1), "), got ", grad.sizes());
  const Bins b = make_bins(x, weight, q_lo, q_hi, path, false, st);
  if (b.empty()) return at::zeros_like(x, at::MemoryFormat::Contiguous);
  const at::Tensor g = grad.to(planes.scalar_type()).contiguous().view({-1});
  const at::Tensor gs = st.energy_grad(spectrum(planes, b), b, power, g, synthesis_scale(b), !b.full);
  return synthesis(gs, b).view(x.sizes()).to(x.scalar_type());
}

at::Tensor mean_magnitude(const at::Tensor& x) { return at::abs(at::fft_rfft2(as_planes(x))).mean(0); }

at::Tensor mean_magnitude_backward(const at::Tensor& grad, const at::Tensor& x, const Stages& st) {
  const at::Tensor planes = as_planes(x);
  const int64_t P = planes.size(0), H = planes.size(1), W = planes.size(2);
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == H && grad.size(1) == W / 2 + 1,
              "jafr: grad must have shape (H, W//2+1) = (", H, ", ", W / 2 + 1, "), got ", grad.sizes());
  const at::Tensor spec = at::view_as_real(at::fft_rfft2(planes)).contiguous();
  const at::Tensor g = symmetrize_edge_columns(grad.to(planes.scalar_type()), W);
  // dx = Re(sum_{u, v half} (g/P) X/|X| e^{+i..}) = N irfft2(G / h_v), G Hermitian on the edge columns.
  const at::Tensor gc = at::view_as_complex(st.phasor(spec, g, W, static_cast<double>(H * W) / static_cast<double>(P)));
  return at::fft_irfft2(gc, at::IntArrayRef({H, W})).view(x.sizes()).to(x.scalar_type());
}

// ---------------------------------------------------------------------------------------------- band ratio (p = 2)
// value_b = rho_b = sum_c E_band(x_bc) / E_all(x_b) (or 1 - rho_b with `complement`), computed on
// x' = x 2^e_b (an exact power-of-two scale taken in the stage, so fp32 holds any finite sample); 0 for an
// all-zero sample, NaN for a sample holding NaN/Inf. stats (B, 2) = [e_b, E_all(x'_b)].
//
// Launches per call (CUDA): fused, 1; partial, 6 (max, scale, two GEMMs, value, finish); full, rfft2 in place of
// the GEMMs. The unfused stages run one thread block per (sample, chunk of rows) (see Chunks, spectral_math.h).
std::tuple<at::Tensor, at::Tensor> band_ratio(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                              int64_t q_lo, int64_t q_hi, bool complement, int64_t path,
                                              const Stages& st) {
  check_planes(x, "x");
  const at::Tensor xc = x.contiguous();
  const Bins b = make_bins(xc, weight, q_lo, q_hi, path, true, st);
  const auto acc = xc.options().dtype(compute_type(xc));
  if (b.fused) return st.fused_ratio(xc, b, column_twiddles(b, acc), row_twiddles(b, acc), complement);
  const int64_t C = x.size(1), P = x.size(0) * C, H = b.H, W = b.W;
  const bool partial = !b.full && !b.empty();
  const auto scaled = st.scale(xc, at::Tensor(), partial);
  const at::Tensor& xs = std::get<0>(scaled);
  const at::Tensor& parts = std::get<1>(scaled);
  if (b.empty()) return st.ratio_value(at::empty({0}, acc), 0, b, C, parts, complement);
  if (b.full) return st.ratio_value(at::view_as_real(at::fft_rfft2(xs)).contiguous(), 0, b, C, parts, complement);
  // Partial DFT on x' (H, P, W), one GEMM each way over the whole batch: y = x' cwg (H P, Vp), z = rwg^T y
  // (2U, P Vp).
  const int64_t Vp = padded_width(2 * b.V);
  const at::Tensor y = at::mm(xs.view({H * P, W}), gemm_column_factor(b, acc));
  const at::Tensor z = at::mm(gemm_row_factor(b, acc).t(), y.view({H, P * Vp}));
  return st.ratio_value(z, Vp, b, C, parts, complement);
}

// d(sum_b grad_b value_b)/dx = grad_b 2^e (2 S_b - 2 N rho_b x') / E_all(x'_b), S the band-weighted low-pass of x'
// (negated for the complement). Launches (CUDA): fused, 1; partial, 7 (scale, two GEMMs, grad, two GEMMs,
// combine), each GEMM one call over the whole batch.
at::Tensor band_ratio_backward(const at::Tensor& grad, const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                               int64_t q_lo, int64_t q_hi, bool complement, const at::Tensor& value,
                               const at::Tensor& stats, int64_t path, const Stages& st) {
  check_planes(x, "x");
  const int64_t B = x.size(0), C = x.size(1), P = B * C;
  check_sample_vector(grad, B, "grad");
  check_sample_vector(value, B, "value");
  TORCH_CHECK(stats.dim() == 2 && stats.size(0) == B && stats.size(1) == 2, "jafr: stats must have shape (B, 2) = (",
              B, ", 2), got ", stats.sizes());
  const at::Tensor xc = x.contiguous();
  const auto acc = compute_type(xc);
  const at::Tensor g = grad.to(acc);  // any stride: an expanded grad (from a mean) is read in place
  const at::Tensor val = value.to(acc).contiguous(), sts = stats.to(acc).contiguous();
  const Bins b = make_bins(xc, weight, q_lo, q_hi, path, true, st);
  const auto opts = xc.options().dtype(acc);
  if (b.fused)
    return st.fused_ratio_backward(g, xc, b, column_twiddles(b, opts), row_twiddles(b, opts), complement, val, sts);
  const int64_t H = b.H, W = b.W;
  if (b.empty()) return st.ratio_combine(at::zeros({P, H, W}, opts), false, xc, g, val, sts, complement);
  if (b.full) {
    const at::Tensor xs = std::get<0>(st.scale(xc, sts, false));
    const at::Tensor spec = at::view_as_real(at::fft_rfft2(xs)).contiguous();
    // N irfft2(G) = Re(sum h_v G e^{+i..}): the mask is symmetric, so G's edge columns are Hermitian.
    const at::Tensor gs = st.ratio_grad(spec, 0, b, C, g, val, sts, complement, static_cast<double>(H * W), false);
    const at::Tensor syn = at::fft_irfft2(at::view_as_complex(gs), at::IntArrayRef({H, W}));
    return st.ratio_combine(syn, false, xc, g, val, sts, complement);
  }
  // Partial DFT on x' (H, P, W) as in the forward, then its adjoint: q = rwg s (H, P Vp), syn = q cwg^T (H P, W).
  const int64_t Vp = padded_width(2 * b.V);
  const at::Tensor cwg = gemm_column_factor(b, opts), rwg = gemm_row_factor(b, opts);
  const at::Tensor xs = std::get<0>(st.scale(xc, sts, true));
  const at::Tensor y = at::mm(xs.view({H * P, W}), cwg);
  const at::Tensor z = at::mm(rwg.t(), y.view({H, P * Vp}));
  const at::Tensor s = st.ratio_grad(z, Vp, b, C, g, val, sts, complement, 1.0, true);
  const at::Tensor q = at::mm(rwg, s.view({2 * b.U(), P * Vp}));
  const at::Tensor syn = at::mm(q.view({H * P, Vp}), cwg.t());
  return st.ratio_combine(syn, true, xc, g, val, sts, complement);
}

// (value, dx = scale * d value / dx) in one call, the gradient of sum_b scale * value_b without an autograd graph.
// Launches (CUDA): fused, 1 (each plane's band spectrum feeds both); otherwise the forward and the backward
// above, composed (the backward's grad is `scale` expanded, no copy).
std::tuple<at::Tensor, at::Tensor> band_ratio_and_grad(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                                       int64_t q_lo, int64_t q_hi, bool complement, double scale,
                                                       int64_t path, const Stages& st) {
  check_planes(x, "x");
  const at::Tensor xc = x.contiguous();
  const Bins b = make_bins(xc, weight, q_lo, q_hi, path, true, st);
  const auto acc = xc.options().dtype(compute_type(xc));
  if (b.fused)
    return st.fused_ratio_and_grad(xc, b, column_twiddles(b, acc), row_twiddles(b, acc), complement, scale);
  const auto fwd = band_ratio(xc, weight, q_lo, q_hi, complement, path, st);
  const at::Tensor grad = at::full({1}, scale, acc).expand({x.size(0)});
  const at::Tensor dx = band_ratio_backward(grad, xc, weight, q_lo, q_hi, complement, std::get<0>(fwd),
                                            std::get<1>(fwd), path, st);
  return {std::get<0>(fwd), dx};
}

}  // namespace jafr

// ---------------------------------------------------------------------------------------------- registration
// One schema block for every op; implementations per dispatch key in spectral_cpu.cpp and spectral_cuda.cu.
// `path`: 0 auto, 1 partial, 2 full, 3 fused (see spectral.h). q_lo/q_hi: inclusive limits on the integer squared
// radius q = min(u, H-u)^2 W^2 + v^2 H^2 of the radial band, ignored where a weight map (H, W//2+1) is given.
TORCH_LIBRARY(jafr_cpp, m) {
  // (B, C) masked spectral energies sum h_v m |X|^power (power 1 or 2), in fp32 (fp64 for fp64 x).
  m.def("energy(Tensor x, Tensor? weight, int q_lo, int q_hi, int power, int path) -> Tensor");
  // Gradient of sum(grad * energy(x)) with respect to x, in x's dtype.
  m.def("energy_backward(Tensor grad, Tensor x, Tensor? weight, int q_lo, int q_hi, int power, int path) -> Tensor");
  // (H, W//2+1) mean over batch and channels of |rfft2(x)|, and its backward.
  m.def("mean_magnitude(Tensor x) -> Tensor");
  m.def("mean_magnitude_backward(Tensor grad, Tensor x) -> Tensor");
  // Power-2 band ratio per sample: (value (B,), stats (B, 2)); value = rho or 1 - rho (complement), 0 for an
  // all-zero sample, NaN for a sample holding NaN/Inf.
  m.def("band_ratio(Tensor x, Tensor? weight, int q_lo, int q_hi, bool complement, int path) -> (Tensor, Tensor)");
  // Gradient of sum(grad * value) with respect to x, in x's dtype; value and stats from band_ratio.
  m.def(
      "band_ratio_backward(Tensor grad, Tensor x, Tensor? weight, int q_lo, int q_hi, bool complement, Tensor value, "
      "Tensor stats, int path) -> Tensor");
  // (value, dx): band_ratio's value and the gradient of sum(scale * value) with respect to x (x's dtype), in one
  // pass over x; not differentiable itself.
  m.def(
      "band_ratio_and_grad(Tensor x, Tensor? weight, int q_lo, int q_hi, bool complement, float scale, int path) "
      "-> (Tensor, Tensor)");
}

namespace {
size_t table_cache_size() {
  const std::lock_guard<std::mutex> lock(jafr::table_mutex);
  return jafr::table_cache().size();
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "jafr_kernels C++/CUDA backend; the ops live in torch.ops.jafr_cpp";
  m.def("built_with_cuda", [] {
#ifdef JAFR_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("_table_cache_size", &table_cache_size, "number of cached constant tables (for tests)");
}
