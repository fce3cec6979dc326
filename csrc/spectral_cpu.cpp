// CPU stages of the C++ backend: the routines of spectral_math.h run item by item with a SerialBlock inside
// at::parallel_for, and the ops registered for the CPU dispatch key.
#include <ATen/Parallel.h>

#include <vector>

#include "spectral_stages.h"

namespace jafr {
namespace {

struct CpuExec {
  static constexpr bool kFusedByDefault = false;
  // BLAS GEMMs against pocketfft/MKL transforms: the factor of the cost model measured on the CPU (benchmarks/).
  static constexpr double kGemmCost = 1.0;
  // routine(item, SerialBlock, work) for every item, items split across the intra-op threads; each thread
  // chunk owns a scratch buffer standing in for the CUDA block's shared memory.
  template <typename T, class R>
  static void run(int64_t items, const R& routine, const at::Tensor&) {
    const int64_t elems = routine.work_elems();
    at::parallel_for(0, items, 1, [&](int64_t begin, int64_t end) {
      std::vector<T> work(static_cast<size_t>(elems));
      const SerialBlock blk;
      for (int64_t i = begin; i < end; ++i) routine(i, blk, work.data());
    });
  }
};

}  // namespace

const Stages& cpu_stages() {
  static const Stages stages = StageImpl<CpuExec>::table();
  return stages;
}

}  // namespace jafr

TORCH_LIBRARY_IMPL(jafr_cpp, CPU, m) { jafr::OpsOn<jafr::cpu_stages>::impl(m); }
