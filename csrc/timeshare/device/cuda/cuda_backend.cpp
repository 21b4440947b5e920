#include "timeshare/device/cuda/cuda_backend.h"

#include <cuda.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <mutex>
#include <set>
#include <unordered_map>
#include <utility>
#include <vector>

#include "timeshare/device/cuda/cuda_driver.h"
#include "timeshare/device/cuda/cuda_peer_access.h"
#include "timeshare/device/cuda/cuda_stand_in_events.h"

namespace timeshare::device {

namespace {

using cuda_api::Driver;
using cuda_api::driver;
using cuda_api::status_of;

thread_local std::string t_last_error;


class CudaBackend final : public Backend, public cuda_api::PeerFollower {
 public:
  CudaBackend(int index, cuda_api::DeviceTraits t)
      : index_(index), dev_(t.dev), ctx_(t.ctx), vmm_(t.vmm), rdma_(t.rdma),
        posix_fd_(t.posix_fd), granule_(t.granule), all_devices_(std::move(t.all_devices)),
        capable_(std::move(t.capable)) {}
  ~CudaBackend() override {
    cuda_api::remove_peer_follower(this);
    {
      Guard g(*this);
      stand_ins_.destroy_all();
      std::lock_guard lock(mu_);
      retry_releases();
    }
    d().cuDevicePrimaryCtxRelease(dev_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  int index() const noexcept { return index_; }

  // The peers granted access to what this backend maps (PeerAccess::granted). A peer added is
  // granted the granules already mapped too; one removed keeps the access it has. Called by the
  // peer registry, its lock held.
  Status follow(const cuda_api::PeerAccess& access, std::string* why) override {
    std::vector<CUdevice> want;
    for (CUdevice peer : capable_) {
      const auto at = std::find(all_devices_.begin(), all_devices_.end(), peer);
      if (access.granted(static_cast<int>(at - all_devices_.begin()), index_)) want.push_back(peer);
    }
    Status status = Status::kOk;
    {
      std::lock_guard lock(mu_);
      std::erase_if(peers_, [&](CUdevice p) {
        return std::find(want.begin(), want.end(), p) == want.end();
      });
    }
    for (CUdevice peer : want) {
      if (Status st = add_peer(peer); st != Status::kOk) status = st;
    }
    if (status != Status::kOk && why) *why = last_error();
    return status;
  }

  // Grants `peer` read and write access to every granule mapped now, and to those mapped later.
  Status add_peer(CUdevice peer) {
    std::lock_guard lock(mu_);
    if (peer == dev_ || std::find(peers_.begin(), peers_.end(), peer) != peers_.end()) {
      return Status::kOk;
    }
    peers_.push_back(peer);
    if (handles_.empty()) return Status::kOk;
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    CUmemAccessDesc access{};
    access.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
    access.location.id = peer;
    access.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    // One call per run of mapped granules inside one reserved range.
    Status status = Status::kOk;
    for (const auto& [base, bytes] : ranges_) {
      auto h = handles_.lower_bound(base);
      while (h != handles_.end() && h->first < base + bytes) {
        const CUdeviceptr first = h->first;
        CUdeviceptr end = first + granule_;
        while (++h != handles_.end() && h->first == end && end < base + bytes) end += granule_;
        if (Status st = check(d().cuMemSetAccess(first, end - first, &access, 1), "cuMemSetAccess");
            st != Status::kOk) {
          status = st;
        }
      }
    }
    return status;
  }

  const char* name() const noexcept override { return "cuda"; }
  int device_index() const noexcept override { return index_; }

  Status reserve(std::size_t bytes, void** out) override {
    CUdeviceptr p = 0;
    const Status st = call("cuMemAlloc", [&] { return d().cuMemAlloc(&p, bytes); });
    *out = st == Status::kOk ? reinterpret_cast<void*>(p) : nullptr;
    return st;
  }

  Status release(void* ptr, std::size_t) override {
    return call("cuMemFree", [&] { return d().cuMemFree(reinterpret_cast<CUdeviceptr>(ptr)); });
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
    return map_each_locked(base, bytes, /*fresh=*/true,
                           [&](std::size_t, CUmemGenericAllocationHandle* h) {
                             CUresult r = d().cuMemCreate(h, granule_, &prop, 0);
                             if (posix_fd_ && (r == CUDA_ERROR_NOT_SUPPORTED ||
                                               r == CUDA_ERROR_NOT_PERMITTED)) {
                               // Exportable memory refused (some containers do, whatever the
                               // device reports): plain memory, and CUDA IPC says why.
                               posix_fd_ = false;
                               fail(Status::kError, "cuMemCreate of exportable memory", r);
                               posix_fd_refused_ = t_last_error;
                               prop = allocation_prop();
                               r = d().cuMemCreate(h, granule_, &prop, 0);
                             }
                             return check(r, "cuMemCreate");
                           });
  }

  // Maps the physical handles now mapped at [from, from+bytes) at [addr, addr+bytes) too; each
  // handle is released when its last mapping goes (the source keeps its own). All or nothing.
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
    return map_each_locked(base, bytes, /*fresh=*/false,
                           [&](std::size_t off, CUmemGenericAllocationHandle* h) {
                             *h = handles_.at(source + off);
                             return Status::kOk;
                           });
  }

  // One POSIX file descriptor per granule's physical handle (cuMemExportToShareableHandle).
  Status export_granules(const void* addr, std::size_t bytes, std::vector<int>* fds) override {
    fds->clear();
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    std::lock_guard lock(mu_);
    if (!posix_fd_) {
      return fail(Status::kInvalid,
                  "device " + std::to_string(index_) +
                      " cannot export memory as POSIX file descriptors (" +
                      (posix_fd_refused_.empty()
                           ? "CU_DEVICE_ATTRIBUTE_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR_SUPPORTED is 0"
                           : "the driver refused it: " + posix_fd_refused_) +
                      ")");
    }
    if (Status s = check_range(base, bytes, /*mapped=*/true, "export"); s != Status::kOk) return s;
    for (std::size_t off = 0; off < bytes; off += granule_) {
      int fd = -1;
      const Status s = check(d().cuMemExportToShareableHandle(
                                 &fd, handles_.at(base + off),
                                 CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR, 0),
                             "cuMemExportToShareableHandle");
      if (s != Status::kOk) {
        for (int made : *fds) ::close(made);
        fds->clear();
        return s;
      }
      fds->push_back(fd);
    }
    return Status::kOk;
  }

  // Reserve, import + map each handle (cuMemImportFromShareableHandle), set access; all or
  // nothing. The range and its handles are this backend's like any other mapping.
  Status import_granules(const std::vector<int>& fds, void** out) override {
    *out = nullptr;
    if (fds.empty()) return fail(Status::kInvalid, "import of no granules");
    const std::size_t bytes = fds.size() * granule_;
    void* range = nullptr;
    if (Status s = va_reserve(bytes, &range); s != Status::kOk) return s;
    const auto base = reinterpret_cast<CUdeviceptr>(range);
    Status s = Status::kError;
    {
      Guard g(*this);
      std::lock_guard lock(mu_);
      if (g.ok()) {
        s = map_each_locked(base, bytes, /*fresh=*/true,
                            [&](std::size_t off, CUmemGenericAllocationHandle* h) {
                              const auto fd = static_cast<std::uintptr_t>(fds[off / granule_]);
                              return check(d().cuMemImportFromShareableHandle(
                                               h, reinterpret_cast<void*>(fd),
                                               CU_MEM_HANDLE_TYPE_POSIX_FILE_DESCRIPTOR),
                                           "cuMemImportFromShareableHandle");
                            });
      }
      if (s == Status::kOk) imports_.insert(base);
    }
    if (s != Status::kOk) {
      const std::string why = t_last_error;
      va_release(range, bytes);  // refused, and the range kept, where a granule stayed mapped
      t_last_error = why;
      return s;
    }
    *out = range;
    return Status::kOk;
  }

  Status release_import(void* addr) override {
    const auto base = reinterpret_cast<CUdeviceptr>(addr);
    std::size_t bytes = 0;
    {
      Guard g(*this);
      if (!g.ok()) return Status::kError;
      std::lock_guard lock(mu_);
      if (imports_.count(base) == 0) return fail(Status::kInvalid, "release of an unknown import");
      bytes = ranges_.at(base);
      if (Status s = unmap_locked(base, bytes); s != Status::kOk) return s;
    }
    if (Status s = va_release(addr, bytes); s != Status::kOk) return s;
    std::lock_guard lock(mu_);
    imports_.erase(base);
    return Status::kOk;
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
    CUstream s = nullptr;
    const Status st =
        call("cuStreamCreate", [&] { return d().cuStreamCreate(&s, CU_STREAM_NON_BLOCKING); });
    *out = st == Status::kOk ? reinterpret_cast<Stream>(s) : kDefaultStream;
    return st;
  }
  Status destroy_stream(Stream s) override {
    return call("cuStreamDestroy", [&] { return d().cuStreamDestroy(stream(s)); });
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
    return call("cuEventDestroy", [&] {
      stand_ins_.drop(event(e));
      return d().cuEventDestroy(event(e));
    });
  }
  // On a stream of this device's context, `e` itself is recorded; on a stream of another device
  // (record_stream onto another GPU's stream), a stand-in created in that device's context, which
  // then answers for `e` (StandInEvents).
  Status record(Event e, Stream s) override {
    Guard g(*this);
    if (!g.ok()) return Status::kError;
    CUcontext owner = ctx_;
    if (!current_context_stream(s)) {
      if (Status st = check(d().cuStreamGetCtx(stream(s), &owner), "cuStreamGetCtx");
          st != Status::kOk) {
        return st;
      }
    }
    if (owner != ctx_) {
      const char* what = "";
      return check(stand_ins_.record(event(e), stream(s), owner, ctx_, &what), what);
    }
    stand_ins_.drop(event(e));
    return check(d().cuEventRecord(event(e), stream(s)), "cuEventRecord");
  }
  // Complete only when the driver says so: an error (sticky or not) or a context that cannot be
  // entered is "not complete", with last_error() saying why.
  bool query(Event e) override {
    Guard g(*this);
    if (!g.ok()) return false;
    const CUresult r = d().cuEventQuery(stand_ins_.resolve(event(e)));
    if (r == CUDA_SUCCESS) return true;
    if (r != CUDA_ERROR_NOT_READY) fail(Status::kError, "cuEventQuery", r);
    return false;
  }
  Status stream_wait(Stream s, Event e) override {
    return call("cuStreamWaitEvent",
                [&] { return d().cuStreamWaitEvent(stream(s), stand_ins_.resolve(event(e)), 0); });
  }
  Status synchronize_event(Event e) override {
    return call("cuEventSynchronize",
                [&] { return d().cuEventSynchronize(stand_ins_.resolve(event(e))); });
  }
  Status synchronize_stream(Stream s) override {
    return call("cuStreamSynchronize", [&] { return d().cuStreamSynchronize(stream(s)); });
  }
  Status synchronize_device() override {
    return call("cuCtxSynchronize", [] { return d().cuCtxSynchronize(); });
  }

  // Unified addressing: the driver infers the direction from the pointers.
  Status copy_async(void* dst, const void* src, std::size_t bytes, CopyKind, Stream s) override {
    return call("cuMemcpyAsync", [&] {
      return d().cuMemcpyAsync(reinterpret_cast<CUdeviceptr>(dst),
                               reinterpret_cast<CUdeviceptr>(src), bytes, stream(s));
    });
  }
  Status host_alloc_pinned(std::size_t bytes, void** out) override {
    *out = nullptr;
    return call("cuMemHostAlloc",
                [&] { return d().cuMemHostAlloc(out, bytes, CU_MEMHOSTALLOC_PORTABLE); });
  }
  Status host_free_pinned(void* ptr) override {
    return call("cuMemFreeHost", [&] { return d().cuMemFreeHost(ptr); });
  }

  std::uint64_t now_ns() override {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
  }
  std::string last_error() const override { return t_last_error; }

 private:
  // Makes this device's primary context current for one backend call and gives the calling
  // thread back the context it had (PyTorch's current device, or none) when the call returns;
  // t_last_error says so where it cannot.
  struct Guard : cuda_api::ContextGuard {
    explicit Guard(const CudaBackend& b) : ContextGuard(b.ctx_) {
      if (!ok()) t_last_error = "cannot make the CUDA context of device " +
                                std::to_string(b.index_) + " current";
    }
  };
  // One driver call in this device's context, as a Status.
  template <class Call>
  Status call(const char* what, Call&& c) {
    Guard g(*this);
    return g.ok() ? check(c(), what) : Status::kError;
  }

  static const Driver& d() { return driver(); }
  static CUstream stream(Stream s) { return reinterpret_cast<CUstream>(s); }
  static CUevent event(Event e) { return reinterpret_cast<CUevent>(e); }

  // The null stream and the legacy and per-thread default streams are the current context's: this
  // device's, inside a backend call.
  static bool current_context_stream(Stream s) {
    const CUstream h = stream(s);
    return h == nullptr || h == CU_STREAM_LEGACY || h == CU_STREAM_PER_THREAD;
  }

  CUmemAllocationProp allocation_prop() const {
    return cuda_api::allocation_prop(dev_, rdma_, posix_fd_);
  }

  // Maps granule after granule of [base, base+bytes) with the handle `next(offset, &h)` gives
  // (`fresh`: made for this mapping, released when its map fails; else one already mapped
  // elsewhere), then sets access. All or nothing: after a failure what it mapped is unmapped
  // again (a fresh handle goes with it) and the first failure's message stays. mu_ held.
  template <class Next>
  Status map_each_locked(CUdeviceptr base, std::size_t bytes, bool fresh, Next next) {
    std::size_t done = 0;
    Status status = Status::kOk;
    for (; done < bytes; done += granule_) {
      CUmemGenericAllocationHandle h = 0;
      if (status = next(done, &h); status != Status::kOk) break;
      if (status = check(d().cuMemMap(base + done, granule_, 0, h, 0), "cuMemMap");
          status != Status::kOk) {
        if (fresh) d().cuMemRelease(h);
        break;
      }
      handles_[base + done] = h;
      ++mappings_[h];
    }
    if (status == Status::kOk) status = set_access(base, bytes);
    if (status != Status::kOk && done > 0) {
      const std::string why = t_last_error;  // the cause, not the clean-up
      unmap_locked(base, done, /*all_or_nothing=*/false);
      t_last_error = why;
    }
    return status;
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

  // Read and write access to a mapped range for the owner and its peers (follow); mu_ held.
  Status set_access(CUdeviceptr base, std::size_t bytes) {
    std::vector<CUmemAccessDesc> access(1 + peers_.size());
    for (std::size_t i = 0; i < access.size(); ++i) {
      access[i].location.type = CU_MEM_LOCATION_TYPE_DEVICE;
      access[i].location.id = i == 0 ? dev_ : peers_[i - 1];
      access[i].flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
    }
    return check(d().cuMemSetAccess(base, bytes, access.data(), access.size()), "cuMemSetAccess");
  }

  // Unmaps each granule of a checked range and releases each handle whose last mapping it was.
  // With `all_or_nothing` (unmap), a granule the driver fails to unmap stops the call and the
  // granules it had unmapped are mapped again (same handles, same access): a failed unmap leaves
  // the range as it was, so the caller's idea of what is mapped stays the driver's, and a later
  // unmap retries. Without (undoing a failed map), it goes on past a failure, unmapping what it
  // can. Either way a granule the driver keeps mapped stays known here, and one it does not is
  // forgotten: these records always follow the driver's. mu_ held.
  Status unmap_locked(CUdeviceptr base, std::size_t bytes, bool all_or_nothing = true) {
    retry_releases();
    Status status = Status::kOk;
    std::vector<CUdeviceptr> unmapped;
    for (std::size_t off = 0; off < bytes; off += granule_) {
      if (Status s = check(d().cuMemUnmap(base + off, granule_), "cuMemUnmap"); s != Status::kOk) {
        status = s;
        if (all_or_nothing) break;
        continue;
      }
      unmapped.push_back(base + off);
    }
    if (status != Status::kOk && all_or_nothing) {
      const std::string why = t_last_error;  // the cause, not the repair
      for (CUdeviceptr at : unmapped) {
        if (!remap_locked(at)) forget_locked(at);
      }
      t_last_error = why;
      return status;
    }
    for (CUdeviceptr at : unmapped) forget_locked(at);
    return status;
  }

  // Maps the granule at `addr` again with its handle and its access, after an unmap that had to
  // be undone; false (the granule unmapped) when the driver refuses. mu_ held.
  bool remap_locked(CUdeviceptr addr) {
    if (d().cuMemMap(addr, granule_, 0, handles_.at(addr), 0) != CUDA_SUCCESS) return false;
    if (set_access(addr, granule_) == Status::kOk) return true;
    return d().cuMemUnmap(addr, granule_) != CUDA_SUCCESS;  // mapped but unreachable: better gone
  }

  // The granule at `addr` is no longer mapped: its handle goes with its last mapping. A handle the
  // driver fails to release is retried at the next unmap (the range is unmapped all the same).
  // mu_ held.
  void forget_locked(CUdeviceptr addr) {
    auto it = handles_.find(addr);
    if (it == handles_.end()) return;
    const CUmemGenericAllocationHandle h = it->second;
    handles_.erase(it);
    if (--mappings_[h] > 0) return;  // still mapped at another address (map_alias)
    mappings_.erase(h);
    if (check(d().cuMemRelease(h), "cuMemRelease") != Status::kOk) unreleased_.push_back(h);
  }

  void retry_releases() {
    std::erase_if(unreleased_, [](CUmemGenericAllocationHandle h) {
      return d().cuMemRelease(h) == CUDA_SUCCESS;
    });
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
  const bool rdma_;  // physical memory is created RDMA-capable
  bool posix_fd_;  // ... and exportable as POSIX file descriptors (CUDA IPC); mu_
  std::string posix_fd_refused_;  // why the driver refused exportable memory, if it did; mu_
  const std::size_t granule_;
  std::mutex mu_;
  const std::vector<CUdevice> all_devices_;  // by index
  const std::vector<CUdevice> capable_;      // devices that can access this one's memory
  std::vector<CUdevice> peers_;  // devices granted access to what this one maps; mu_
  std::map<CUdeviceptr, std::size_t> ranges_;                     // va_reserve'd: base -> bytes
  std::map<CUdeviceptr, CUmemGenericAllocationHandle> handles_;  // mapped granule -> handle
  std::unordered_map<CUmemGenericAllocationHandle, int> mappings_;  // handle -> addresses mapped
  std::vector<CUmemGenericAllocationHandle> unreleased_;  // unmapped, cuMemRelease failed
  std::set<CUdeviceptr> imports_;  // ranges import_granules mapped (also in ranges_)
  cuda_api::StandInEvents stand_ins_;  // for events recorded on other devices' streams
};

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(int device, std::string* error) {
  cuda_api::DeviceTraits traits;
  if (!cuda_available(error) || !cuda_api::probe_device(device, &traits, error)) return nullptr;
  auto b = std::make_unique<CudaBackend>(device, std::move(traits));
  cuda_api::add_peer_follower(b.get());
  return b;
}

}  // namespace timeshare::device
