// torch/ — the native route: timeshare as PyTorch's own CUDAAllocator.
//
// PyTorch's CUDAPluggableAllocator reaches an allocator through two C functions (malloc and
// free) and refuses most of torch.cuda's memory features behind them (stats, snapshots and
// memory_viz, private pools for CUDA graphs and MemPool, cacheInfo for cudnn.benchmark, OOM
// observers). This layer is instead a subclass of c10::cuda::CUDACachingAllocator::CUDAAllocator,
// the interface PyTorch's own caching allocator implements, installed with
// torch::cuda::CUDAPluggableAllocator::changeCurrentAllocator: every torch.cuda memory entry
// point then reaches timeshare. It is thin: each virtual translates torch's types to the core's
// (libtimeshare.so, one core per process, no libtorch dependency) and back; what torch keeps
// beside the memory itself (the memory history ring, the contexts of live blocks, the OOM
// observers and trace trackers) lives here.
//
// It is built at install time against the torch present (its ABI is that torch release's:
// libtimeshare_native-<torch version>.so), only for a CUDA build of torch; where it is missing
// or fails to load, timeshare falls back to the pluggable route (python/timeshare/_native.py).
//
// Devices and streams. On the CUDA backend the current device and stream are torch's
// (c10::cuda). On the sim backend (no GPU: tests, demos) the allocator asks no CUDA runtime:
// the current device is 0 and the current stream the default stream, so torch's own bindings
// (torch._C._cuda_memoryStats, _cuda_cudaCachingAllocator_raw_alloc, ...) reach it on a
// machine without a GPU.
#pragma once

#include <cstddef>

extern "C" {
// Installs timeshare as the current CUDAAllocator (options already set by timeshare_configure).
// Returns 0, or -1 with one line in `error` (e.g. torch's "Can't swap an already initialized
// allocator").
__attribute__((visibility("default"))) int timeshare_native_install(char* error,
                                                                    std::size_t error_bytes);
// The torch version this library was built against (e.g. "2.14.1+cu130").
__attribute__((visibility("default"))) const char* timeshare_native_torch_version(void);
// Starts (enabled != 0) or stops the memory history of the current CUDAAllocator through c10's
// own entry point (c10::cuda::CUDACachingAllocator::recordHistory), without stacks. Torch's
// Python torch.cuda.memory._record_memory_history() initialises CUDA first and so needs a GPU;
// this is the same call for LibTorch programs and for machines without one (the sim backend).
// Returns 0, or -1 with one line in `error`.
__attribute__((visibility("default"))) int timeshare_native_record_history(
    int enabled, std::size_t max_entries, char* error, std::size_t error_bytes);
// c10::cuda::CUDACachingAllocator::cacheInfo(device) of the current allocator (whichever it
// is), as cuDNN's autotuner (cudnn.benchmark) calls it; torch has no Python binding for it.
// Returns 0, or -1 with one line in `error`.
__attribute__((visibility("default"))) int timeshare_native_cache_info(int device,
                                                                       std::size_t* largest,
                                                                       char* error,
                                                                       std::size_t error_bytes);
// Whether this process's current CUDAAllocator is timeshare's native one.
__attribute__((visibility("default"))) int timeshare_native_is_current(void);
}
