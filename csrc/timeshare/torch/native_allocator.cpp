// The native route (see native_allocator.h): timeshare as a c10 CUDAAllocator.
#include "timeshare/torch/native_allocator.h"

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/ApproximateClock.h>
#include <c10/util/Exception.h>
#include <cuda_runtime_api.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "timeshare/allocator/registry.h"
#include "timeshare/device/cuda/cuda_backend.h"
#include "timeshare/common/log_line.h"
#include "timeshare/torch/memory_history.h"

namespace timeshare::native {

namespace {

namespace cca = c10::cuda::CUDACachingAllocator;
namespace cda = c10::CachingDeviceAllocator;
using c10::DeviceIndex;
// Inside a c10::Allocator subclass, "Allocator" names c10's: the core's is Core.
using Core = timeshare::Allocator;
using c10::MempoolId_t;

device::Stream to_stream(cudaStream_t s) { return reinterpret_cast<device::Stream>(s); }
void* stream_ptr(device::Stream s) { return reinterpret_cast<void*>(s); }

// torch's statistics from the core's (same fields, same meanings: common/stats.h).
void to_c10(const StatArray& in, c10::CachingAllocator::StatArray& out) {
  for (int t = 0; t < kNumStatTypes; ++t) {
    out[t].current = in[t].current;
    out[t].peak = in[t].peak;
    out[t].allocated = in[t].allocated;
    out[t].freed = in[t].freed;
  }
}

void to_c10(const Stat& in, c10::CachingAllocator::Stat& out) {
  out.current = in.current;
  out.peak = in.peak;
  out.allocated = in.allocated;
  out.freed = in.freed;
}

cda::TraceEntry::Action to_action(SegmentAction a) {
  switch (a) {
    case SegmentAction::kAlloc: return cda::TraceEntry::SEGMENT_ALLOC;
    case SegmentAction::kFree: return cda::TraceEntry::SEGMENT_FREE;
    case SegmentAction::kMap: return cda::TraceEntry::SEGMENT_MAP;
    case SegmentAction::kUnmap: return cda::TraceEntry::SEGMENT_UNMAP;
  }
  return cda::TraceEntry::SEGMENT_MAP;
}

class NativeAllocator;
NativeAllocator* g_instance = nullptr;  // the one installed; never destroyed (torch keeps it)

void delete_block(void* ptr);

class NativeAllocator final : public cca::CUDAAllocator {
 public:
  explicit NativeAllocator(bool sim) : sim_(sim) {}

  // ---- allocation ---------------------------------------------------------------------------
  c10::DataPtr allocate(std::size_t nbytes) override {
    const DeviceIndex device = current_device();
    void* p = nbytes ? malloc_on(device, nbytes, current_stream(device)) : nullptr;
    return {p, p, &delete_block, c10::Device(c10::DeviceType::CUDA, device)};
  }
  c10::DeleterFnPtr raw_deleter() const override { return &delete_block; }
  void copy_data(void* dest, const void* src, std::size_t count) const override {
    if (sim_) {
      std::memcpy(dest, src, count);
      return;
    }
    C10_CUDA_CHECK(cudaMemcpy(dest, src, count, cudaMemcpyDeviceToDevice));
  }
  void* raw_alloc(std::size_t nbytes) override {
    if (nbytes == 0) return nullptr;
    const DeviceIndex device = current_device();
    return malloc_on(device, nbytes, current_stream(device));
  }
  void* raw_alloc_with_stream(std::size_t nbytes, cudaStream_t stream) override {
    if (nbytes == 0) return nullptr;
    return malloc_on(current_device(), nbytes, to_stream(stream));
  }
  void raw_delete(void* ptr) override { free_block(ptr); }

  void* malloc_on(DeviceIndex device, std::size_t nbytes, device::Stream stream) {
    Core* a = allocator_for(device);
    std::shared_ptr<c10::GatheredContext> context;
    if (history_.enabled()) context = history_.gather(device, /*at_free=*/false);
    void* p = a->malloc(nbytes, stream);
    if (!p) out_of_memory(device, *a, nbytes, stream);
    if (history_.active()) {
      history_.record(device, cda::TraceEntry::ALLOC, reinterpret_cast<std::size_t>(p), nbytes,
                      stream_ptr(stream), context, p);
    }
    return p;
  }

  void free_block(void* ptr) {
    if (!ptr) return;
    const bool tracing = history_.active();
    for (int d = 0; d < registry::kMaxDevices; ++d) {
      Core* a = registry::existing(d);
      if (!a) {
        if (d >= device_count_hint()) break;
        continue;
      }
      device::Stream stream = device::kDefaultStream;
      std::size_t bytes = 0;
      if (tracing && !a->block_info(ptr, &stream, &bytes)) continue;
      if (!a->free(ptr)) continue;
      if (tracing) {
        const auto device = static_cast<DeviceIndex>(d);
        auto context = history_.enabled() ? history_.gather(device, /*at_free=*/true) : nullptr;
        const auto addr = reinterpret_cast<std::size_t>(ptr);
        history_.record(device, cda::TraceEntry::FREE_REQUESTED, addr, bytes, stream_ptr(stream),
                        context, nullptr);
        history_.record(device, cda::TraceEntry::FREE_COMPLETED, addr, bytes, stream_ptr(stream),
                        context, nullptr);
        history_.forget(device, ptr);
      }
      return;
    }
    // The core logged the unknown pointer; nothing escapes a deleter.
  }

  // ---- device set-up ------------------------------------------------------------------------
  void init(int device_count) override {
    device_count_.store(device_count, std::memory_order_relaxed);
    initialized_.store(true, std::memory_order_relaxed);
  }
  bool initialized() override { return initialized_.load(std::memory_order_relaxed); }
  void enable(bool value) override { enabled_.store(value); }
  bool isEnabled() const override { return enabled_.load(); }
  std::string name() override { return "timeshare"; }

  double getMemoryFraction(DeviceIndex device) override {
    Core* a = registry::existing(device);
    return a ? a->memory_fraction() : 1.0;
  }
  void setMemoryFraction(double fraction, DeviceIndex device) override {
    TORCH_CHECK(fraction >= 0.0 && fraction <= 1.0, "invalid fraction:", fraction,
                ". Please set within [0, 1].");
    allocator_for(device)->set_memory_fraction(fraction == 0.0 ? 1e-9 : fraction);
  }
  std::vector<cca::StreamSegmentSize> getExpandableSegmentSizes(DeviceIndex) override {
    return {};  // timeshare's arenas are not torch's expandable segments
  }

  // ---- caching ------------------------------------------------------------------------------
  void emptyCache(MempoolId_t mempool_id) override {
    const PoolId id{mempool_id.first, mempool_id.second};
    registry::for_each([&](int, Core& a) {
      if (id == kDefaultPoolId) {
        a.empty_cache();
      } else {
        a.empty_cache(id);
      }
    });
  }
  void cacheInfo(DeviceIndex device, std::size_t* largest) override {
    Core* a = registry::existing(device);
    *largest = a ? a->largest_cached_bytes() : 0;
  }
  void* getBaseAllocation(void* ptr, std::size_t* size) override {
    std::uintptr_t base = 0;
    TORCH_CHECK(registry::base_allocation(ptr, &base, size), "timeshare: getBaseAllocation: ",
                ptr, " is not in memory timeshare mapped");
    return reinterpret_cast<void*>(base);
  }
  void recordStream(const c10::DataPtr& ptr, c10::cuda::CUDAStream stream) override {
    if (!ptr.get()) return;
    bool found = false;
    registry::for_each([&](int, Core& a) {
      if (!found) found = a.record_stream(ptr.get(), to_stream(stream.stream()));
    });
  }

  // ---- statistics ---------------------------------------------------------------------------
  cda::DeviceStats getDeviceStats(DeviceIndex device) override {
    cda::DeviceStats out;
    Core* a = registry::existing(device);
    if (!a) return out;
    const DeviceStats s = a->stats();
    to_c10(s.allocation, out.allocation);
    to_c10(s.segment, out.segment);
    to_c10(s.active, out.active);
    to_c10(s.inactive_split, out.inactive_split);
    to_c10(s.allocated_bytes, out.allocated_bytes);
    to_c10(s.reserved_bytes, out.reserved_bytes);
    to_c10(s.active_bytes, out.active_bytes);
    to_c10(s.inactive_split_bytes, out.inactive_split_bytes);
    to_c10(s.requested_bytes, out.requested_bytes);
    to_c10(s.oversize_allocations, out.oversize_allocations);
    to_c10(s.oversize_segments, out.oversize_segments);
    out.num_alloc_retries = s.num_alloc_retries;
    out.num_ooms = s.num_ooms;
    out.num_sync_all_streams = s.num_sync_all_streams;
    out.num_device_alloc = s.num_device_alloc;
    out.num_device_free = s.num_device_free;
    out.max_split_size = s.max_split_size;
    for (const auto& [id, reserved] : a->private_pool_reserved()) {
      to_c10(reserved, out.reserved_bytes_by_private_pools[MempoolId_t(id.first, id.second)]);
    }
    return out;
  }
  void resetAccumulatedStats(DeviceIndex device) override {
    if (Core* a = registry::existing(device)) a->reset_accumulated_stats();
  }
  void resetPeakStats(DeviceIndex device) override {
    if (Core* a = registry::existing(device)) a->reset_peak_stats();
  }

  // ---- snapshots and memory history ----------------------------------------------------------
  cca::SnapshotInfo snapshot(MempoolId_t mempool_id, bool include_traces) override {
    const PoolId only{mempool_id.first, mempool_id.second};
    cca::SnapshotInfo out;
    int max_device = -1;
    registry::for_each([&](int d, Core& a) {
      max_device = std::max(max_device, d);
      const bool vmm = a.backend().supports_virtual_memory();
      for (const Core::SegmentView& seg : a.segments()) {
        if (only != kDefaultPoolId && seg.pool != only) continue;
        cda::SegmentInfo info;
        info.device = static_cast<DeviceIndex>(d);
        info.address = seg.addr;
        info.total_size = seg.bytes;
        info.stream = stream_ptr(seg.stream);
        info.is_large = true;
        info.is_expandable = vmm;
        info.owner_private_pool_id = {seg.pool.first, seg.pool.second};
        for (const Core::BlockView& b : seg.blocks) {
          cda::BlockInfo block;
          block.size = b.bytes;
          block.requested_size = b.requested_bytes;
          block.allocated = b.allocated;
          block.active = b.allocated;
          if (b.allocated) {
            info.allocated_size += b.bytes;
            info.active_size += b.bytes;
            info.requested_size += b.requested_bytes;
            block.context_when_allocated =
                history_.context_of(d, reinterpret_cast<const void*>(b.addr));
          }
          info.blocks.push_back(std::move(block));
        }
        out.segments.push_back(std::move(info));
      }
    });
    const int devices = std::max(max_device + 1, device_count_hint());
    out.device_traces.resize(static_cast<std::size_t>(std::max(devices, 0)));
    if (include_traces) out.device_traces = history_.traces(devices);
    out.config_metadata.garbage_collection_threshold = 0.0;
    out.config_metadata.max_split_size = SIZE_MAX;
    out.config_metadata.pinned_num_register_threads = 1;
    out.config_metadata.expandable_segments = true;
    out.config_metadata.release_lock_on_malloc = false;
    out.config_metadata.pinned_use_host_register = false;
    out.config_metadata.graph_capture_record_stream_reuse = false;
    out.config_metadata.last_allocator_settings = "timeshare:" + to_conf_string(registry::options());
    out.config_metadata.max_round_threshold = 0;
    out.config_metadata.max_cached_size = SIZE_MAX;
    return out;
  }

  void recordHistory(bool enabled, cda::CreateContextFn recorder, std::size_t max_entries,
                     cda::RecordContext when, bool clear_history,
                     const std::vector<std::string>& skip_actions) override {
    history_.configure(enabled, recorder, max_entries, when, clear_history, skip_actions);
    if (enabled) {
      // Mapping changes happen inside the core: its segment sink records them.
      for (int d = 0; d < registry::kMaxDevices; ++d) {
        if (Core* a = registry::existing(d)) watch_segments(*a, static_cast<DeviceIndex>(d));
      }
    }
  }
  bool isHistoryEnabled() override { return history_.enabled(); }
  std::shared_ptr<c10::GatheredContext> getContextForPointer(const void* ptr) override {
    return history_.any_context_of(ptr);
  }
  void attachOutOfMemoryObserver(cca::OutOfMemoryObserver observer) override {
    std::lock_guard lock(observers_mu_);
    oom_observers_.push_back(std::move(observer));
  }
  void attachOomRejectionObserver(cca::OomRejectionObserver observer) override {
    // timeshare never rejects an allocation before asking the device (torch's
    // throw_on_cudamalloc_oom): kept, never called.
    std::lock_guard lock(observers_mu_);
    rejection_observers_.push_back(std::move(observer));
  }
  void attachAllocatorTraceTracker(cda::AllocatorTraceTracker tracker) override {
    history_.add_tracker(std::move(tracker));
    for (int d = 0; d < registry::kMaxDevices; ++d) {
      if (Core* a = registry::existing(d)) watch_segments(*a, static_cast<DeviceIndex>(d));
    }
  }

  // ---- private pools (CUDA graphs, torch.cuda.MemPool) ---------------------------------------
  void beginAllocateToPool(DeviceIndex device, MempoolId_t id,
                           std::function<bool(cudaStream_t)> filter) override {
    auto f = [filter = std::move(filter)](device::Stream s) {
      return filter(reinterpret_cast<cudaStream_t>(s));
    };
    check(allocator_for(device)->begin_allocate_to_pool({id.first, id.second}, std::move(f)));
  }
  void endAllocateToPool(DeviceIndex device, MempoolId_t id) override {
    check(allocator_for(device)->end_allocate_to_pool({id.first, id.second}));
  }
  void releasePool(DeviceIndex device, MempoolId_t id) override {
    check(allocator_for(device)->release_pool({id.first, id.second}));
  }
  int getPoolUseCount(DeviceIndex device, MempoolId_t id) override {
    Core* a = registry::existing(device);
    return a ? a->pool_use_count({id.first, id.second}) : 0;
  }
  void createOrIncrefPool(DeviceIndex device, MempoolId_t id,
                          std::shared_ptr<cca::CUDAAllocator> allocator) override {
    TORCH_CHECK(allocator == nullptr || allocator.get() == this,
                "timeshare serves every CUDA memory pool itself: torch.cuda.MemPool(allocator=...) "
                "with another allocator is not supported while timeshare is enabled");
    check(allocator_for(device)->create_or_incref_pool({id.first, id.second}));
  }
  void setUseOnOOM(DeviceIndex device, MempoolId_t id, bool use_on_oom) override {
    check(allocator_for(device)->set_use_on_oom({id.first, id.second}, use_on_oom));
  }
  void setNoSplit(DeviceIndex, MempoolId_t) override {
    // torch's no_split keeps its caching allocator from splitting a pool's segments; timeshare
    // places blocks in mapped granules and has no segment to split: nothing to change.
  }
  bool checkPoolLiveAllocations(DeviceIndex device, MempoolId_t id,
                                const std::unordered_set<void*>& expected) override {
    Core* a = registry::existing(device);
    const std::vector<void*> live = a ? a->pool_live_blocks({id.first, id.second})
                                      : std::vector<void*>{};
    if (live.size() != expected.size()) return false;
    return std::all_of(live.begin(), live.end(), [&](void* p) { return expected.count(p) > 0; });
  }
  void markCaptureBegin(DeviceIndex device) override { allocator_for(device)->set_capturing(true); }
  void markCaptureEnd(DeviceIndex device) override { allocator_for(device)->set_capturing(false); }

  // ---- CUDA IPC (torch.multiprocessing, Tensor.share_memory_): the core's handles ------------
  // The block at `ptr` as a handle another process's getIpcDevPtr maps, and where the block
  // starts in what it maps (torch adds that offset: StorageSharing.cpp).
  cca::ShareableHandle shareIpcHandle(void* ptr) override {
    Core* owner = nullptr;
    registry::for_each([&](int, Core& a) {
      if (!owner && a.block_info(ptr, nullptr, nullptr)) owner = &a;
    });
    std::string why = "the pointer is not a block timeshare allocated";
    std::size_t offset = 0;
    const std::string handle = owner ? owner->share_ipc(ptr, &offset, &why) : std::string();
    TORCH_CHECK(!handle.empty(), "timeshare cannot share this CUDA tensor with another process: ",
                why, " (docs/usage.md#cuda-ipc)");
    return {static_cast<std::ptrdiff_t>(offset), handle};
  }
  // The memory of another process's shared block, mapped on the current device (torch sets it
  // to the sender's index first); one mapping per handle while any storage holds it, as
  // PyTorch's allocator keeps.
  std::shared_ptr<void> getIpcDevPtr(std::string handle) override {
    std::lock_guard lock(ipc_mu_);
    if (auto it = ipc_open_.find(handle); it != ipc_open_.end()) {
      if (auto open = it->second.lock()) return open;
    }
    std::erase_if(ipc_open_, [](const auto& e) { return e.second.expired(); });
    Core* a = allocator_for(current_device());
    std::string why;
    void* base = a->open_ipc(handle, &why);
    TORCH_CHECK(base != nullptr,
                "timeshare cannot open a CUDA tensor another process shared: ", why,
                " (docs/usage.md#cuda-ipc)");
    std::shared_ptr<void> open(base, [a](void* p) { a->close_ipc(p); });
    ipc_open_[handle] = open;
    return open;
  }

  // ---- what timeshare does not do (one clear error each) ---------------------------------------
  std::shared_ptr<cca::AllocatorState> getCheckpointState(DeviceIndex, MempoolId_t) override {
    TORCH_CHECK(false, kCheckpointRefusal);
  }
  cca::CheckpointDelta setCheckpointPoolState(DeviceIndex,
                                              std::shared_ptr<cca::AllocatorState>) override {
    TORCH_CHECK(false, kCheckpointRefusal);
  }

  // ---- peers and copies -----------------------------------------------------------------------
  void enablePeerAccess(DeviceIndex dev, DeviceIndex dev_to_access) override {
    if (sim_) return;
    c10::cuda::CUDAGuard guard(dev);
    const cudaError_t err = cudaDeviceEnablePeerAccess(dev_to_access, 0);
    if (err == cudaErrorPeerAccessAlreadyEnabled) {
      (void)cudaGetLastError();  // clear the sticky "already enabled"
    } else {
      C10_CUDA_CHECK(err);
    }
    // Memory mapped with cuMemMap is reachable from a peer only where cuMemSetAccess granted
    // it: the CUDA backend grants the pairs enabled here (tracked since install).
    std::string why;
    TORCH_CHECK(device::cuda_enable_peer_access(dev, dev_to_access, &why),
                "timeshare: enablePeerAccess(", static_cast<int>(dev), ", ",
                static_cast<int>(dev_to_access), "): ", why);
  }
  cudaError_t memcpyAsync(void* dst, int dst_device, const void* src, int src_device,
                          std::size_t count, cudaStream_t stream, bool p2p_enabled) override {
    if (sim_) {
      std::memcpy(dst, src, count);
      return cudaSuccess;
    }
    // Memory mapped with cuMemMap (timeshare's arenas) needs the peer copy across devices
    // when peer access is off.
    if (p2p_enabled || dst_device == src_device) {
      return cudaMemcpyAsync(dst, src, count, cudaMemcpyDeviceToDevice, stream);
    }
    return cudaMemcpyPeerAsync(dst, dst_device, src, src_device, count, stream);
  }

 private:
  static constexpr const char* kCheckpointRefusal =
      "timeshare does not support checkpointing a CUDA graph pool's state (CUDA graph trees "
      "under torch.compile(mode='reduce-overhead') when graphs diverge). Use "
      "torch.compile(mode='max-autotune-no-cudagraphs') or run without timeshare; see "
      "docs/usage.md#known-gaps";

  DeviceIndex current_device() const { return sim_ ? 0 : c10::cuda::current_device(); }
  device::Stream current_stream(DeviceIndex device) const {
    return sim_ ? device::kDefaultStream
                : to_stream(c10::cuda::getCurrentCUDAStream(device).stream());
  }
  int device_count_hint() const { return std::max(device_count_.load(), 1); }

  static void check(const std::string& error) { TORCH_CHECK(error.empty(), "timeshare: ", error); }

  Core* allocator_for(DeviceIndex device) {
    const int count = device_count_.load(std::memory_order_relaxed);
    TORCH_CHECK(count < 0 || (device >= 0 && device < count), "timeshare: device index ",
                static_cast<int>(device), " is out of range: PyTorch reported ", count,
                " CUDA device(s)");
    std::string error;
    Core* a = registry::get(device, &error);
    TORCH_CHECK(a != nullptr, "timeshare cannot serve device ", static_cast<int>(device), ": ",
                error);
    if (history_.active()) watch_segments(*a, device);
    return a;
  }

  // Mapping changes reach the history and the trace trackers (once per device).
  void watch_segments(Core& a, DeviceIndex device) {
    if (watched_[device].exchange(true)) return;
    a.set_segment_sink([this, device](const SegmentEvent& e) {
      history_.record(device, to_action(e.action), e.addr, e.bytes, nullptr, nullptr, nullptr,
                      MempoolId_t{e.pool.first, e.pool.second});
    });
  }

  [[noreturn]] void out_of_memory(DeviceIndex device, Core& a, std::size_t nbytes,
                                  device::Stream stream) {
    const DeviceStats s = a.stats();
    const device::MemInfo info = a.backend().mem_info();
    history_.record(device, cda::TraceEntry::OOM, info.free_bytes, nbytes, stream_ptr(stream),
                    nullptr, nullptr);
    std::vector<cca::OutOfMemoryObserver> observers;
    {
      std::lock_guard lock(observers_mu_);
      observers = oom_observers_;
    }
    for (const auto& obs : observers) {
      obs(device, static_cast<std::size_t>(s.allocated_bytes[kAggregate].current),
          info.total_bytes, info.free_bytes);
    }
    TORCH_CHECK_WITH(OutOfMemoryError, false, a.last_oom_message());
  }

  const bool sim_;
  std::atomic<int> device_count_{-1};
  std::atomic<bool> initialized_{false};
  std::atomic<bool> enabled_{true};
  std::array<std::atomic<bool>, registry::kMaxDevices> watched_{};
  MemoryHistory history_;
  std::mutex ipc_mu_;
  std::unordered_map<std::string, std::weak_ptr<void>> ipc_open_;  // getIpcDevPtr's mappings
  std::mutex observers_mu_;
  std::vector<cca::OutOfMemoryObserver> oom_observers_;
  std::vector<cca::OomRejectionObserver> rejection_observers_;
};

void delete_block(void* ptr) {
  if (g_instance) g_instance->free_block(ptr);
}

void write_error(char* error, std::size_t bytes, const std::string& msg) {
  if (!error || bytes == 0) return;
  std::snprintf(error, bytes, "%s", msg.c_str());
}

// Runs `body` for a C entry point: 0, or -1 with torch's (or the standard) message in `error`.
template <class Body>
int reporting_errors(char* error, std::size_t error_bytes, Body&& body) {
  try {
    body();
    return 0;
  } catch (const c10::Error& e) {
    write_error(error, error_bytes, e.what_without_backtrace());
  } catch (const std::exception& e) {
    write_error(error, error_bytes, e.what());
  }
  return -1;
}

}  // namespace

}  // namespace timeshare::native

extern "C" {

int timeshare_native_install(char* error, std::size_t error_bytes) {
  using namespace timeshare;
  return native::reporting_errors(error, error_bytes, [] {
    const bool sim = registry::options().backend == BackendKind::kSim;
    auto a = std::make_shared<native::NativeAllocator>(sim);
    // This route hears every enablePeerAccess: maps grant only the peers enabled (the
    // pluggable route cannot, and grants every capable peer).
    if (!sim) device::cuda_track_peer_access(true);
    torch::cuda::CUDAPluggableAllocator::changeCurrentAllocator(a);
    native::g_instance = a.get();
    log_line(LogLevel::kInfo, std::string("native CUDAAllocator installed (torch ") +
                                  TIMESHARE_NATIVE_TORCH_VERSION + ", " + (sim ? "sim" : "cuda") +
                                  " backend)");
  });
}

const char* timeshare_native_torch_version(void) { return TIMESHARE_NATIVE_TORCH_VERSION; }

int timeshare_native_record_history(int enabled, std::size_t max_entries, char* error,
                                     std::size_t error_bytes) {
  namespace cda = c10::CachingDeviceAllocator;
  return timeshare::native::reporting_errors(error, error_bytes, [&] {
    c10::cuda::CUDACachingAllocator::recordHistory(
        enabled != 0, nullptr, max_entries,
        enabled ? cda::RecordContext::ALL : cda::RecordContext::NEVER, /*clearHistory=*/false, {});
  });
}

int timeshare_native_cache_info(int device, std::size_t* largest, char* error,
                                std::size_t error_bytes) {
  return timeshare::native::reporting_errors(error, error_bytes, [&] {
    c10::cuda::CUDACachingAllocator::cacheInfo(static_cast<c10::DeviceIndex>(device), largest);
  });
}

int timeshare_native_is_current(void) {
  return timeshare::native::g_instance != nullptr &&
         c10::cuda::CUDACachingAllocator::get() == timeshare::native::g_instance;
}

}  // extern "C"
