// A small persistent thread pool for the CPU core.  The core must not depend
// on torch's or the compiler's OpenMP runtime (two OpenMP runtimes in one
// process is a classic source of hangs), so it brings its own.
#pragma once

#include <cstdint>
#include <functional>

namespace ocnna {
namespace cpu {

// Number of worker threads used by parallel_for (>= 1).
int num_threads();
// 0 restores the default (the OCNNA_NUM_THREADS environment variable, else
// the hardware concurrency).
void set_num_threads(int n);

// Runs fn(begin, end) over [0, n) split into contiguous chunks, one chunk per
// thread (the caller's thread takes the first).  Blocks until all are done.
void parallel_for(int64_t n, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace cpu
}  // namespace ocnna
