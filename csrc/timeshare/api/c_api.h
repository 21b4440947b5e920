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
// cousin std::runtime_error carrying the same "CUDA out of memory" message.
TIMESHARE_API void* timeshare_malloc(size_t size, int device, void* stream);
TIMESHARE_API void timeshare_free(void* ptr, size_t size, int device, void* stream);
// Optional hooks (set_init_fn, set_reset_fn, set_memory_fraction_fn, set_record_stream_fn).
TIMESHARE_API void timeshare_init(int device);
TIMESHARE_API void timeshare_empty_cache(void);
TIMESHARE_API void timeshare_memory_fraction(double fraction, int device);
TIMESHARE_API void timeshare_record_stream(void* ptr, void* stream);
// Sets the options (TIMESHARE_CONF syntax). Returns 0, or -1 with one line in `error`.
TIMESHARE_API int timeshare_configure(const char* conf, char* error, size_t error_bytes);
TIMESHARE_API const char* timeshare_version(void);

#ifdef __cplusplus
}
#endif
