#include "timeshare/device/cuda/cuda_driver.h"

#include "timeshare/device/cuda/cuda_backend.h"

#include <dlfcn.h>

#include <cstdlib>

namespace timeshare::device::cuda_api {

namespace {

// The driver library: TIMESHARE_CUDA_DRIVER names another one (the test double) when set.
constexpr const char* kDriverEnv = "TIMESHARE_CUDA_DRIVER";
constexpr const char* kDefaultDriver = "libcuda.so.1";

template <typename F>
bool resolve(void* lib, F*& fn, const char* name, std::string* missing) {
  fn = reinterpret_cast<F*>(dlsym(lib, name));
  if (!fn && missing->empty()) *missing = name;
  return fn != nullptr;
}

}  // namespace

const Driver& driver() {
  static Driver d = [] {
    Driver x;
    const char* path = std::getenv(kDriverEnv);
    const std::string library = path && *path ? path : kDefaultDriver;
    void* lib = dlopen(library.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      x.error = "the CUDA driver (" + library + ") is not installed or cannot be loaded";
      return x;
    }
    std::string missing;
    // Versioned names are the ABI the toolkit headers map the plain names to.
    resolve(lib, x.cuInit, "cuInit", &missing);
    resolve(lib, x.cuDeviceGetCount, "cuDeviceGetCount", &missing);
    resolve(lib, x.cuDeviceGet, "cuDeviceGet", &missing);
    resolve(lib, x.cuDeviceGetAttribute, "cuDeviceGetAttribute", &missing);
    resolve(lib, x.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", &missing);
    resolve(lib, x.cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2", &missing);
    resolve(lib, x.cuDeviceCanAccessPeer, "cuDeviceCanAccessPeer", &missing);
    resolve(lib, x.cuCtxGetCurrent, "cuCtxGetCurrent", &missing);
    resolve(lib, x.cuCtxSetCurrent, "cuCtxSetCurrent", &missing);
    resolve(lib, x.cuCtxSynchronize, "cuCtxSynchronize", &missing);
    resolve(lib, x.cuGetErrorString, "cuGetErrorString", &missing);
    resolve(lib, x.cuMemAlloc, "cuMemAlloc_v2", &missing);
    resolve(lib, x.cuMemFree, "cuMemFree_v2", &missing);
    resolve(lib, x.cuMemGetInfo, "cuMemGetInfo_v2", &missing);
    resolve(lib, x.cuMemAddressReserve, "cuMemAddressReserve", &missing);
    resolve(lib, x.cuMemAddressFree, "cuMemAddressFree", &missing);
    resolve(lib, x.cuMemCreate, "cuMemCreate", &missing);
    resolve(lib, x.cuMemRelease, "cuMemRelease", &missing);
    resolve(lib, x.cuMemMap, "cuMemMap", &missing);
    resolve(lib, x.cuMemUnmap, "cuMemUnmap", &missing);
    resolve(lib, x.cuMemSetAccess, "cuMemSetAccess", &missing);
    resolve(lib, x.cuMemGetAllocationGranularity, "cuMemGetAllocationGranularity", &missing);
    resolve(lib, x.cuMemExportToShareableHandle, "cuMemExportToShareableHandle", &missing);
    resolve(lib, x.cuMemImportFromShareableHandle, "cuMemImportFromShareableHandle", &missing);
    resolve(lib, x.cuStreamCreate, "cuStreamCreate", &missing);
    resolve(lib, x.cuStreamDestroy, "cuStreamDestroy_v2", &missing);
    resolve(lib, x.cuStreamGetCtx, "cuStreamGetCtx", &missing);
    resolve(lib, x.cuStreamWaitEvent, "cuStreamWaitEvent", &missing);
    resolve(lib, x.cuStreamSynchronize, "cuStreamSynchronize", &missing);
    resolve(lib, x.cuEventCreate, "cuEventCreate", &missing);
    resolve(lib, x.cuEventDestroy, "cuEventDestroy_v2", &missing);
    resolve(lib, x.cuEventRecord, "cuEventRecord", &missing);
    resolve(lib, x.cuEventQuery, "cuEventQuery", &missing);
    resolve(lib, x.cuEventSynchronize, "cuEventSynchronize", &missing);
    resolve(lib, x.cuMemcpyAsync, "cuMemcpyAsync", &missing);
    resolve(lib, x.cuMemHostAlloc, "cuMemHostAlloc", &missing);
    resolve(lib, x.cuMemFreeHost, "cuMemFreeHost", &missing);
    if (!missing.empty()) {
      x.error = "the CUDA driver lacks " + missing + " (driver too old?)";
      return x;
    }
    if (CUresult r = x.cuInit(0); r != CUDA_SUCCESS) {
      x.error = "cuInit failed with CUDA error " + std::to_string(static_cast<int>(r));
      return x;
    }
    x.ok = true;
    return x;
  }();
  return d;
}

ContextGuard::ContextGuard(CUcontext ctx) {
  if (driver().cuCtxGetCurrent(&saved_) != CUDA_SUCCESS) saved_ = nullptr;
  if (saved_ == ctx) return;
  if (driver().cuCtxSetCurrent(ctx) != CUDA_SUCCESS) {
    ok_ = false;
    return;
  }
  switched_ = true;
}

ContextGuard::~ContextGuard() {
  if (switched_) driver().cuCtxSetCurrent(saved_);
}

CUmemAllocationProp allocation_prop(CUdevice dev, bool rdma, bool posix_fd) {
  CUmemAllocationProp prop{};
  prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
  prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
  prop.location.id = dev;
  prop.allocFlags.gpuDirectRDMACapable = rdma ? 1 : 0;
  prop.requestedHandleTypes =
      posix_fd ? CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR : CU_MEM_HANDLE_TYPE_NONE;
  return prop;
}

bool probe_device(int device, DeviceTraits* out, std::string* error) {
  const Driver& x = driver();
  DeviceTraits t;
  if (device < 0 || device >= cuda_device_count() ||
      x.cuDeviceGet(&t.dev, device) != CUDA_SUCCESS) {
    *error = "CUDA device " + std::to_string(device) + " does not exist";
    return false;
  }
  if (x.cuDevicePrimaryCtxRetain(&t.ctx, t.dev) != CUDA_SUCCESS) {
    *error = "cannot retain the primary context of CUDA device " + std::to_string(device);
    return false;
  }
  const auto attribute = [&](CUdevice_attribute a) {
    int v = 0;
    return x.cuDeviceGetAttribute(&v, a, t.dev) == CUDA_SUCCESS && v != 0;
  };
  t.vmm = attribute(CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED);
  t.rdma = t.vmm && attribute(CU_DEVICE_ATTRIBUTE_GPU_DIRECT_RDMA_WITH_CUDA_VMM_SUPPORTED);
  t.posix_fd = t.vmm && attribute(CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED);
  t.granule = std::size_t{2} << 20;  // 2 MiB unless the device needs more
  if (t.vmm) {
    const CUmemAllocationProp prop = allocation_prop(t.dev, t.rdma, t.posix_fd);
    std::size_t g = 0;
    if (x.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) ==
            CUDA_SUCCESS && g > 0) {
      t.granule = (t.granule + g - 1) / g * g;
    }
  }
  // The devices that can access this one's memory (cuDeviceCanAccessPeer): the peers its
  // mappings may be granted to.
  for (int i = 0; i < cuda_device_count(); ++i) {
    CUdevice other = 0;
    int can = 0;
    if (x.cuDeviceGet(&other, i) != CUDA_SUCCESS) other = -1;
    t.all_devices.push_back(other);
    if (i == device || other < 0) continue;
    if (x.cuDeviceCanAccessPeer(&can, other, t.dev) == CUDA_SUCCESS && can) {
      t.capable.push_back(other);
    }
  }
  *out = std::move(t);
  return true;
}

Status status_of(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS: return Status::kOk;
    case CUDA_ERROR_OUT_OF_MEMORY: return Status::kOutOfMemory;
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_HANDLE: return Status::kInvalid;
    default: return Status::kError;
  }
}

}  // namespace timeshare::device::cuda_api

namespace timeshare::device {

bool cuda_available(std::string* why_not) {
  const cuda_api::Driver& x = cuda_api::driver();
  if (!x.ok) {
    if (why_not) *why_not = x.error;
    return false;
  }
  int n = 0;
  if (x.cuDeviceGetCount(&n) != CUDA_SUCCESS || n == 0) {
    if (why_not) *why_not = "the CUDA driver reports no devices";
    return false;
  }
  return true;
}

int cuda_device_count() {
  const cuda_api::Driver& x = cuda_api::driver();
  int n = 0;
  if (!x.ok || x.cuDeviceGetCount(&n) != CUDA_SUCCESS) return 0;
  return n;
}

}  // namespace timeshare::device
