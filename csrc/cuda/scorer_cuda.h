// CUDA core: mirrors csrc/cpu/scorer_cpu.h with a stream argument.  Every
// pointer is a device pointer; nothing here synchronises the host.
#pragma once

#include <cstdint>

#include "../common/map_batch.h"
#include "../common/ocnna_math.h"

namespace ocnna {
namespace cuda {

// out[i * C + c] = F for image i, channel c (docs/scoring.md §2); kSolveFailed (< 0) where
// an eigen-solve failed (a bug of ours); NaN where the map holds a
// non-finite value.  `stream` is a cudaStream_t of device `device` (-1: the
// current device), which is made current for the call and restored after.
void energies(const MapBatch& x, const EnergyParams& p, double* out, void* stream, int device);

// Folds one batch into the per-channel device accumulators count, mean, m2 (C
// entries each).  Atomic per batch: if any map is non-finite nothing is
// changed and, if status[0] is still -1, the first offending channel is
// written there for the host to read when it wants (kInternalFlag + channel
// where an eigen-solve failed on finite input).  `status` points to three
// int64 on the device, created as {-1, -1, 0}; words 1 and 2 are scratch of
// the kernels (they hold -1 and 0 again once the batch is done), so one status
// must not be shared by accumulators updated concurrently.  Summation orders
// are fixed: the same batch gives bit-identical results.
void accumulate(const MapBatch& x, const EnergyParams& p, double* count, double* mean, double* m2,
                int64_t* status, void* stream, int device);

// Devices the CUDA runtime sees (0 when there is no driver or GPU).
int device_count();
int runtime_version();

}  // namespace cuda
}  // namespace ocnna
