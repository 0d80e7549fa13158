// CPU core: per-map energies and the per-channel streaming accumulators.
// csrc/cuda/scorer_cuda.h mirrors these signatures (plus a stream).
#pragma once

#include <cstdint>

#include "../common/map_batch.h"
#include "../common/ocnna_math.h"

namespace ocnna {
namespace cpu {

// out[i * C + c] = F for image i, channel c (docs/scoring.md §2); kSolveFailed (< 0) where
// an eigen-solve failed (a bug of ours); NaN where the map holds a
// non-finite value.
void energies(const MapBatch& x, const EnergyParams& p, double* out);

// Folds one batch into the per-channel accumulators count, mean, m2 (C
// entries each).  Atomic: if any map is non-finite nothing is changed and
// the first offending channel is returned; if an eigen-solve failed (our
// bug, not the input's) nothing is changed and kInternalFlag + channel is
// returned; else -1.
int64_t accumulate(const MapBatch& x, const EnergyParams& p, double* count, double* mean,
                   double* m2);

}  // namespace cpu
}  // namespace ocnna
