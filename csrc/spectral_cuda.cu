// CUDA stages of the C++ backend: every routine of spectral_math.h runs as one kernel with one thread block
// per item (plane or sample) whose threads stride over the item's work, shared memory as the routine's
// work buffer; and the ops registered for the CUDA dispatch key. The fused ratio is thus one kernel
// forward and one kernel backward, with no host synchronisation (nothing is read back) and no per-call
// host->device copy (the twiddle tables are cached by spectral.cpp).
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <climits>
#include <cstdlib>

#include "spectral_stages.h"

namespace jafr {
namespace {

constexpr int kThreads = 256;  // the most threads per block: a multiple of the warp size (block reductions assume it)

// Threads per block of every launch: kThreads, or JAFR_CUDA_THREADS (a multiple of 32 in [32, kThreads]),
// read once, for tuning on a new device (scripts/ratio_variants.py --cuda-threads times each).
int block_threads() {
  static const int threads = [] {
    const char* env = std::getenv("JAFR_CUDA_THREADS");
    if (env == nullptr || *env == '\0') return kThreads;
    const int t = std::atoi(env);
    TORCH_CHECK(t >= 32 && t <= kThreads && t % 32 == 0, "JAFR_CUDA_THREADS must be a multiple of 32 in [32, ",
                kThreads, "], got '", env, "'");
    return t;
  }();
  return threads;
}
constexpr int kScratch = 32;   // doubles of shared memory for block reductions, before the routine's work

// Block-wide reduction (sum or max) of one double per thread; every thread gets the result.
template <bool kMax>
__device__ double block_reduce(double v, double* scratch) {
  for (int o = 16; o > 0; o >>= 1) {
    const double other = __shfl_down_sync(0xffffffffu, v, o);
    v = kMax ? (other > v ? other : v) : v + other;
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  __syncthreads();  // a previous reduction's readers of scratch[0] are done
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? scratch[lane] : 0.0;  // 0 is the identity of both (|x| >= 0)
    for (int o = 16; o > 0; o >>= 1) {
      const double other = __shfl_down_sync(0xffffffffu, v, o);
      v = kMax ? (other > v ? other : v) : v + other;
    }
    if (lane == 0) scratch[0] = v;
  }
  __syncthreads();
  return scratch[0];
}

// The CUDA thread block as the routines see it (host bodies exist only to keep the routines' host
// instantiations well-formed; they are never called).
struct CudaBlock {
  double* scratch;
  JAFR_HD int thread() const {
#ifdef __CUDA_ARCH__
    return threadIdx.x;
#else
    return 0;
#endif
  }
  JAFR_HD int threads() const {
#ifdef __CUDA_ARCH__
    return blockDim.x;
#else
    return 1;
#endif
  }
  // Outputs by flat index k = r * cols + c: consecutive threads take consecutive columns.
  template <class F>
  JAFR_HD void for_2d(int rows, int cols, F&& f) const {
#ifdef __CUDA_ARCH__
    const int n = rows * cols;
    for (int k = threadIdx.x; k < n; k += blockDim.x) f(k / cols, k % cols);
#endif
  }
  // Runs of one cell each, by flat index (coalesced: consecutive threads take consecutive columns).
  template <class F>
  JAFR_HD void for_rows(int rows, int cols, F&& f) const {
#ifdef __CUDA_ARCH__
    const int n = rows * cols;
    for (int k = threadIdx.x; k < n; k += blockDim.x) f(k / cols, k % cols, k % cols + 1);
#endif
  }
  JAFR_HD void sync() const {
#ifdef __CUDA_ARCH__
    __syncthreads();
#endif
  }
  JAFR_HD double sum(double v) const {
#ifdef __CUDA_ARCH__
    return block_reduce<false>(v, scratch);
#else
    return v;
#endif
  }
  JAFR_HD double max(double v) const {
#ifdef __CUDA_ARCH__
    return block_reduce<true>(v, scratch);
#else
    return v;
#endif
  }
};

template <typename T, class R>
__global__ void __launch_bounds__(kThreads) item_kernel(const R routine) {
  extern __shared__ double jafr_shared[];
  const CudaBlock blk{jafr_shared};
  routine(blockIdx.x, blk, reinterpret_cast<T*>(jafr_shared + kScratch));
}

struct CudaExec {
  static constexpr bool kFusedByDefault = true;
  // cuBLAS fp32 GEMMs against cuFFT: an estimate from the H100 runs (benchmarks/README.md): the eager penalty's
  // rfft2 + irfft2 at (32, 3, 224, 224) (224 = 2^5 7) run at a few TFLOP/s of the 2.5 N log2 N estimate, an
  // fp32 GEMM at tens. With 0.25 the partial DFT serves 224 x 224 up to a cutoff of about 0.3 and cuFFT the
  // wider bands; `python -m benchmarks --gpu --quick` times both (cuda_partial, cuda_full) to check it.
  static constexpr double kGemmCost = 0.25;
  // One launch of item_kernel: a block of block_threads() threads per item, dynamic shared memory for the
  // reduction scratch plus the routine's work buffer (opted in above the 48 KiB default when needed).
  template <typename T, class R>
  static void run(int64_t items, const R& routine, const at::Tensor& like) {
    if (items == 0) return;
    TORCH_CHECK(items <= INT_MAX, "jafr: too many planes or samples for one launch (", items, ")");
    const c10::cuda::CUDAGuard guard(like.device());
    const size_t bytes = kScratch * sizeof(double) + static_cast<size_t>(routine.work_elems()) * sizeof(T);
    const auto kernel = &item_kernel<T, R>;
    if (bytes > 48 * 1024) {  // above the default limit: check the device's opt-in limit, then opt in
      int limit = 0;
      C10_CUDA_CHECK(cudaDeviceGetAttribute(&limit, cudaDevAttrMaxSharedMemoryPerBlockOptin, like.device().index()));
      TORCH_CHECK(bytes <= static_cast<size_t>(limit), "jafr: this routine needs ", bytes,
                  " bytes of shared memory per block, more than the device's ", limit,
                  " (the fused ratio serves planes up to ", kFusedMaxSide, "x", kFusedMaxSide, ")");
      C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
    }
    kernel<<<static_cast<unsigned>(items), block_threads(), bytes, c10::cuda::getCurrentCUDAStream()>>>(routine);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
};

}  // namespace

const Stages& cuda_stages() {
  static const Stages stages = StageImpl<CudaExec>::table();
  return stages;
}

}  // namespace jafr

TORCH_LIBRARY_IMPL(jafr_cpp, CUDA, m) { jafr::OpsOn<jafr::cuda_stages>::impl(m); }
