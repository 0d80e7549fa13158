// Device code of the CUDA core: every kernel, and the launch plan that picks
// one for a batch.  Kept apart from the host code (scorer_cuda.cu) so that
// tests/native/ can compile it for the CPU with a small emulation of the CUDA
// built-ins and check the kernels where no GPU is lent.
//
//   channels_inner_kernel  n_components=None, channels_last: one pass, a warp
//   columns_inner_kernel   reads 32 channels (or a row run for NCHW); each
//                          map's columns are summed in a fixed order.
//   block_map_kernel       truncated: one block per map (one warp when
//                          min(H, W) <= 16); Gram and Householder steps spread
//                          over the block, then every eigenvalue found at once
//                          by Sturm multisection (a few lanes per eigenvalue), in
//                          float for inputs of float precision.  The map and
//                          Gram sit in shared memory up to the device's opt-in
//                          limit (112x112 fits on Hopper); beyond it the same
//                          kernel works in a global workspace.
//   merge_kernel           folds a batch's energies into the accumulators.
//
// One header per kernel family (csrc/cuda/kernels/), and the launch plan
// (plan.cuh); this file gathers them for the host code and the emulation.
#pragma once

#include "plan.cuh"
