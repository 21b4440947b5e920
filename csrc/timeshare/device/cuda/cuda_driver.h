// The CUDA driver as the CUDA backend reaches it: the entry points it uses, resolved once with
// dlopen/dlsym from libcuda.so.1 (or from the library TIMESHARE_CUDA_DRIVER names, the driver test
// double in the tests), and the Status a driver error is reported as. Internal to device/cuda/.
#pragma once

#include <cuda.h>

#include <string>
#include <vector>

#include "timeshare/device/backend.h"

namespace timeshare::device::cuda_api {

// The driver entry points we use; `ok` false (and `error` saying why) when the library cannot be
// loaded, lacks one of them, or cuInit fails.
struct Driver {
  bool ok = false;
  std::string error;
#define TS_CU_FN(name, ...) CUresult (*name)(__VA_ARGS__) = nullptr;
  TS_CU_FN(cuInit, unsigned int)
  TS_CU_FN(cuDeviceGetCount, int*)
  TS_CU_FN(cuDeviceGet, CUdevice*, int)
  TS_CU_FN(cuDeviceGetAttribute, int*, CUdevice_attribute, CUdevice)
  TS_CU_FN(cuDevicePrimaryCtxRetain, CUcontext*, CUdevice)
  TS_CU_FN(cuDevicePrimaryCtxRelease, CUdevice)
  TS_CU_FN(cuDeviceCanAccessPeer, int*, CUdevice, CUdevice)
  TS_CU_FN(cuCtxGetCurrent, CUcontext*)
  TS_CU_FN(cuCtxSetCurrent, CUcontext)
  TS_CU_FN(cuCtxSynchronize)
  TS_CU_FN(cuGetErrorString, CUresult, const char**)
  TS_CU_FN(cuMemAlloc, CUdeviceptr*, size_t)
  TS_CU_FN(cuMemFree, CUdeviceptr)
  TS_CU_FN(cuMemGetInfo, size_t*, size_t*)
  TS_CU_FN(cuMemAddressReserve, CUdeviceptr*, size_t, size_t, CUdeviceptr, unsigned long long)
  TS_CU_FN(cuMemAddressFree, CUdeviceptr, size_t)
  TS_CU_FN(cuMemCreate, CUmemGenericAllocationHandle*, size_t, const CUmemAllocationProp*,
           unsigned long long)
  TS_CU_FN(cuMemRelease, CUmemGenericAllocationHandle)
  TS_CU_FN(cuMemMap, CUdeviceptr, size_t, size_t, CUmemGenericAllocationHandle, unsigned long long)
  TS_CU_FN(cuMemUnmap, CUdeviceptr, size_t)
  TS_CU_FN(cuMemSetAccess, CUdeviceptr, size_t, const CUmemAccessDesc*, size_t)
  TS_CU_FN(cuMemGetAllocationGranularity, size_t*, const CUmemAllocationProp*,
           CUmemAllocationGranularity_flags)
  TS_CU_FN(cuMemExportToShareableHandle, void*, CUmemGenericAllocationHandle,
           CUmemAllocationHandleType, unsigned long long)
  TS_CU_FN(cuMemImportFromShareableHandle, CUmemGenericAllocationHandle*, void*,
           CUmemAllocationHandleType)
  TS_CU_FN(cuStreamCreate, CUstream*, unsigned int)
  TS_CU_FN(cuStreamDestroy, CUstream)
  TS_CU_FN(cuStreamGetCtx, CUstream, CUcontext*)
  TS_CU_FN(cuStreamWaitEvent, CUstream, CUevent, unsigned int)
  TS_CU_FN(cuStreamSynchronize, CUstream)
  TS_CU_FN(cuEventCreate, CUevent*, unsigned int)
  TS_CU_FN(cuEventDestroy, CUevent)
  TS_CU_FN(cuEventRecord, CUevent, CUstream)
  TS_CU_FN(cuEventQuery, CUevent)
  TS_CU_FN(cuEventSynchronize, CUevent)
  TS_CU_FN(cuMemcpyAsync, CUdeviceptr, CUdeviceptr, size_t, CUstream)
  TS_CU_FN(cuMemHostAlloc, void**, size_t, unsigned int)
  TS_CU_FN(cuMemFreeHost, void*)
#undef TS_CU_FN
};

// Loaded at the first call, once per process.
const Driver& driver();

// Makes `ctx` the calling thread's current context for a scope, and the previous one current
// again at its end; ok() false when the driver refused (nothing changed then).
class ContextGuard {
 public:
  explicit ContextGuard(CUcontext ctx);
  ~ContextGuard();
  ContextGuard(const ContextGuard&) = delete;
  ContextGuard& operator=(const ContextGuard&) = delete;
  bool ok() const noexcept { return ok_; }

 private:
  CUcontext saved_ = nullptr;
  bool switched_ = false;
  bool ok_ = true;
};

// Pinned device memory of `dev`, RDMA-capable when the device supports that with virtual memory
// (NCCL user-buffer registration, CUDA-aware MPI and NVSHMEM need it; PyTorch's expandable
// segments set it too), and exportable as a POSIX file descriptor where the device supports that
// (CUDA IPC: another process maps the same memory; PyTorch's expandable segments ask for it too).
CUmemAllocationProp allocation_prop(CUdevice dev, bool rdma, bool posix_fd);

// What the CUDA backend of one device is made with: the device, its primary context (retained
// here, released by the backend), what it supports, and which devices can access its memory.
struct DeviceTraits {
  CUdevice dev = 0;
  CUcontext ctx = nullptr;
  bool vmm = false;       // virtual memory management
  bool rdma = false;      // ... with GPUDirect RDMA
  bool posix_fd = false;  // ... exportable as POSIX file descriptors
  std::size_t granule = 0;
  std::vector<CUdevice> all_devices;  // by index
  std::vector<CUdevice> capable;      // devices that can access this one's memory (peers)
};
// False, with `error`, when `device` does not exist or its context cannot be retained.
bool probe_device(int device, DeviceTraits* out, std::string* error);

// The Status a failed driver call is reported as: out of memory only when the driver said so,
// a bad argument when it named one, a device error otherwise.
Status status_of(CUresult r);

}  // namespace timeshare::device::cuda_api
