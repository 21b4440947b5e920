// fake_cuda_control.h — the control panel of the CUDA driver test double (libfakecuda.so).
//
// libfakecuda.so exports the CUDA driver entry points that csrc/timeshare/device/cuda/
// cuda_backend.cpp resolves with dlsym (same names, `_v2` versions included) and implements
// them over host memory: several devices, each with a primary context; a current context per
// thread; device memory (cuMemAlloc) and virtual memory (reserve / create / map / set access /
// unmap, 2 MiB granularity) backed by real host pages; pinned host memory; streams whose work
// runs in order, lazily (when the host synchronizes or queries); and events. It enforces what
// the real driver requires: a rule broken returns the driver's error code AND counts a
// violation that tests read here (each is also printed to stderr, prefixed "[fakecuda]").
//
// Point the backend at it with TIMESHARE_CUDA_DRIVER=/path/to/libfakecuda.so before the first
// use of the CUDA backend in the process. The functions below steer the double from a test:
// reset the state between tests, change the devices, arm failures, read what happened.
#pragma once

#include <cuda.h>

#include <cstddef>
#include <cstdlib>

#define FAKECUDA_API extern "C" __attribute__((visibility("default")))

// Back to defaults: kDefaultDevices devices with peer access between all of them, VMM
// supported, default capacities, no memory, streams, events, armed failures, sticky errors or
// violations; eager queries; the calling thread has no current context. cuInit stays done.
FAKECUDA_API void fakecuda_reset(void);

// ---- configuration (call after fakecuda_reset, before creating backends) ------------------------
FAKECUDA_API void fakecuda_set_device_count(int devices);
FAKECUDA_API void fakecuda_set_capacity(int device, std::size_t bytes);  // device memory
FAKECUDA_API void fakecuda_set_pinned_capacity(std::size_t bytes);
// Whether `device` can access memory of `peer` (cuDeviceCanAccessPeer); default yes.
FAKECUDA_API void fakecuda_set_peer_access(int device, int peer, int can_access);
FAKECUDA_API void fakecuda_set_vmm_supported(int device, int supported);
// CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED (default yes, as on A100/H100): where
// it is no, cuMemCreate refuses allocFlags.gpuDirectRDMACapable (a violation).
FAKECUDA_API void fakecuda_set_rdma_vmm_supported(int device, int supported);
// CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED (default yes, as on Linux): where
// it is no, cuMemCreate refuses requestedHandleTypes POSIX_FILE_DESCRIPTOR (a violation).
FAKECUDA_API void fakecuda_set_posix_fd_supported(int device, int supported);
// Lazy mode: cuEventQuery reports the truth without making progress, so work stays queued until
// the host synchronizes (or fakecuda_drain). Eager (default): a query runs the work it asks about.
FAKECUDA_API void fakecuda_set_lazy(int lazy);

// ---- injected failures ------------------------------------------------------------------------
// The next call of `function` (a driver entry point's exported name, e.g. "cuMemCreate" or
// "cuMemFree_v2") returns `code` and does nothing else. One armed failure per function.
FAKECUDA_API void fakecuda_fail_next(const char* function, CUresult code);
// The call after `skip` successful calls of `function` fails with `code`.
FAKECUDA_API void fakecuda_fail_after(const char* function, unsigned skip, CUresult code);
// After `skip` successful calls of `function`, the next `times` calls fail with `code` (a
// failure that a retry meets again).
FAKECUDA_API void fakecuda_fail_calls(const char* function, unsigned skip, unsigned times,
                                      CUresult code);
// A sticky error in `device`'s context, as an earlier faulting kernel leaves: from now on
// every call that needs that context returns `code`.
FAKECUDA_API void fakecuda_set_sticky(int device, CUresult code);
// A kernel of device `device` on its stream `s` (null: its default stream), launched without a
// current context (a test stands in for a library's kernel): when it runs it fills
// [dst, dst+bytes) with `value` (bytes may be 0: no memory touched) and then, when `fault` is not
// CUDA_SUCCESS, leaves `fault` as the context's sticky error. Returns what a launch would.
FAKECUDA_API CUresult fakecuda_launch(int device, CUstream s, void* dst, std::size_t bytes,
                                      int value, CUresult fault);
// Runs every queued operation on every stream.
FAKECUDA_API void fakecuda_drain(void);

// ---- observations -----------------------------------------------------------------------------
FAKECUDA_API unsigned long long fakecuda_violations(void);
// The text of violation `i` (0-based), or NULL past the end; valid until fakecuda_reset.
FAKECUDA_API const char* fakecuda_violation(unsigned long long i);
// How many times `function` was called since the reset (failed calls included).
FAKECUDA_API unsigned long long fakecuda_calls(const char* function);
// The device of the calling thread's current context, or -1 when it has none.
FAKECUDA_API int fakecuda_current_device(void);
// Device memory in use: cuMemAlloc bytes + physical handles not yet freed.
FAKECUDA_API std::size_t fakecuda_used_bytes(int device);
FAKECUDA_API std::size_t fakecuda_mapped_bytes(int device);  // bytes mapped into reservations
FAKECUDA_API unsigned long long fakecuda_live_handles(void);  // physical handles not yet freed
FAKECUDA_API unsigned long long fakecuda_reservations(void);  // address ranges not yet freed
FAKECUDA_API unsigned long long fakecuda_pending_ops(void);   // queued, not yet run
FAKECUDA_API int fakecuda_primary_ctx_refs(int device);       // retains minus releases
// Which devices have read/write access to the mapping that holds `addr` (bit d = device d);
// 0 when `addr` is not mapped.
FAKECUDA_API unsigned fakecuda_access_mask(const void* addr);
// The CU_MEM_ACCESS_FLAGS_PROT_* value cuMemSetAccess last gave `device` on the mapping that holds
// `addr` (0, PROT_NONE, when never given or not mapped).
FAKECUDA_API int fakecuda_access_flags(const void* addr, int device);
// CUmemAccessDesc entries passed to cuMemSetAccess since the reset (what granting access cost).
FAKECUDA_API unsigned long long fakecuda_access_descriptors(void);
// Whether the physical memory mapped at `addr` was created with allocFlags.gpuDirectRDMACapable
// (1) or without (0); -1 when `addr` is not mapped.
FAKECUDA_API int fakecuda_rdma_capable(const void* addr);

// Points the CUDA backend of this process at the double (call before its first use).
inline void fakecuda_use_for_backend(const char* library_path) {
  ::setenv("TIMESHARE_CUDA_DRIVER", library_path, 1);
}
