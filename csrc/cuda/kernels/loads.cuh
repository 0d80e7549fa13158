// Shared by every kernel: the dynamic shared memory hook the CPU emulation
// replaces, and the typed element load.
#pragma once

#include <cstddef>
#include <cstdint>

#include "../../common/map_batch.h"
#include "../../common/ocnna_math.h"

// Dynamic shared memory; the CPU emulation defines its own.
#ifndef OCNNA_DYNAMIC_SHARED
#define OCNNA_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

namespace ocnna {
namespace cuda {
namespace {

// ------------------------------------------------------------------ loads --
template <typename T>
__device__ __forceinline__ double ld(const T* p) {
  return to_double(*p);
}

}  // namespace
}  // namespace cuda
}  // namespace ocnna
