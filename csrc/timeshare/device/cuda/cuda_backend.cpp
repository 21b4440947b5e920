#include "timeshare/device/cuda/cuda_backend.h"

#include <cuda.h>
#include <dlfcn.h>

#include <chrono>
#include <cstdlib>
#include <map>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace timeshare::device {

namespace {

thread_local std::string t_last_error;

constexpr std::size_t kGranuleBytes = std::size_t{2} << 20;  // physical mapping unit (2 MiB)

// The driver library: TIMESHARE_CUDA_DRIVER names another one (the test double) when set.
constexpr const char* kDriverEnv = "TIMESHARE_CUDA_DRIVER";
constexpr const char* kDefaultDriver = "libcuda.so.1";

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

// The Status a failed driver call is reported as: out of memory only when the driver said so,
// a bad argument when it named one, a device error otherwise (see last_error for the text).
Status status_of(CUresult r) {
  switch (r) {
    case CUDA_SUCCESS: return Status::kOk;
    case CUDA_ERROR_OUT_OF_MEMORY: return Status::kOutOfMemory;
    case CUDA_ERROR_INVALID_VALUE:
    case CUDA_ERROR_INVALID_HANDLE: return Status::kInvalid;
    default: return Status::kError;
  }
}

class CudaBackend final : public Backend {
 public:
  CudaBackend(int index, CUdevice dev, CUcontext ctx, bool vmm, std::size_t granule,
              std::vector<CUdevice> peers)
      : index_(index), dev_(dev), ctx_(ctx), vmm_(vmm), granule_(granule),
        peers_(std::move(peers)) {}
  ~CudaBackend() override { d().cuDevicePrimaryCtxRelease(dev_); }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  const char* name() const noexcept override { return "cuda"; }
  int device_index() const noexcept override { return index_; }

  Status reserve(std::size_t bytes, void** out) override {
    *out = nullptr;
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    CUdeviceptr p = 0;
    if (Status s = check(d().cuMemAlloc(&p, bytes), "cuMemAlloc"); s != Status::kOk) return s;
    *out = reinterpret_cast<void*>(p);
    return Status::kOk;
  }

  Status release(void* ptr, std::size_t) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuMemFree(reinterpret_cast<CUdeviceptr>(ptr)), "cuMemFree");
  }

  MemInfo mem_info() override {
    MemInfo m;
    Guard g(*this);
    if (!g.ok()) return m;
    if (check(d().cuMemGetInfo(&m.free_bytes, &m.total_bytes), "cuMemGetInfo") != Status::kOk) {
      return {};
    }
    return m;
  }

  bool supports_virtual_memory() const noexcept override { return vmm_; }
  std::size_t granule_bytes() const noexcept override { return granule_; }

  Status va_reserve(std::size_t bytes, void** base) override {
    *base = nullptr;
    if (!vmm_) return fail(Status::kInvalid, "virtual memory is not supported on this device");
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    if (bytes == 0 || bytes % granule_ != 0) {
      return fail(Status::kInvalid, "va_reserve size must be a non-zero multiple of the granule");
    }
    CUdeviceptr p = 0;
    if (Status s = check(d().cuMemAddressReserve(&p, bytes, granule_, 0, 0), "cuMemAddressReserve");
        s != Status::kOk) {
      return s;
    }
    std::lock_guard lock(mu_);
    ranges_[p] = bytes;
    *base = reinterpret_cast<void*>(p);
    return Status::kOk;
  }

  Status va_release(void* base, std::size_t bytes) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    const auto p = reinterpret_cast<CUdeviceptr>(base);
    std::lock_guard lock(mu_);
    auto it = ranges_.find(p);
    if (it == ranges_.end() || it->second != bytes) {
      return fail(Status::kInvalid, "va_release of an unknown range");
    }
    auto h = handles_.lower_bound(p);
    if (h != handles_.end() && h->first < p + bytes) {
      return fail(Status::kInvalid, "va_release of a range with mapped granules");
    }
    if (Status s = check(d().cuMemAddressFree(p, bytes), "cuMemAddressFree"); s != Status::kOk) {
      return s;
    }
    ranges_.erase(it);
    return Status::kOk;
  }

  // Create + map + set access, one physical handle per granule; all or nothing.
  Status map(void* addr, std::size_t bytes) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    std::lock_guard lock(mu_);
    if (Status s = check_range(base, bytes, /*mapped=*/false, "map"); s != Status::kOk) return s;
    CUmemAllocationProp prop = allocation_prop();
    std::size_t done = 0;
    Status status = Status::kOk;
    for (; done < bytes; done += granule_) {
      CUmemGenericAllocationHandle h = 0;
      if (status = check(d().cuMemCreate(&h, granule_, &prop, 0), "cuMemCreate");
          status != Status::kOk) {
        break;
      }
      if (status = check(d().cuMemMap(base + done, granule_, 0, h, 0), "cuMemMap");
          status != Status::kOk) {
        d().cuMemRelease(h);
        break;
      }
      handles_[base + done] = h;
      mappings_[h] = 1;
    }
    if (status == Status::kOk) status = set_access(base, bytes);
    if (status != Status::kOk && done > 0) {
      const std::string why = t_last_error;  // the cause, not the clean-up
      unmap_locked(base, done);
      t_last_error = why;
    }
    return status;
  }

  // Maps the physical handles now mapped at [from, from+bytes) at [addr, addr+bytes) too; each
  // handle is released when its last mapping goes. All or nothing.
  Status map_alias(void* addr, const void* from, std::size_t bytes) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    const auto source = reinterpret_cast<CUdeviceptr>(from);
    std::lock_guard lock(mu_);
    if (Status s = check_range(base, bytes, /*mapped=*/false, "map_alias"); s != Status::kOk) {
      return s;
    }
    if (Status s = check_range(source, bytes, /*mapped=*/true, "map_alias"); s != Status::kOk) {
      return s;
    }
    std::size_t done = 0;
    Status status = Status::kOk;
    for (; done < bytes; done += granule_) {
      const CUmemGenericAllocationHandle h = handles_.at(source + done);
      if (status = check(d().cuMemMap(base + done, granule_, 0, h, 0), "cuMemMap");
          status != Status::kOk) {
        break;
      }
      handles_[base + done] = h;
      ++mappings_[h];
    }
    if (status == Status::kOk) status = set_access(base, bytes);
    if (status != Status::kOk && done > 0) {
      const std::string why = t_last_error;
      unmap_locked(base, done);  // the source keeps its mappings: no handle is released
      t_last_error = why;
    }
    return status;
  }

  Status unmap(void* addr, std::size_t bytes) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    std::lock_guard lock(mu_);
    // Every granule must be mapped before any is unmapped: a refused unmap changes nothing.
    if (Status s = check_range(base, bytes, /*mapped=*/true, "unmap"); s != Status::kOk) return s;
    return unmap_locked(base, bytes);
  }

  Status create_stream(Stream* out) override {
    *out = kDefaultStream;
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    CUstream s = nullptr;
    Status st = check(d().cuStreamCreate(&s, CU_STREAM_NON_BLOCKING), "cuStreamCreate");
    *out = reinterpret_cast<Stream>(s);
    return st;
  }
  Status destroy_stream(Stream s) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuStreamDestroy(stream(s)), "cuStreamDestroy");
  }
  Status create_event(Event* out) override {
    *out = kNoEvent;
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    CUevent e = nullptr;
    Status st = check(d().cuEventCreate(&e, CU_EVENT_DISABLE_TIMING), "cuEventCreate");
    *out = reinterpret_cast<Event>(e);
    return st;
  }
  Status destroy_event(Event e) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuEventDestroy(event(e)), "cuEventDestroy");
  }
  Status record(Event e, Stream s) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuEventRecord(event(e), stream(s)), "cuEventRecord");
  }
  // Complete only when the driver says so: an error (sticky or not) or a context that cannot be
  // entered is "not complete", with last_error() saying why.
  bool query(Event e) override {
    Guard g(*this);
    if (!g.ok()) return false;
    const CUresult r = d().cuEventQuery(event(e));
    if (r == CUDA_SUCCESS) return true;
    if (r != CUDA_ERROR_NOT_READY) fail(Status::kError, "cuEventQuery", r);
    return false;
  }
  Status stream_wait(Stream s, Event e) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuStreamWaitEvent(stream(s), event(e), 0), "cuStreamWaitEvent");
  }
  Status synchronize_event(Event e) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuEventSynchronize(event(e)), "cuEventSynchronize");
  }
  Status synchronize_stream(Stream s) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuStreamSynchronize(stream(s)), "cuStreamSynchronize");
  }
  Status synchronize_device() override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuCtxSynchronize(), "cuCtxSynchronize");
  }

  Status copy_async(void* dst, const void* src, std::size_t bytes, CopyKind, Stream s) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    // Unified addressing: the driver infers the direction from the pointers.
    return check(d().cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(dst),
                                   reinterpret_cast<CUdeviceptr>(src), bytes, stream(s)),
                 "cuMemcpyAsync");
  }
  Status host_alloc_pinned(std::size_t bytes, void** out) override {
    *out = nullptr;
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuMemHostAlloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE), "cuMemHostAlloc");
  }
  Status host_free_pinned(void* ptr) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    return check(d().cuMemFreeHost(ptr), "cuMemFreeHost");
  }

  std::uint64_t now_ns() override {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
  }
  std::string last_error() const override { return t_last_error; }

 private:
  // Makes this device's primary context current for one backend call and gives the calling
  // thread back the context it had (PyTorch's current device, or none) when the call returns.
  class Guard {
   public:
    explicit Guard(const CudaBackend& b) {
      if (d().cuCtxGetCurrent(&saved_) != CUDA_SUCCESS) saved_ = nullptr;
      if (saved_ == b.ctx_) return;
      if (d().cuCtxSetCurrent(b.ctx_) != CUDA_SUCCESS) {
        t_last_error =
            "cannot make the CUDA context of device " + std::to_string(b.index_) + " current";
        ok_ = false;
        return;
      }
      switched_ = true;
    }
    ~Guard() {
      if (switched_) d().cuCtxSetCurrent(saved_);
    }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    bool ok() const noexcept { return ok_; }

   private:
    CUcontext saved_ = nullptr;
    bool switched_ = false;
    bool ok_ = true;
  };

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

  // kOk when [base, base+bytes) is granular, inside one reserved range, and each of its granules
  // is mapped (`mapped`) or not (`!mapped`); mu_ held.
  Status check_range(CUdeviceptr base, std::size_t bytes, bool mapped, const char* what) const {
    if (bytes == 0 || bytes % granule_ != 0 || base % granule_ != 0) {
      return fail(Status::kInvalid, std::string(what) + " of a range that is not whole granules");
    }
    auto r = ranges_.upper_bound(base);
    if (r == ranges_.begin() || base + bytes > std::prev(r)->first + std::prev(r)->second) {
      return fail(Status::kInvalid, std::string(what) + " outside a reserved range");
    }
    for (std::size_t off = 0; off < bytes; off += granule_) {
      if (handles_.count(base + off) != (mapped ? 1u : 0u)) {
        return fail(Status::kInvalid, std::string(what) + (mapped ? " of an unmapped granule"
                                                                  : " of a mapped granule"));
      }
    }
    return Status::kOk;
  }

  // Read and write access to a mapped range for the owner and every peer that can reach it.
  Status set_access(CUdeviceptr base, std::size_t bytes) {
    std::vector<CUmemAccessDesc> access(1 + peers_.size());
    for (std::size_t i = 0; i < access.size(); ++i) {
      access[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      access[i].location.id = i == 0 ? dev_ : peers_[i - 1];
      access[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    }
    return check(d().cuMemSetAccess(base, bytes, access.data(), access.size()), "cuMemSetAccess");
  }

  // Unmaps each granule of a checked range and releases each handle whose last mapping it was;
  // a granule the driver fails to unmap stays mapped and known, so that a later unmap can retry
  // it. mu_ held.
  Status unmap_locked(CUdeviceptr base, std::size_t bytes) {
    Status status = Status::kOk;
    for (std::size_t off = 0; off < bytes; off += granule_) {
      auto it = handles_.find(base + off);
      if (Status s = check(d().cuMemUnmap(base + off, granule_), "cuMemUnmap"); s != Status::kOk) {
        status = s;
        continue;
      }
      const CUmemGenericAllocationHandle h = it->second;
      handles_.erase(it);
      if (--mappings_[h] > 0) continue;  // still mapped at another address (map_alias)
      mappings_.erase(h);
      if (Status s = check(d().cuMemRelease(h), "cuMemRelease"); s != Status::kOk) status = s;
    }
    return status;
  }

  static Status fail(Status s, const char* what, CUresult r) {
    const char* text = nullptr;
    if (r != CUDA_SUCCESS && d().cuGetErrorString) d().cuGetErrorString(r, &text);
    t_last_error = std::string(what) + ": " +
                   (text ? std::string(text) : "CUDA error " + std::to_string(static_cast<int>(r)));
    return s;
  }
  static Status fail(Status s, const std::string& what) {
    t_last_error = what;
    return s;
  }
  static Status check(CUresult r, const char* what) {
    if (r == CUDA_SUCCESS) return Status::kOk;
    return fail(status_of(r), what, r);
  }

  const int index_;
  const CUdevice dev_;
  const CUcontext ctx_;
  const bool vmm_;
  const std::size_t granule_;
  const std::vector<CUdevice> peers_;  // devices that can access this one's memory
  std::mutex mu_;
  std::map<CUdeviceptr, std::size_t> ranges_;                     // va_reserve'd: base -> bytes
  std::map<CUdeviceptr, CUmemGenericAllocationHandle> handles_;  // mapped granule -> handle
  std::unordered_map<CUmemGenericAllocationHandle, int> mappings_;  // handle -> addresses mapped
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
  std::size_t granule = kGranuleBytes;
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
  // Memory this device maps is made accessible to every device that can reach it (as PyTorch's
  // expandable segments do): a peer's kernels and copies may read a tensor of this device.
  std::vector<CUdevice> peers;
  for (int i = 0; i < cuda_device_count(); ++i) {
    CUdevice other = 0;
    int can = 0;
    if (i == device || x.cuDeviceGet(&other, i) != CUDA_SUCCESS) continue;
    if (x.cuDeviceCanAccessPeer(&can, other, dev) == CUDA_SUCCESS && can) peers.push_back(other);
  }
  return std::make_unique<CudaBackend>(device, dev, ctx, vmm != 0, granule, std::move(peers));
}

}  // namespace timeshare::device
