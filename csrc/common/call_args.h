// Validation of the arguments every binding receives, shared by the CPU and
// CUDA modules so both refuse bad input with the same messages.
#pragma once

#include <array>
#include <cstdint>
#include <stdexcept>

#include "map_batch.h"
#include "ocnna_math.h"

namespace ocnna {

inline MapBatch make_batch(uintptr_t ptr, int dtype, const std::array<int64_t, 4>& shape,
                           const std::array<int64_t, 4>& strides) {
  if (dtype < kFloat32 || dtype > kBFloat16) throw std::invalid_argument("unknown dtype code");
  for (int64_t s : shape)
    if (s < 0) throw std::invalid_argument("negative dimension");
  if (ptr == 0 && shape[0] * shape[1] * shape[2] * shape[3] != 0)
    throw std::invalid_argument("null data pointer");
  return MapBatch{reinterpret_cast<const void*>(ptr), dtype,     shape[0],   shape[1],
                  shape[2],                           shape[3],  strides[0], strides[1],
                  strides[2],                         strides[3]};
}

inline EnergyParams make_params(int mode, int q, double tau) {
  if (mode < kAll || mode > kRank) throw std::invalid_argument("unknown mode");
  if (mode == kCount && q < 1) throw std::invalid_argument("n_components must be >= 1");
  if (mode == kRatio && !(tau > 0.0 && tau < 1.0))
    throw std::invalid_argument("n_components ratio must be in (0, 1)");
  return EnergyParams{mode, q, tau};
}

}  // namespace ocnna
