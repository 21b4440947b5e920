// The C entry points PyTorch loads through torch.cuda.memory.CUDAPluggableAllocator, and the
// small C surface LibTorch programs and ctypes use. Signatures follow
// torch/csrc/cuda/CUDAPluggableAllocator.h (stream arguments are cudaStream_t, passed as void*).
#pragma once

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define TIMESHARE_API __attribute__((visibility("default")))

// alloc_fn: never returns null for a non-zero size; out of memory throws PyTorch's
// c10::OutOfMemoryError (through libtimeshare_torch_oom.so when it loads), else std::bad_alloc's
// cousin std::runtime_error carrying the same "CUDA out of memory" message. A device PyTorch
// did not report (timeshare_init) or whose backend cannot start throws std::runtime_error.
// The only entry point that throws.
TIMESHARE_API void* timeshare_malloc(size_t size, int device, void* stream);
// free_fn runs inside PyTorch's noexcept deleters: nothing escapes it, nor the hooks below. A
// failure inside one is caught, logged the first time per entry point, and counted
// (timeshare_c_api_errors, "timeshare.c_api_errors" in timeshare.memory_stats()).
TIMESHARE_API void timeshare_free(void* ptr, size_t size, int device, void* stream);
// Optional hooks (set_init_fn, set_reset_fn, set_memory_fraction_fn, set_record_stream_fn).
// init receives the number of CUDA devices (torch's CUDAPluggableAllocator::init(device_count)),
// not an index: it creates nothing; a later malloc on a device >= the count is refused.
TIMESHARE_API void timeshare_init(int device_count);
TIMESHARE_API void timeshare_empty_cache(void);
TIMESHARE_API void timeshare_memory_fraction(double fraction, int device);
TIMESHARE_API void timeshare_record_stream(void* ptr, void* stream);
// Sets the options (TIMESHARE_CONF syntax). Returns 0, or -1 with one line in `error`.
TIMESHARE_API int timeshare_configure(const char* conf, char* error, size_t error_bytes);
TIMESHARE_API const char* timeshare_version(void);
// Failures caught inside the non-throwing entry points since the process started.
TIMESHARE_API unsigned long long timeshare_c_api_errors(void);
// Test hook: the `nth` call from now of the named non-throwing entry point ("free",
// "record_stream", "empty_cache", "init", "memory_fraction") throws std::bad_alloc inside its
// body, as failing bookkeeping or logging would. 0 disarms. Returns 0, or -1 for another name.
TIMESHARE_API int timeshare_debug_fail_at(const char* entry, unsigned long long nth);

#ifdef __cplusplus
}  // extern "C"

// Private-pool hooks of torch's CUDAPluggableAllocator (set_begin_allocate_to_pool,
// set_end_allocate_to_pool_fn, set_release_pool, set_base_alloc_fn), so that CUDA graph capture
// and torch.cuda.MemPool on the pluggable route get private pools too (Allocator::
// begin_allocate_to_pool), never the shared one. Their signatures carry C++ types (torch's
// MempoolId_t, a std::function filter on cudaStream_t, whose pointee is CUstream_st): they match
// torch's libstdc++ ABI, which this library is built with. A refusal throws std::runtime_error,
// which torch raises in Python as RuntimeError, at capture begin.
#include <functional>
#include <utility>
struct CUstream_st;
using TimeshareMempoolId = std::pair<unsigned long long, unsigned long long>;
extern "C" {
TIMESHARE_API void timeshare_begin_allocate_to_pool(int device, TimeshareMempoolId id,
                                                    std::function<bool(CUstream_st*)> filter);
TIMESHARE_API void timeshare_end_allocate_to_pool(int device, TimeshareMempoolId id);
TIMESHARE_API void timeshare_release_pool(int device, TimeshareMempoolId id);
// The start of the mapped run holding `ptr`, its size in *size (torch's getBaseAllocation).
TIMESHARE_API void* timeshare_base_alloc(void* ptr, size_t* size);
}
#endif
