// CUDA core: mirrors csrc/cpu/scorer_cpu.h with a stream argument.  Every
// pointer is a device pointer; nothing here synchronises the host.
#pragma once

#include <cstdint>

#include "../common/map_batch.h"
#include "../common/ocnna_math.h"

namespace ocnna {
namespace cuda {

// out[i * C + c] = F for image i, channel c (SPEC 2); NaN where the map holds a
// non-finite value.  `stream` is a cudaStream_t of device `device` (-1: the
// current device), which is made current for the call and restored after.
void energies(const MapBatch& x, const EnergyParams& p, double* out, void* stream, int device);

// Folds one batch into the per-channel device accumulators count, mean, m2 (C
// entries each).  Atomic per batch: if any map is non-finite nothing is
// changed and, if *status is still -1, the first offending channel is written
// to *status (an int64 on the device) for the host to read when it wants.
void accumulate(const MapBatch& x, const EnergyParams& p, double* count, double* mean, double* m2,
                int64_t* status, void* stream, int device);

// Devices the CUDA runtime sees (0 when there is no driver or GPU).
int device_count();
int runtime_version();

}  // namespace cuda
}  // namespace ocnna
