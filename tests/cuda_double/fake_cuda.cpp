// libfakecuda.so: the CUDA driver entry points that the timeshare CUDA backend resolves with
// dlsym, over host memory (the model is described in fake_cuda_state.h, the controls in
// fake_cuda_control.h). cuda.h maps the plain names of versioned entry points to their ABI names
// (cuMemAlloc -> cuMemAlloc_v2, cuStreamDestroy -> cuStreamDestroy_v2, ...), so the definitions
// below export exactly the symbols a real libcuda.so.1 does.
//
// Strictness: a call that breaks a driver rule returns the driver's error AND counts a violation.
// The rules enforced: cuInit first; a current context for every call that needs one (the virtual
// memory calls are held to it too, stricter than the driver, because the backend always has one);
// reservations, mappings and physical handles granular (2 MiB) and aligned; a map only inside a
// reserved range and never over another mapping; an unmap only of whole mappings; no access to
// mapped memory before cuMemSetAccess granted it to the copying context's device, and no access
// to memory outside any mapping; cuMemAddressFree only of a whole reservation with nothing
// mapped in it; frees only of what was allocated; an event recorded only on a stream of its own
// context (the event's device is the one whose context was current at cuEventCreate); RDMA-capable
// physical memory (allocFlags.gpuDirectRDMACapable) only where the device reports
// CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED; a handle exported as a POSIX file
// descriptor only when it was created with requestedHandleTypes POSIX_FILE_DESCRIPTOR, and that
// only where the device reports HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED (the descriptor is the
// memfd behind the handle: another process that takes it maps the same pages). Releasing a mapped
// handle is legal and deferred to its last unmap, as in the driver.
// Unmapping memory that queued work still touches is counted as a violation (cuMemUnmap does not
// wait: the work would fault or corrupt the next owner) and the work is run first; cuMemFree and
// cuMemFreeHost wait for queued work, as cudaFree and cudaFreeHost do, so they are legal then.
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "fake_cuda_control.h"
#include "fake_cuda_state.h"

using namespace fakecuda;

namespace {

struct ErrorText {
  CUresult code;
  const char* text;
};
constexpr ErrorText kErrorTexts[] = {
    {CUDA_SUCCESS, "no error"},
    {CUDA_ERROR_INVALID_VALUE, "invalid argument"},
    {CUDA_ERROR_OUT_OF_MEMORY, "out of memory"},
    {CUDA_ERROR_NOT_INITIALIZED, "initialization error"},
    {CUDA_ERROR_INVALID_DEVICE, "invalid device ordinal"},
    {CUDA_ERROR_INVALID_CONTEXT, "invalid device context"},
    {CUDA_ERROR_INVALID_HANDLE, "invalid resource handle"},
    {CUDA_ERROR_NOT_READY, "device not ready"},
    {CUDA_ERROR_ILLEGAL_ADDRESS, "an illegal memory access was encountered"},
    {CUDA_ERROR_LAUNCH_FAILED, "unspecified launch failure"},
    {CUDA_ERROR_NOT_SUPPORTED, "operation not supported"},
    {CUDA_ERROR_UNKNOWN, "unknown error"},
};

}  // namespace

// ---- initialisation, devices, contexts ---------------------------------------------------------

FAKE_EXPORT CUresult cuInit(unsigned int flags) {
  State& s = state();
  std::lock_guard lock(s.mu);
  ++s.calls["cuInit"];
  if (flags != 0) return violation(s, CUDA_ERROR_INVALID_VALUE, "cuInit flags must be 0");
  s.initialized = true;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuGetErrorString(CUresult error, const char** text) {
  for (const ErrorText& e : kErrorTexts) {
    if (e.code == error) {
      *text = e.text;
      return CUDA_SUCCESS;
    }
  }
  *text = nullptr;
  return CUDA_ERROR_INVALID_VALUE;
}

FAKE_EXPORT CUresult cuDeviceGetCount(int* count) {
  FAKE_ENTER("cuDeviceGetCount");
  *count = s.devices;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGet(CUdevice* device, int ordinal) {
  FAKE_ENTER("cuDeviceGet");
  if (ordinal < 0 || ordinal >= s.devices) return CUDA_ERROR_INVALID_DEVICE;
  *device = ordinal;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceGetAttribute(int* value, CUdevice_attribute attribute, CUdevice dev) {
  FAKE_ENTER("cuDeviceGetAttribute");
  if (dev < 0 || dev >= s.devices) return CUDA_ERROR_INVALID_DEVICE;
  switch (attribute) {
    case CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED: *value = s.vmm[dev]; break;
    case CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED:
      *value = s.rdma_vmm[dev];
      break;
    case CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED:
      *value = s.posix_fd[dev];
      break;
    case CU_DEVICE_ATTRIBUTE_UNIFIED_ADDRESSING: *value = 1; break;
    default: *value = 0; break;
  }
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDeviceCanAccessPeer(int* can_access, CUdevice dev, CUdevice peer) {
  FAKE_ENTER("cuDeviceCanAccessPeer");
  if (dev < 0 || dev >= s.devices || peer < 0 || peer >= s.devices) {
    return CUDA_ERROR_INVALID_DEVICE;
  }
  *can_access = s.peer[dev][peer];
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRetain(CUcontext* ctx, CUdevice dev) {
  FAKE_ENTER("cuDevicePrimaryCtxRetain");
  if (dev < 0 || dev >= s.devices) return CUDA_ERROR_INVALID_DEVICE;
  ++s.ctx_refs[dev];
  *ctx = primary_context(dev);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuDevicePrimaryCtxRelease(CUdevice dev) {
  FAKE_ENTER("cuDevicePrimaryCtxRelease_v2");
  if (dev < 0 || dev >= s.devices) return CUDA_ERROR_INVALID_DEVICE;
  if (s.ctx_refs[dev] == 0) {
    return violation(s, CUDA_ERROR_INVALID_CONTEXT,
                     "cuDevicePrimaryCtxRelease of a primary context that is not retained");
  }
  --s.ctx_refs[dev];
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxGetCurrent(CUcontext* ctx) {
  FAKE_ENTER("cuCtxGetCurrent");
  *ctx = current_context();
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSetCurrent(CUcontext ctx) {
  FAKE_ENTER("cuCtxSetCurrent");
  if (ctx != nullptr && (ctx < primary_context(0) || ctx > primary_context(s.devices - 1))) {
    return violation(s, CUDA_ERROR_INVALID_CONTEXT, "cuCtxSetCurrent of an unknown context");
  }
  current_context() = ctx;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuCtxSynchronize(void) {
  FAKE_ENTER_CTX("cuCtxSynchronize");
  run_device(s, current_device());
  return s.sticky[current_device()];
}

// ---- device memory ------------------------------------------------------------------------------

FAKE_EXPORT CUresult cuMemAlloc(CUdeviceptr* ptr, size_t bytes) {
  FAKE_ENTER_CTX("cuMemAlloc_v2");
  if (bytes == 0) return CUDA_ERROR_INVALID_VALUE;
  const int dev = current_device();
  if (s.used_bytes[dev] + bytes > s.capacity_bytes[dev]) return CUDA_ERROR_OUT_OF_MEMORY;
  const std::size_t mapped = page_round(bytes);
  void* p = map_anonymous(mapped, PROT_READ | PROT_WRITE);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  s.allocs[reinterpret_cast<std::uintptr_t>(p)] = {bytes, mapped, dev};
  s.used_bytes[dev] += bytes;
  *ptr = reinterpret_cast<CUdeviceptr>(p);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemFree(CUdeviceptr ptr) {
  FAKE_ENTER_CTX("cuMemFree_v2");
  auto it = s.allocs.find(static_cast<std::uintptr_t>(ptr));
  if (it == s.allocs.end()) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemFree of a pointer cuMemAlloc did not return");
  }
  run_all(s);  // like cudaFree, cuMemFree waits for the device's queued work
  munmap(reinterpret_cast<void*>(it->first), it->second.mmap_bytes);
  s.used_bytes[it->second.device] -= it->second.bytes;
  s.allocs.erase(it);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemGetInfo(size_t* free_bytes, size_t* total_bytes) {
  FAKE_ENTER_CTX("cuMemGetInfo_v2");
  const int dev = current_device();
  *total_bytes = s.capacity_bytes[dev];
  *free_bytes = s.capacity_bytes[dev] - std::min(s.used_bytes[dev], s.capacity_bytes[dev]);
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemHostAlloc(void** ptr, size_t bytes, unsigned int flags) {
  FAKE_ENTER_CTX("cuMemHostAlloc");
  constexpr unsigned kKnownFlags =
      CU_MEMHOSTALLOC_PORTABLE | CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_WRITECOMBINED;
  if (bytes == 0 || (flags & ~kKnownFlags) != 0) return CUDA_ERROR_INVALID_VALUE;
  if (s.pinned_used_bytes + bytes > s.pinned_capacity_bytes) return CUDA_ERROR_OUT_OF_MEMORY;
  const std::size_t mapped = page_round(bytes);
  void* p = map_anonymous(mapped, PROT_READ | PROT_WRITE);
  if (!p) return CUDA_ERROR_OUT_OF_MEMORY;
  s.pinned[reinterpret_cast<std::uintptr_t>(p)] = {bytes, mapped, -1};
  s.pinned_used_bytes += bytes;
  *ptr = p;
  return CUDA_SUCCESS;
}

FAKE_EXPORT CUresult cuMemFreeHost(void* ptr) {
  FAKE_ENTER_CTX("cuMemFreeHost");
  auto it = s.pinned.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == s.pinned.end()) {
    return violation(s, CUDA_ERROR_INVALID_VALUE,
                     "cuMemFreeHost of a pointer cuMemHostAlloc did not return");
  }
  run_all(s);  // like cudaFreeHost, it waits for queued work
  munmap(ptr, it->second.mmap_bytes);
  s.pinned_used_bytes -= it->second.bytes;
  s.pinned.erase(it);
  return CUDA_SUCCESS;
}
