// Spectral maths shared by the CPU loops (spectral_cpu.cpp) and the CUDA kernels (spectral_cuda.cu).
//
// Everything that decides *what* is computed lives here once, as HOST_DEVICE inline code: the per-bin maths
// (radius, mask, Hermitian weight, energy term), the per-sample scaling and ratio formulas, and every stage
// of the C++ backend written as a *routine*: a functor `r(item, block, work)` that processes one item (a
// plane or a sample) with the threads of a `Block`. The CUDA launcher runs one thread block per item (the
// routine's loops stride over blockDim.x threads, `block.sync()` is __syncthreads(), `work` is shared
// memory); the CPU launcher runs the very same routine with a `SerialBlock` (one thread, no-op sync, a
// scratch vector) inside at::parallel_for. The CPU tests therefore execute the CUDA kernels' arithmetic (the
// same per-output code and reduction operands); only the thread interleaving and the order in which a
// block walks its outputs differ (Block::for_2d).
//
// Notation (see jafr_kernels/reference.py): x real (B, C, H, W), X = rfft2(x) unnormalised, N = H W,
// h_v the Hermitian weight, m the mask, E_m = sum h_v m |X|^p, rho_b = sum_c E_low / E_all (p = 2).
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <type_traits>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define JAFR_HD __host__ __device__ __forceinline__
#else
#define JAFR_HD inline
#endif

// Host-only vectorisation hints for the dot products and reductions (empty in the device pass).
#if defined(__CUDA_ARCH__)
#define JAFR_SIMD_SUM(...)
#define JAFR_SIMD_MAX(...)
#else
#define JAFR_PRAGMA(x) _Pragma(#x)
#define JAFR_SIMD_SUM(...) JAFR_PRAGMA(omp simd reduction(+ : __VA_ARGS__))
#define JAFR_SIMD_MAX(...) JAFR_PRAGMA(omp simd reduction(max : __VA_ARGS__))
#endif

namespace jafr {

// ------------------------------------------------------------------------------------------ scalar helpers
template <typename T>
JAFR_HD T abs_value(T x) {
  return x < T(0) ? -x : x;  // NaN stays NaN
}

template <typename T>
JAFR_HD T quiet_nan() {
  return T(NAN);
}

JAFR_HD bool is_finite(double x) { return abs_value(x) <= DBL_MAX; }  // false for NaN and +-Inf

// ------------------------------------------------------------------------------------------ per-bin maths
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

// Energy term |X|^p of one bin (p = 1 or 2), before weighting.
template <typename T>
JAFR_HD T bin_energy(T re, T im, int power) {
  const T sq = re * re + im * im;
  return power == 2 ? sq : static_cast<T>(sqrt(sq));
}

// d(scale * |X|^p)/dX as a complex number (gr, gi): p = 2 -> 2 scale X; p = 1 -> scale X/|X| (0 at X = 0).
template <typename T>
JAFR_HD void bin_energy_grad(T re, T im, T scale, int power, T* gr, T* gi) {
  if (power == 2) {
    *gr = T(2) * scale * re;
    *gi = T(2) * scale * im;
    return;
  }
  const T mag = static_cast<T>(sqrt(re * re + im * im));
  const T f = mag > T(0) ? scale / mag : T(0);
  *gr = f * re;
  *gi = f * im;
}

// The rows a band transforms: frequencies u with min(u, H-u) <= ur, in increasing order (0..ur, then the
// negative frequencies high_start()..H-1). ur = H/2 selects every row in natural order.
struct RowSet {
  int H, ur;
  JAFR_HD int high_start() const { return ur + 1 > H - ur ? ur + 1 : H - ur; }
  JAFR_HD int count() const { return ur + 1 + H - high_start(); }
  JAFR_HD int row(int i) const { return i <= ur ? i : high_start() + (i - ur - 1); }
};

// The bins a call transforms (rows x columns 0..V-1 of an H x W plane) and the mask on them: the weight map
// (H, W/2+1) when given, else the radial band q_lo <= q <= q_hi. `table`, when set, holds h_v m on the
// transformed bins (U, V), built once from these same functions by BandTableRoutine: a lookup instead of
// the radius arithmetic per bin and plane.
template <typename T>
struct Band {
  int H, W;
  RowSet rows;
  int V;
  int64_t q_lo, q_hi;
  const T* weight;
  const T* table;

  JAFR_HD int U() const { return rows.count(); }
  // m at frequency (u, v).
  JAFR_HD T mask(int u, int v) const {
    if (weight != nullptr) return weight[static_cast<int64_t>(u) * (W / 2 + 1) + v];
    const int64_t q = squared_radius(u, v, H, W);
    return (q >= q_lo && q <= q_hi) ? T(1) : T(0);
  }
  // h_v m at bin (i, v), i the row's index in `rows`: the factor of |X|^2 in a half-spectrum energy.
  JAFR_HD T energy_weight(int i, int v) const {
    return table != nullptr ? table[i * V + v] : hermitian_weight<T>(v, W) * mask(rows.row(i), v);
  }
  // m at bin (i, v) (h_v is 1 or 2, so dividing the table entry by it is exact).
  JAFR_HD T mask_at(int i, int v) const {
    return table != nullptr ? table[i * V + v] / hermitian_weight<T>(v, W) : mask(rows.row(i), v);
  }
};

// ------------------------------------------------------------------------------------------ per-sample scaling
// The ratio is scale invariant, so each sample is multiplied by an exact power of two 2^e that puts its
// max |x| in [0.5, 1): N sum x'^2 then neither overflows nor underflows in fp32 for any finite sample,
// subnormal ones included, and x' = x 2^e is exact. e = 0 for an all-zero sample. max_abs must be finite.
JAFR_HD int pow2_exponent(double max_abs) {
  if (!(max_abs > 0)) return 0;
  int k = 0;
  frexp(max_abs, &k);  // max_abs = f 2^k, f in [0.5, 1)
  return -k;
}

// Multiplication by 2^e as two factors that are each representable in T (|e| can reach 150 in fp32).
template <typename T>
struct Pow2 {
  T f1, f2;
  JAFR_HD explicit Pow2(int e)
      : f1(static_cast<T>(ldexp(1.0, e / 2))), f2(static_cast<T>(ldexp(1.0, e - e / 2))) {}
  JAFR_HD T apply(T x) const { return (x * f1) * f2; }
};

// value_b from the band energy and E_all of the scaled sample: rho = e_low / e_all, or 1 - rho with
// `complement`; 0 for an all-zero sample (e_all = 0); NaN when the sample held NaN/Inf (e_all = NaN).
template <typename T>
JAFR_HD T ratio_value(double e_low, double e_all, bool complement) {
  if (e_all > 0) {
    const double rho = e_low / e_all;
    return static_cast<T>(complement ? 1.0 - rho : rho);
  }
  return e_all == 0 ? T(0) : quiet_nan<T>();
}

// Coefficients of the ratio's gradient. With x' = 2^e x and S = sum_{u, v half} h_v m Re(X' e^{+i..}),
// d rho / dx = 2^e (2 S - 2 N rho x') / E_all(x'), so grad * d value / dx = 2^e (k * 2 S - c2 * x') with
// k = g / E_all, c2 = 2 N k rho, g = grad (or -grad for the complement). Zero for an all-zero sample, NaN
// for a non-finite one.
template <typename T>
struct RatioGrad {
  T k, c2;
  JAFR_HD RatioGrad(T grad, T value, T e_all, bool complement, int64_t N) {
    if (e_all > T(0)) {
      const T rho = complement ? T(1) - value : value;
      k = (complement ? -grad : grad) / e_all;
      c2 = T(2) * static_cast<T>(N) * k * rho;
    } else {
      k = c2 = (e_all == T(0)) ? T(0) : quiet_nan<T>();
    }
  }
};

// ------------------------------------------------------------------------------------------ blocks
// A Block is the group of threads that runs one item of a routine: thread()/threads() for strided loops,
// for_2d(rows, cols, f) to call f(r, c) once for every cell of a rows x cols grid (split over the threads),
// for_rows(rows, cols, f) to call f(r, c_begin, c_end) on runs of cells that together cover the grid once
// (whole rows on the CPU, so the run's loop vectorises; single cells on CUDA), sync() as a barrier, and
// sum/max reductions whose result every thread receives.
//
// The serial block of the CPU launcher: one thread, nothing to synchronise or reduce; grids are walked
// row by row (the CUDA block walks them by flat index, k -> (k / cols, k % cols)).
struct SerialBlock {
  JAFR_HD int thread() const { return 0; }
  JAFR_HD int threads() const { return 1; }
  template <class F>
  JAFR_HD void for_2d(int rows, int cols, F&& f) const {
    for (int r = 0; r < rows; ++r)
      for (int c = 0; c < cols; ++c) f(r, c);
  }
  template <class F>
  JAFR_HD void for_rows(int rows, int cols, F&& f) const {
    for (int r = 0; r < rows; ++r) f(r, 0, cols);
  }
  JAFR_HD void sync() const {}
  JAFR_HD double sum(double v) const { return v; }
  JAFR_HD double max(double v) const { return v; }
};

// ------------------------------------------------------------------------------------------ stage routines
// Each routine documents its item (what one block processes) and its work buffer (`work_elems()`, in T).
// Spectra are (P, U, V, 2) [re, im] in the compute dtype T, rows in RowSet order; per-sample stats are
// (B, 2) = [e, E_all(x 2^e)] (e the power-of-two exponent, E_all = N sum (x 2^e)^2).

// Compute dtype of an input dtype: fp64 for fp64, else fp32.
template <typename in_t>
using acc_type = typename std::conditional<std::is_same<in_t, double>::value, double, float>::type;

// The band's lookup table (U, V) = h_v m from the band's own functions (band.table must be null). Item: row i.
template <typename T>
struct BandTableRoutine {
  Band<T> band;
  T* out;

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t i, const Block& blk, T*) const {
    for (int v = blk.thread(); v < band.V; v += blk.threads())
      out[i * band.V + v] = band.energy_weight(static_cast<int>(i), v);
  }
};

// E[p] = sum_{i, v} h_v m |X|^p. Item: plane p.
template <typename T>
struct EnergyRoutine {
  const T* spec;
  Band<T> band;
  int power;
  T* out;

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t p, const Block& blk, T*) const {
    const int U = band.U(), V = band.V;
    const T* s = spec + p * U * V * 2;
    double acc = 0.0;  // double sums: up to ~1e5 bins stay far below fp32 rounding
    blk.for_2d(U, V, [&](int i, int v) {
      const T w = band.energy_weight(i, v);
      const int k = i * V + v;
      if (w != T(0)) acc += static_cast<double>(w * bin_energy(s[2 * k], s[2 * k + 1], power));
    });
    acc = blk.sum(acc);
    if (blk.thread() == 0) out[p] = static_cast<T>(acc);
  }
};

// G = grad[p * grad_stride] * scale * (hermitian ? h_v : 1) * m * d|X|^p/dX, (P, U, V, 2). Item: plane p.
template <typename T>
struct EnergyGradRoutine {
  const T* spec;
  Band<T> band;
  int power;
  const T* grad;
  int64_t grad_stride;
  T scale;
  bool hermitian;
  T* out;

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t p, const Block& blk, T*) const {
    const int U = band.U(), V = band.V;
    const T coef = grad[p * grad_stride] * scale;
    const T* s = spec + p * U * V * 2;
    T* o = out + p * U * V * 2;
    blk.for_2d(U, V, [&](int i, int v) {
      const int k = i * V + v;
      const T m = hermitian ? band.energy_weight(i, v) : band.mask_at(i, v);
      bin_energy_grad(s[2 * k], s[2 * k + 1], coef * m, power, o + 2 * k, o + 2 * k + 1);
    });
  }
};

// G = scale * g[i, v] * X / |X| (0 where X = 0), divided by h_v, (P, U, V, 2): the mean-magnitude backward.
// Item: plane p.
template <typename T>
struct PhasorRoutine {
  const T* spec;
  const T* g;  // (U, V)
  int U, V, W;
  T scale;
  T* out;

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t p, const Block& blk, T*) const {
    const T* s = spec + p * U * V * 2;
    T* o = out + p * U * V * 2;
    blk.for_2d(U, V, [&](int i, int v) {
      const int k = i * V + v;
      const T f = scale * g[k] / hermitian_weight<T>(v, W);
      bin_energy_grad(s[2 * k], s[2 * k + 1], f, 1, o + 2 * k, o + 2 * k + 1);
    });
  }
};

// ------------------------------------------------------------------------------------------ band ratio, unfused
// The band ratio for planes the fused routine does not serve, around ATen transforms (spectral.cpp):
//   forward:  SampleMaxRoutine -> ScaleRoutine -> transform of x' -> RatioValueRoutine -> RatioFinishRoutine;
//   backward: ScaleRoutine -> transform of x' -> RatioGradRoutine -> adjoint transform -> RatioCombineRoutine.
// For the partial DFT the planes are laid out "row-major across planes", x' as (H, P, W), so that each
// transform is one GEMM over the whole batch: y = x' (H P, W) @ cwg (W, Vp) with cwg = [cos | -sin | 0] over
// v < V, then z = rwg^T (2U, H) @ y (H, P Vp) with rwg = [cos | -sin] over the band's rows; the adjoint runs
// the same GEMMs transposed. The full path uses rfft2/irfft2 on (P, H, W) planes.
//
// Every stage but the finish splits a sample into `chunks` runs of whole rows (its C H rows of x, or its C U
// rows of the band spectrum) of about kChunkElems values each, one item per (sample, chunk): item = b * chunks
// + j. On CUDA a sample is then many thread blocks, not one: with one block per sample a 3 x 224 x 224 sample
// was streamed by 256 threads with one load in flight each, and a batch of 32 used 32 multiprocessors (the
// C++ backend's 2.4 ms per forward+backward at (32, 3, 224, 224) on an H100). Reductions over a sample are
// two-level: each chunk writes its partial result, the next stage combines a sample's partials.
constexpr int64_t kChunkElems = 8192;

// A sample's `rows` rows (of `cols` values) as `count` runs of `per` rows; run j is rows [begin(j), end(j)).
struct Chunks {
  int rows = 0, per = 1, count = 1;
  JAFR_HD int begin(int j) const { return j * per; }
  JAFR_HD int end(int j) const { return (j + 1) * per < rows ? (j + 1) * per : rows; }
};

inline Chunks make_chunks(int64_t rows, int64_t cols) {
  Chunks c;
  c.rows = static_cast<int>(rows);
  c.per = static_cast<int>(std::max<int64_t>(1, kChunkElems / std::max<int64_t>(cols, 1)));
  c.count = static_cast<int>(std::max<int64_t>(1, (rows + c.per - 1) / c.per));
  return c;
}

// Where plane p's row h starts in a (P, H, W) or, with `hpw`, an (H, P, W) buffer.
JAFR_HD int64_t plane_row_offset(int64_t p, int h, int64_t P, int H, int W, bool hpw) {
  return (hpw ? static_cast<int64_t>(h) * P + p : p * H + h) * W;
}

// Max |x| over a sample's n values, reduced over the block (NaN values are skipped: the comparison is false).
template <typename in_t, class Block>
JAFR_HD double sample_max_abs(const in_t* xb, int64_t n, const Block& blk) {
  using M = acc_type<in_t>;
  M m = 0;
  JAFR_SIMD_MAX(m)
  for (int64_t k = blk.thread(); k < n; k += blk.threads()) {
    const M a = abs_value(static_cast<M>(xb[k]));
    m = a > m ? a : m;
  }
  return blk.max(static_cast<double>(m));
}

// Partial maxima: parts[item] = max |x| over the rows of one chunk of sample b (C H rows of W). Item: (b, j).
template <typename in_t, typename T>
struct SampleMaxRoutine {
  const in_t* x;
  int W;
  int64_t sample;  // C H W
  Chunks chunks;
  T* parts;  // (B, chunks) maxima

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t item, const Block& blk, T*) const {
    const int64_t b = item / chunks.count;
    const int j = static_cast<int>(item % chunks.count);
    const int64_t r0 = chunks.begin(j), r1 = chunks.end(j);
    const double m = sample_max_abs(x + b * sample + r0 * W, (r1 - r0) * W, blk);
    if (blk.thread() == 0) parts[item] = static_cast<T>(m);  // |x| of an fp16/bf16/fp32 value is exact in T
  }
};

// Max |x| of sample b from its chunks' partial maxima; false if the sample holds +-Inf (NaN is found later,
// through its square sums).
template <typename T>
JAFR_HD bool sample_scale(const T* maxima, int64_t b, int count, int* e) {
  double m = 0.0;
  for (int j = 0; j < count; ++j) {
    const double v = static_cast<double>(maxima[b * count + j]);
    m = v > m ? v : m;
  }
  const bool finite = is_finite(m);
  *e = finite ? pow2_exponent(m) : 0;
  return finite;
}

// x' = x 2^e in T as (P, H, W) or (H, P, W) (`hpw`) planes, over one chunk of the sample's C H rows, and
// the chunk's sum of x'^2 into sums[item] (NaN when the sample holds +-Inf). e comes from `stats_in` (the
// backward reuses the forward's scale; `sums` is then not written) or from the chunks' maxima. Item: (b, j).
template <typename in_t, typename T>
struct ScaleRoutine {
  const in_t* x;
  int C, H, W;
  int64_t P;  // planes in the batch, B C
  bool hpw;
  Chunks chunks;
  const T* stats_in;  // (B, 2) or null
  const T* maxima;    // (B, chunks), read when stats_in is null
  T* xs;
  T* sums;  // (B, chunks), written when stats_in is null

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t item, const Block& blk, T*) const {
    const int64_t b = item / chunks.count;
    const int j = static_cast<int>(item % chunks.count);
    const in_t* xb = x + b * static_cast<int64_t>(C) * H * W;
    int e = 0;
    bool finite = true;
    if (stats_in != nullptr)
      e = static_cast<int>(stats_in[2 * b]);
    else
      finite = sample_scale(maxima, b, chunks.count, &e);
    const Pow2<T> s(e);
    const int r0 = chunks.begin(j);
    double sumsq = 0.0;  // NaN if the sample holds NaN
    blk.for_rows(chunks.end(j) - r0, W, [&](int r, int w0, int w1) {
      const int ch = r0 + r;
      const in_t* src = xb + static_cast<int64_t>(ch) * W;
      T* dst = xs + plane_row_offset(b * C + ch / H, ch % H, P, H, W, hpw);
      T part = 0;  // |x'| <= 1: a row's partial sum is exact to fp32 rounding
      JAFR_SIMD_SUM(part)
      for (int w = w0; w < w1; ++w) {
        const T v = s.apply(static_cast<T>(src[w]));
        dst[w] = v;
        part += v * v;
      }
      sumsq += static_cast<double>(part);
    });
    if (stats_in != nullptr) return;
    sumsq = blk.sum(sumsq);
    if (blk.thread() == 0) sums[item] = finite ? static_cast<T>(sumsq) : quiet_nan<T>();
  }
};

// Read access to the band spectrum of P planes, bin (i, v) of plane p: canonical (P, U, V, 2) [re, im]
// (Vp == 0), or the partial-DFT GEMM output z (2U, P, Vp), where Re X = z[i][p][v] - z[U+i][p][V+v] and
// Im X = z[i][p][V+v] + z[U+i][p][v] (z's rows are the cos and -sin halves of the row transform, its
// columns the real and imaginary halves of the column transform).
template <typename T>
struct SpecView {
  const T* data;
  int64_t P;
  int U, V, Vp;
  JAFR_HD void get(int64_t p, int i, int v, T* re, T* im) const {
    if (Vp == 0) {
      const T* s = data + ((p * U + i) * V + v) * 2;
      *re = s[0];
      *im = s[1];
      return;
    }
    const T* c = data + (static_cast<int64_t>(i) * P + p) * Vp;
    const T* sn = data + (static_cast<int64_t>(U + i) * P + p) * Vp;
    *re = c[v] - sn[V + v];
    *im = c[V + v] + sn[v];
  }
};

// Partial band energies: parts[item] = sum h_v m |X'|^2 over one chunk of the C U band rows of sample b
// (row r: plane c = r / U, band row i = r % U). Item: (b, j).
template <typename T>
struct RatioValueRoutine {
  SpecView<T> spec;
  Band<T> band;
  int C;
  Chunks chunks;
  T* parts;  // (B, chunks)

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t item, const Block& blk, T*) const {
    const int64_t b = item / chunks.count;
    const int j = static_cast<int>(item % chunks.count);
    const int U = band.U(), r0 = chunks.begin(j);
    double acc = 0.0;
    blk.for_2d(chunks.end(j) - r0, band.V, [&](int r, int v) {
      const int i = (r0 + r) % U;
      const T w = band.energy_weight(i, v);
      if (w == T(0)) return;
      T re, im;
      spec.get(b * C + (r0 + r) / U, i, v, &re, &im);
      acc += static_cast<double>(w * bin_energy(re, im, 2));
    });
    acc = blk.sum(acc);
    if (blk.thread() == 0) parts[item] = static_cast<T>(acc);
  }
};

// value_b and stats_b = [e_b, E_all(x'_b)] from the chunks' partial maxima, square sums and band energies.
// Item: sample b.
template <typename T>
struct RatioFinishRoutine {
  const T* maxima;  // (B, x_chunks)
  const T* sums;    // (B, x_chunks)
  int x_chunks;
  const T* energies;  // (B, bin_chunks)
  int bin_chunks;
  int64_t N;  // H W
  bool complement;
  T* value;
  T* stats;

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t b, const Block& blk, T*) const {
    if (blk.thread() != 0) return;
    int e = 0;
    const bool finite = sample_scale(maxima, b, x_chunks, &e);
    double sumsq = 0.0, e_band = 0.0;
    for (int j = 0; j < x_chunks; ++j) sumsq += static_cast<double>(sums[b * x_chunks + j]);
    for (int j = 0; j < bin_chunks; ++j) e_band += static_cast<double>(energies[b * bin_chunks + j]);
    const double e_all = finite ? static_cast<double>(N) * sumsq : static_cast<double>(quiet_nan<T>());
    value[b] = ratio_value<T>(e_band, e_all, complement);
    stats[2 * b] = static_cast<T>(e);
    stats[2 * b + 1] = static_cast<T>(e_all);
  }
};

// The ratio's band gradient before synthesis, G = k_b * scale * (hermitian ? h_v : 1) * m * 2X over one chunk
// of the C U band rows of sample b, written in place over the spectrum it reads, in the same layout:
// canonical (P, U, V, 2) (scale N, no h_v: for irfft2), or the partial DFT's GEMM layout (2U, P, Vp), where it
// becomes the adjoint's GEMM operand s = [[Gr, Gi, 0], [Gi, -Gr, 0]] per plane (rows i then U + i, columns
// v, V + v, padding) so that rwg (H, 2U) @ s then @ cwg^T synthesise Re(sum h_v G e^{+i..}). Each bin's reads
// and writes touch the same entries (two for canonical, four for GEMM), so working in place is safe.
// Item: (b, j).
template <typename T>
struct RatioGradRoutine {
  SpecView<T> spec;
  Band<T> band;
  int C;
  Chunks chunks;
  const T* grad;
  int64_t grad_stride;
  const T* value;
  const T* stats;
  bool complement;
  T scale;
  bool hermitian;
  T* out;  // spec.data

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t item, const Block& blk, T*) const {
    const int64_t b = item / chunks.count;
    const int j = static_cast<int>(item % chunks.count);
    const int U = band.U(), V = band.V, Vp = spec.Vp, r0 = chunks.begin(j), rows = chunks.end(j) - r0;
    const int64_t P = spec.P;
    const T k = RatioGrad<T>(grad[b * grad_stride], value[b], stats[2 * b + 1], complement,
                             static_cast<int64_t>(band.H) * band.W)
                    .k;
    blk.for_2d(rows, V, [&](int r, int v) {
      const int i = (r0 + r) % U;
      const int64_t p = b * C + (r0 + r) / U;
      T re, im, gr, gi;
      spec.get(p, i, v, &re, &im);
      const T m = hermitian ? band.energy_weight(i, v) : band.mask_at(i, v);
      bin_energy_grad(re, im, k * scale * m, 2, &gr, &gi);
      if (Vp == 0) {
        T* o = out + ((p * U + i) * V + v) * 2;
        o[0] = gr;
        o[1] = gi;
      } else {
        T* c = out + (static_cast<int64_t>(i) * P + p) * Vp;
        T* sn = out + (static_cast<int64_t>(U + i) * P + p) * Vp;
        c[v] = gr;
        c[V + v] = gi;
        sn[v] = gi;
        sn[V + v] = -gr;
      }
    });
    if (Vp > 2 * V)  // z's padding columns are already zero (the column factor's are); kept exact regardless
      blk.for_2d(2 * rows, Vp - 2 * V, [&](int rr, int pad) {
        const int r = r0 + rr / 2, i = r % U + (rr % 2) * U;
        out[(static_cast<int64_t>(i) * P + b * C + r / U) * Vp + 2 * V + pad] = T(0);
      });
  }
};

// dx = 2^e (syn - c2 x 2^e) in x's dtype over one chunk of the sample's C H rows, syn the synthesised band
// gradient (2 k S) as (P, H, W) or, with `hpw`, (H, P, W) planes. dx may be syn itself (same layout and
// dtype: each entry is read, then written). Item: (b, j).
template <typename in_t, typename T>
struct RatioCombineRoutine {
  const T* syn;
  bool hpw;
  const in_t* x;
  int C, H, W;
  int64_t P;
  Chunks chunks;
  const T* grad;
  int64_t grad_stride;
  const T* value;
  const T* stats;
  bool complement;
  in_t* dx;

  static int64_t work_elems() { return 0; }
  template <class Block>
  JAFR_HD void operator()(int64_t item, const Block& blk, T*) const {
    const int64_t b = item / chunks.count;
    const int j = static_cast<int>(item % chunks.count);
    const int64_t n = static_cast<int64_t>(C) * H * W;
    const RatioGrad<T> c(grad[b * grad_stride], value[b], stats[2 * b + 1], complement, static_cast<int64_t>(H) * W);
    const Pow2<T> s(static_cast<int>(stats[2 * b]));
    const in_t* xb = x + b * n;
    in_t* db = dx + b * n;
    const int r0 = chunks.begin(j);
    blk.for_rows(chunks.end(j) - r0, W, [&](int r, int w0, int w1) {
      const int ch = r0 + r;
      const T* sr = syn + plane_row_offset(b * C + ch / H, ch % H, P, H, W, hpw);
      const in_t* xr = xb + static_cast<int64_t>(ch) * W;
      in_t* dr = db + static_cast<int64_t>(ch) * W;
      for (int w = w0; w < w1; ++w) dr[w] = static_cast<in_t>(s.apply(sr[w] - c.c2 * s.apply(static_cast<T>(xr[w]))));
    });
  }
};

// ------------------------------------------------------------------------------------------ fused ratio
// The whole power-2 ratio of one sample in one block, for planes small enough that one plane and its band
// spectrum fit in shared memory (the CUDA backend uses it up to 64 x 64). Separable band-limited DFT:
//   Y[v][h] = sum_w x'[h][w] cw[v][w]            (columns v < V; cw = e^{-2 pi i v w / W})
//   X[i][v] = sum_h Y[v][h] rw[i][h]             (rows u_i of the band; rw = e^{-2 pi i u_i h / H})
// and its adjoint for the backward (Z[v][h] = sum_i G[i][v] conj(rw[i][h]), S[h][w] = Re sum_v Z[v][h]
// conj(cw[v][w])). cw (2, V, W) and rw (2, U, H) are [Re; Im] twiddle tables built once per size.
// Work buffer (T): the scaled plane H x XS, then Y (later Z) 2 x V x YS, then G 2 x U x V. XS and YS are
// odd strides, so threads that walk h read distinct shared-memory banks.
struct FusedLayout {
  int H, W, U, V;
  JAFR_HD int xs_stride() const { return W | 1; }
  JAFR_HD int ys_stride() const { return H | 1; }
  JAFR_HD int64_t plane_elems() const { return static_cast<int64_t>(H) * xs_stride(); }
  JAFR_HD int64_t y_elems() const { return 2 * static_cast<int64_t>(V) * ys_stride(); }
  JAFR_HD int64_t g_elems() const { return 2 * static_cast<int64_t>(U) * V; }
  JAFR_HD int64_t elems(bool backward) const { return plane_elems() + y_elems() + (backward ? g_elems() : 0); }
};

template <typename T>
struct FusedTables {
  const T* cw;  // (2, V, W)
  const T* rw;  // (2, U, H)
};

// Loads one plane as x' = x 2^e into `xs` (row stride XS); returns this thread's sum of x'^2.
template <typename in_t, typename T, class Block>
JAFR_HD double fused_load_plane(const in_t* xp, const Pow2<T>& s, const FusedLayout& L, T* xs, const Block& blk) {
  double sumsq = 0.0;
  const int XS = L.xs_stride(), W = L.W;
  blk.for_rows(L.H, W, [&](int h, int w0, int w1) {
    T part = 0;
    JAFR_SIMD_SUM(part)
    for (int w = w0; w < w1; ++w) {
      const T v = s.apply(static_cast<T>(xp[h * W + w]));
      xs[h * XS + w] = v;
      part += v * v;
    }
    sumsq += static_cast<double>(part);
  });
  return sumsq;
}

// Y[v][h] = sum_w x'[h][w] cw[v][w], stored re at y[v YS + h], im at y[(V + v) YS + h].
template <typename T, class Block>
JAFR_HD void fused_column_dft(const T* xs, const FusedLayout& L, const FusedTables<T>& tab, T* y, const Block& blk) {
  const int W = L.W, V = L.V, XS = L.xs_stride(), YS = L.ys_stride();
  blk.for_2d(V, L.H, [&](int v, int h) {
    const T* row = xs + h * XS;
    const T* cr = tab.cw + v * W;
    const T* ci = tab.cw + (V + v) * W;
    T re = 0, im = 0;
    JAFR_SIMD_SUM(re, im)
    for (int w = 0; w < W; ++w) {
      re += row[w] * cr[w];
      im += row[w] * ci[w];
    }
    y[v * YS + h] = re;
    y[(V + v) * YS + h] = im;
  });
}

// X[i][v] = sum_h Y[v][h] rw[i][h], as (re, im).
template <typename T>
JAFR_HD void fused_row_dft(const T* y, const FusedLayout& L, const FusedTables<T>& tab, int i, int v, T* re, T* im) {
  const int H = L.H, U = L.U, V = L.V, YS = L.ys_stride();
  const T* yr = y + v * YS;
  const T* yi = y + (V + v) * YS;
  const T* rr = tab.rw + i * H;
  const T* ri = tab.rw + (U + i) * H;
  T a = 0, b = 0;
  JAFR_SIMD_SUM(a, b)
  for (int h = 0; h < H; ++h) {
    a += yr[h] * rr[h] - yi[h] * ri[h];
    b += yr[h] * ri[h] + yi[h] * rr[h];
  }
  *re = a;
  *im = b;
}

// Z[v][h] = sum_i G[i][v] conj(rw[i][h]) from a band gradient G (2, U, V), written over Y's storage (re at
// y[v YS + h], im at y[(V + v) YS + h]): the first half of the synthesis.
template <typename T, class Block>
JAFR_HD void fused_row_synthesis(const T* g, const FusedLayout& L, const FusedTables<T>& tab, T* y, const Block& blk) {
  const int H = L.H, U = L.U, V = L.V, YS = L.ys_stride();
  blk.for_2d(V, H, [&](int v, int h) {
    T zr = 0, zi = 0;
    for (int i = 0; i < U; ++i) {
      const T gr = g[i * V + v], gi = g[U * V + i * V + v];
      const T rr = tab.rw[i * H + h], ri = tab.rw[(U + i) * H + h];
      zr += gr * rr + gi * ri;
      zi += gi * rr - gr * ri;
    }
    y[v * YS + h] = zr;
    y[(V + v) * YS + h] = zi;
  });
}

// Re sum_v Z[v][h] conj(cw[v][w]): the synthesis at (h, w), from fused_row_synthesis's Z.
template <typename T>
JAFR_HD T fused_column_synthesis(const T* y, const FusedLayout& L, const FusedTables<T>& tab, int h, int w) {
  const int W = L.W, V = L.V, YS = L.ys_stride();
  T acc = 0;
  for (int v = 0; v < V; ++v)
    acc += y[v * YS + h] * tab.cw[v * W + w] + y[(V + v) * YS + h] * tab.cw[(V + v) * W + w];
  return acc;
}

// A sample's scale exponent and band sums (x' = x 2^e; E_low over the band rectangle; E_all = N sum x'^2,
// NaN when the sample holds NaN).
struct FusedSums {
  int e;
  double e_low, e_all;
};

// The per-sample pass of FusedRatioForward and FusedRatioValueGrad: the scale 2^e from the sample's max |x|,
// then plane by plane x' into xs, its column DFT into Y and the band rectangle's energy. With `g` non-null,
// each bin's unit band gradient G = 2 h_v m X' is also written to g (2, U, V) and `after_bins(c)` runs once the
// plane's bins are done; xs, Y and g keep that plane until the next one. Returns false (block-uniformly, having
// done nothing else) when the sample holds +-Inf. Synchronisation: one reduction for max |x|, two barriers per
// plane (three with g), two final reductions whose results every thread receives.
template <typename in_t, typename T, class Block, class AfterBins>
JAFR_HD bool fused_band_sums(const in_t* xb, int C, const Band<T>& band, const FusedTables<T>& tab, const Block& blk,
                             T* work, T* g, AfterBins&& after_bins, FusedSums* sums) {
  const FusedLayout L{band.H, band.W, band.U(), band.V};
  const int64_t HW = static_cast<int64_t>(L.H) * L.W;
  const double m = sample_max_abs(xb, C * HW, blk);
  if (!is_finite(m)) return false;  // block-uniform: m is the reduced value; NaN shows in E_all instead
  const int e = pow2_exponent(m);
  const Pow2<T> s(e);
  T* xs = work;
  T* y = work + L.plane_elems();
  double e_low = 0.0, sumsq = 0.0;
  for (int c = 0; c < C; ++c) {
    // Without after_bins no barrier is needed before the load: every thread has passed the previous plane's
    // second barrier, so the column stage that read xs is done; the bin stage reads only Y, which the column
    // stage below writes after the next barrier. With it, after_bins must first be done with xs, Y and g.
    if (g != nullptr) blk.sync();
    sumsq += fused_load_plane(xb + c * HW, s, L, xs, blk);
    blk.sync();
    fused_column_dft(xs, L, tab, y, blk);
    blk.sync();
    blk.for_2d(L.U, L.V, [&](int i, int v) {
      const T w = band.energy_weight(i, v);
      T re = 0, im = 0;
      if (w != T(0)) {
        fused_row_dft(y, L, tab, i, v, &re, &im);
        e_low += static_cast<double>(w * bin_energy(re, im, 2));
      }
      if (g != nullptr) bin_energy_grad(re, im, w, 2, g + i * L.V + v, g + L.U * L.V + i * L.V + v);
    });
    if (g != nullptr) after_bins(c);
  }
  sums->e = e;
  sums->e_low = blk.sum(e_low);
  sums->e_all = static_cast<double>(HW) * blk.sum(sumsq);
  return true;
}

// Forward: value_b and stats_b. Item: sample b. Synchronisation: that of fused_band_sums without g.
template <typename in_t, typename T>
struct FusedRatioForward {
  const in_t* x;
  int C;
  Band<T> band;
  FusedTables<T> tab;
  bool complement;
  T* value;
  T* stats;

  int64_t work_elems() const { return FusedLayout{band.H, band.W, band.U(), band.V}.elems(false); }

  template <class Block>
  JAFR_HD void operator()(int64_t b, const Block& blk, T* work) const {
    const int64_t HW = static_cast<int64_t>(band.H) * band.W;
    FusedSums sums;
    const bool finite = fused_band_sums(x + b * C * HW, C, band, tab, blk, work, static_cast<T*>(nullptr), [](int) {},
                                        &sums);
    if (blk.thread() != 0) return;
    if (!finite) {  // +-Inf in the sample
      value[b] = quiet_nan<T>();
      stats[2 * b] = T(0);
      stats[2 * b + 1] = quiet_nan<T>();
      return;
    }
    value[b] = ratio_value<T>(sums.e_low, sums.e_all, complement);
    stats[2 * b] = static_cast<T>(sums.e);
    stats[2 * b + 1] = static_cast<T>(sums.e_all);
  }
};

// Backward: dx_b = grad_b * d value_b / dx_b in x's dtype. Item: sample b. Five barriers per plane.
template <typename in_t, typename T>
struct FusedRatioBackward {
  const in_t* x;
  int C;
  Band<T> band;
  FusedTables<T> tab;
  bool complement;
  const T* grad;
  int64_t grad_stride;
  const T* value;
  const T* stats;
  in_t* dx;

  int64_t work_elems() const { return FusedLayout{band.H, band.W, band.U(), band.V}.elems(true); }

  template <class Block>
  JAFR_HD void operator()(int64_t b, const Block& blk, T* work) const {
    const FusedLayout L{band.H, band.W, band.U(), band.V};
    const int H = L.H, W = L.W, U = L.U, V = L.V, XS = L.xs_stride();
    const int64_t HW = static_cast<int64_t>(H) * W;
    const in_t* xb = x + b * C * HW;
    in_t* db = dx + b * C * HW;
    const T e_all = stats[2 * b + 1];
    const RatioGrad<T> coef(grad[b * grad_stride], value[b], e_all, complement, HW);
    if (!(e_all > T(0))) {  // all-zero sample: zero gradient; non-finite sample: NaN (block-uniform)
      for (int64_t k = blk.thread(); k < C * HW; k += blk.threads()) db[k] = static_cast<in_t>(coef.k);
      return;
    }
    const Pow2<T> s(static_cast<int>(stats[2 * b]));
    T* xs = work;
    T* y = work + L.plane_elems();  // Y, then Z
    T* g = y + L.y_elems();
    for (int c = 0; c < C; ++c) {
      blk.sync();  // the previous plane's output stage has finished reading xs and Z
      fused_load_plane(xb + c * HW, s, L, xs, blk);
      blk.sync();
      fused_column_dft(xs, L, tab, y, blk);
      blk.sync();
      // G[i][v] = k * 2 h_v m X: the band gradient of E_low, weighted by this sample's coefficient.
      blk.for_2d(U, V, [&](int i, int v) {
        const T w = band.energy_weight(i, v);
        T re = 0, im = 0;
        if (w != T(0)) fused_row_dft(y, L, tab, i, v, &re, &im);
        bin_energy_grad(re, im, coef.k * w, 2, g + i * V + v, g + U * V + i * V + v);
      });
      blk.sync();
      fused_row_synthesis(g, L, tab, y, blk);  // Z over Y's storage (Y is no longer read)
      blk.sync();
      // dx[h][w] = 2^e (Re sum_v Z[v][h] conj(cw[v][w]) - c2 x'[h][w]).
      blk.for_2d(H, W, [&](int h, int w) {
        const T syn = fused_column_synthesis(y, L, tab, h, w);
        db[c * HW + h * W + w] = static_cast<in_t>(s.apply(syn - coef.c2 * xs[h * XS + w]));
      });
    }
  }
};


// Value and gradient in one pass: value_b and dx_b = scale * d value_b / dx_b, in x's dtype. Item: sample b.
// Each plane's band spectrum serves both: its energy feeds value_b, and its band gradient (unit coefficient,
// G = 2 h_v m X) is synthesised at once into `syn` (T, x's layout; dx itself when in_t is T), because the
// sample's coefficients k_b, c2_b are known only after its last plane. A final pass over the sample forms
// dx = 2^e (k syn - c2 x'). Five barriers per plane (fused_band_sums' three, two in the synthesis), one pass over syn.
template <typename in_t, typename T>
struct FusedRatioValueGrad {
  const in_t* x;
  int C;
  Band<T> band;
  FusedTables<T> tab;
  bool complement;
  T scale;
  T* value;
  T* syn;
  in_t* dx;

  int64_t work_elems() const { return FusedLayout{band.H, band.W, band.U(), band.V}.elems(true); }

  template <class Block>
  JAFR_HD void operator()(int64_t b, const Block& blk, T* work) const {
    const FusedLayout L{band.H, band.W, band.U(), band.V};
    const int64_t HW = static_cast<int64_t>(L.H) * L.W;
    const in_t* xb = x + b * C * HW;
    T* sb = syn + b * C * HW;
    in_t* db = dx + b * C * HW;
    T* y = work + L.plane_elems();  // Y, then Z
    T* g = y + L.y_elems();
    FusedSums sums;
    const bool finite = fused_band_sums(xb, C, band, tab, blk, work, g, [&](int c) {
      blk.sync();
      fused_row_synthesis(g, L, tab, y, blk);
      blk.sync();
      blk.for_2d(L.H, L.W, [&](int h, int w) { sb[c * HW + h * L.W + w] = fused_column_synthesis(y, L, tab, h, w); });
    }, &sums);
    if (!finite) {  // +-Inf in the sample (block-uniform): value and gradient NaN
      if (blk.thread() == 0) value[b] = quiet_nan<T>();
      for (int64_t k = blk.thread(); k < C * HW; k += blk.threads()) db[k] = static_cast<in_t>(quiet_nan<T>());
      return;
    }
    // The sums' final reductions are also the barrier after the last synthesis: syn is complete below.
    const T val = ratio_value<T>(sums.e_low, sums.e_all, complement);
    if (blk.thread() == 0) value[b] = val;
    // All-zero sample: k = c2 = 0 (zero gradient); NaN sample: NaN.
    const RatioGrad<T> coef(scale, val, static_cast<T>(sums.e_all), complement, HW);
    const Pow2<T> s(sums.e);
    for (int64_t k = blk.thread(); k < C * HW; k += blk.threads())
      db[k] = static_cast<in_t>(s.apply(coef.k * sb[k] - coef.c2 * s.apply(static_cast<T>(xb[k]))));
  }
};

}  // namespace jafr
