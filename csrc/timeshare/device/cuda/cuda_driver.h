// The CUDA driver as the CUDA backend reaches it: the entry points it uses, resolved once with
// dlopen/dlsym from libcuda.so.1 (or from the library TIMESHARE_CUDA_DRIVER names, the driver test
// double in the tests), and the Status a driver error is reported as. Internal to device/cuda/.
#pragma once

#include <cuda.h>

#include <string>

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

// The Status a failed driver call is reported as: out of memory only when the driver said so,
// a bad argument when it named one, a device error otherwise.
Status status_of(CUresult r);

}  // namespace timeshare::device::cuda_api
