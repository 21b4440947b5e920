#include "timeshare/device/cuda/cuda_backend.h"

#include <cuda.h>
#include <dlfcn.h>

#include <chrono>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace timeshare::device {

namespace {

thread_local std::string t_last_error;

// The driver entry points we use, resolved once from libcuda.so.1.
struct Driver {
  bool ok = false;
  std::string error;
#define TS_CU_FN(name, ...) CUresult (*name)(__VA_ARGS__) = nullptr;
  TS_CU_FN(cuInit, unsigned int)
  TS_CU_FN(cuDeviceGetCount, int*)
  TS_CU_FN(cuDeviceGet, CUdevice*, int)
  TS_CU_FN(cuDeviceGetAttribute, int*, CUdevice_attribute, CUdevice)
  TS_CU_FN(cuDevicePrimaryCtxRetain, CUcontext*, CUdevice)
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

template <typename F>
bool resolve(void* lib, F*& fn, const char* name, std::string* missing) {
  fn = reinterpret_cast<F*>(dlsym(lib, name));
  if (!fn && missing->empty()) *missing = name;
  return fn != nullptr;
}

const Driver& driver() {
  static Driver d = [] {
    Driver x;
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      x.error = "the CUDA driver (libcuda.so.1) is not installed or cannot be loaded";
      return x;
    }
    std::string missing;
    // Versioned names are the ABI the toolkit headers map the plain names to.
    resolve(lib, x.cuInit, "cuInit", &missing);
    resolve(lib, x.cuDeviceGetCount, "cuDeviceGetCount", &missing);
    resolve(lib, x.cuDeviceGet, "cuDeviceGet", &missing);
    resolve(lib, x.cuDeviceGetAttribute, "cuDeviceGetAttribute", &missing);
    resolve(lib, x.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain", &missing);
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
    resolve(lib, x.cuStreamCreate, "cuStreamCreate", &missing);
    resolve(lib, x.cuStreamDestroy, "cuStreamDestroy_v2", &missing);
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

class CudaBackend final : public Backend {
 public:
  CudaBackend(int index, CUdevice dev, CUcontext ctx, bool vmm, std::size_t granule)
      : index_(index), dev_(dev), ctx_(ctx), vmm_(vmm), granule_(granule) {}

  const char* name() const noexcept override { return "cuda"; }
  int device_index() const noexcept override { return index_; }

  Status reserve(std::size_t bytes, void** out) override {
    *out = nullptr;
    if (!enter()) return Status::kError;
    CUdeviceptr p = 0;
    CUresult r = d().cuMemAlloc(&p, bytes);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) return fail(Status::kOutOfMemory, "cuMemAlloc", r);
    if (r != CUDA_SUCCESS) return fail(Status::kError, "cuMemAlloc", r);
    *out = reinterpret_cast<void*>(p);
    return Status::kOk;
  }

  Status release(void* ptr, std::size_t) override {
    if (!enter()) return Status::kError;
    return check(d().cuMemFree(reinterpret_cast<CUdeviceptr>(ptr)), "cuMemFree");
  }

  MemInfo mem_info() override {
    MemInfo m;
    if (enter()) d().cuMemGetInfo(&m.free_bytes, &m.total_bytes);
    return m;
  }

  bool supports_virtual_memory() const noexcept override { return vmm_; }
  std::size_t granule_bytes() const noexcept override { return granule_; }

  Status va_reserve(std::size_t bytes, void** base) override {
    *base = nullptr;
    if (!vmm_) return fail(Status::kInvalid, "virtual memory is not supported on this device");
    if (!enter()) return Status::kError;
    CUdeviceptr p = 0;
    if (Status s = check(d().cuMemAddressReserve(&p, bytes, granule_, 0, 0), "cuMemAddressReserve");
        s != Status::kOk) {
      return s;
    }
    *base = reinterpret_cast<void*>(p);
    return Status::kOk;
  }

  Status va_release(void* base, std::size_t bytes) override {
    if (!enter()) return Status::kError;
    return check(d().cuMemAddressFree(reinterpret_cast<CUdeviceptr>(base), bytes),
                 "cuMemAddressFree");
  }

  Status map(void* addr, std::size_t bytes) override {
    if (!enter()) return Status::kError;
    if (bytes == 0 || bytes % granule_ != 0) return fail(Status::kInvalid, "map size not granular");
    CUmemAllocationProp prop = allocation_prop();
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    std::size_t done = 0;
    Status status = Status::kOk;
    for (; done < bytes; done += granule_) {
      CUmemGenericAllocationHandle h = 0;
      CUresult r = d().cuMemCreate(&h, granule_, &prop, 0);
      if (r != CUDA_SUCCESS) {
        status = fail(r == CUDA_ERROR_OUT_OF_MEMORY ? Status::kOutOfMemory : Status::kError,
                      "cuMemCreate", r);
        break;
      }
      r = d().cuMemMap(base + done, granule_, 0, h, 0);
      if (r != CUDA_SUCCESS) {
        d().cuMemRelease(h);
        status = fail(Status::kError, "cuMemMap", r);
        break;
      }
      std::lock_guard lock(mu_);
      handles_[base + done] = h;
    }
    if (status == Status::kOk) {
      CUmemAccessDesc access{};
      access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      access.location.id = dev_;
      access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
      status = check(d().cuMemSetAccess(base, bytes, &access, 1), "cuMemSetAccess");
    }
    if (status != Status::kOk && done > 0) unmap(addr, done);  // leave nothing half-mapped
    return status;
  }

  Status unmap(void* addr, std::size_t bytes) override {
    if (!enter()) return Status::kError;
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    Status status = Status::kOk;
    for (std::size_t off = 0; off < bytes; off += granule_) {
      CUmemGenericAllocationHandle h = 0;
      {
        std::lock_guard lock(mu_);
        auto it = handles_.find(base + off);
        if (it == handles_.end()) return fail(Status::kInvalid, "unmap of an unmapped granule");
        h = it->second;
        handles_.erase(it);
      }
      if (Status s = check(d().cuMemUnmap(base + off, granule_), "cuMemUnmap"); s != Status::kOk) {
        status = s;
      }
      d().cuMemRelease(h);
    }
    return status;
  }

  Status create_stream(Stream* out) override {
    if (!enter()) return Status::kError;
    CUstream s = nullptr;
    Status st = check(d().cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    *out = reinterpret_cast<Stream>(s);
    return st;
  }
  Status destroy_stream(Stream s) override {
    if (!enter()) return Status::kError;
    return check(d().cuStreamDestroy(stream(s)), "cuStreamDestroy");
  }
  Status create_event(Event* out) override {
    if (!enter()) return Status::kError;
    CUevent e = nullptr;
    Status st = check(d().cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    *out = reinterpret_cast<Event>(e);
    return st;
  }
  Status destroy_event(Event e) override {
    if (!enter()) return Status::kError;
    return check(d().cuEventDestroy(event(e)), "cuEventDestroy");
  }
  Status record(Event e, Stream s) override {
    if (!enter()) return Status::kError;
    return check(d().cuEventRecord(event(e), stream(s)), "cuEventRecord");
  }
  bool query(Event e) override {
    if (!enter()) return true;
    const CUresult r = d().cuEventQuery(event(e));
    if (r == CUDA_ERROR_NOT_READY) return false;
    if (r != CUDA_SUCCESS) fail(Status::kError, "cuEventQuery", r);
    return true;
  }
  Status stream_wait(Stream s, Event e) override {
    if (!enter()) return Status::kError;
    return check(d().cuStreamWaitEvent(stream(s), event(e), 0), "cuStreamWaitEvent");
  }
  Status synchronize_event(Event e) override {
    if (!enter()) return Status::kError;
    return check(d().cuEventSynchronize(event(e)), "cuEventSynchronize");
  }
  Status synchronize_stream(Stream s) override {
    if (!enter()) return Status::kError;
    return check(d().cuStreamSynchronize(stream(s)), "cuStreamSynchronize");
  }
  Status synchronize_device() override {
    if (!enter()) return Status::kError;
    return check(d().cuCtxSynchronize(), "cuCtxSynchronize");
  }

  Status copy_async(void* dst, const void* src, std::size_t bytes, CopyKind, Stream s) override {
    if (!enter()) return Status::kError;
    // Unified addressing: the driver infers the direction from the pointers.
    return check(d().cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(dst),
                                   reinterpret_cast<CUdeviceptr>(src), bytes, stream(s)),
                 "cuMemcpyAsync");
  }
  Status host_alloc_pinned(std::size_t bytes, void** out) override {
    *out = nullptr;
    if (!enter()) return Status::kError;
    CUresult r = d().cuMemHostAlloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE);
    if (r == CUDA_ERROR_OUT_OF_MEMORY) return fail(Status::kOutOfMemory, "cuMemHostAlloc", r);
    return check(r, "cuMemHostAlloc");
  }
  Status host_free_pinned(void* ptr) override {
    if (!enter()) return Status::kError;
    return check(d().cuMemFreeHost(ptr), "cuMemFreeHost");
  }

  std::uint64_t now_ns() override {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
  }
  std::string last_error() const override { return t_last_error; }

 private:
  static const Driver& d() { return driver(); }
  static CUstream stream(Stream s) { return reinterpret_cast<CUstream>(s); }
  static CUevent event(Event e) { return reinterpret_cast<CUevent>(e); }

  CUmemAllocationProp allocation_prop() const {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev_;
    return prop;
  }

  // Makes this device's primary context current on the calling thread when none is.
  bool enter() {
    CUcontext cur = nullptr;
    if (d().cuCtxGetCurrent(&cur) == CUDA_SUCCESS && cur == ctx_) return true;
    if (d().cuCtxSetCurrent(ctx_) != CUDA_SUCCESS) {
      t_last_error = "cannot make the CUDA context of device " + std::to_string(index_) + " current";
      return false;
    }
    return true;
  }

  static Status fail(Status s, const char* what, CUresult r = CUDA_SUCCESS) {
    const char* text = nullptr;
    if (r != CUDA_SUCCESS && d().cuGetErrorString) d().cuGetErrorString(r, &text);
    t_last_error = std::string(what) + (text ? std::string(": ") + text : std::string());
    return s;
  }
  static Status fail(Status s, const std::string& what) {
    t_last_error = what;
    return s;
  }
  static Status check(CUresult r, const char* what) {
    if (r == CUDA_SUCCESS) return Status::kOk;
    return fail(r == CUDA_ERROR_OUT_OF_MEMORY ? Status::kOutOfMemory : Status::kError, what, r);
  }

  const int index_;
  const CUdevice dev_;
  const CUcontext ctx_;
  const bool vmm_;
  const std::size_t granule_;
  std::mutex mu_;
  std::unordered_map<CUdeviceptr, CUmemGenericAllocationHandle> handles_;
};

}  // namespace

bool cuda_available(std::string* why_not) {
  const Driver& x = driver();
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
  const Driver& x = driver();
  int n = 0;
  if (!x.ok || x.cuDeviceGetCount(&n) != CUDA_SUCCESS) return 0;
  return n;
}

std::unique_ptr<Backend> make_cuda_backend(int device, std::string* error) {
  std::string why;
  if (!cuda_available(&why)) {
    *error = why;
    return nullptr;
  }
  const Driver& x = driver();
  CUdevice dev = 0;
  if (device < 0 || device >= cuda_device_count() || x.cuDeviceGet(&dev, device) != CUDA_SUCCESS) {
    *error = "CUDA device " + std::to_string(device) + " does not exist";
    return nullptr;
  }
  CUcontext ctx = nullptr;
  if (x.cuDevicePrimaryCtxRetain(&ctx, dev) != CUDA_SUCCESS) {
    *error = "cannot retain the primary context of CUDA device " + std::to_string(device);
    return nullptr;
  }
  int vmm = 0;
  x.cuDeviceGetAttribute(&vmm, CU_DEVICE_ATTRIBUTE_VIRTUAL_MEMORY_MANAGEMENT_SUPPORTED, dev);
  std::size_t granule = std::size_t{2} << 20;
  if (vmm) {
    CUmemAllocationProp prop{};
    prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
    prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    prop.location.id = dev;
    std::size_t g = 0;
    if (x.cuMemGetAllocationGranularity(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) ==
            CUDA_SUCCESS && g > 0) {
      granule = (granule + g - 1) / g * g;  // keep 2 MiB unless the device needs more
    }
  }
  return std::make_unique<CudaBackend>(device, dev, ctx, vmm != 0, granule);
}

}  // namespace timeshare::device
