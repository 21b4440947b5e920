// MemoryHistory — what torch.cuda.memory._record_memory_history keeps, for the native route:
// per device a ring of trace entries (alloc, free_requested, free_completed, segment_*, oom),
// the contexts (stacks) of live blocks, and the trace trackers torch attached
// (attachAllocatorTraceTracker). Thread-safe; the context recorder is called outside its lock,
// since torch's Python recorder takes the GIL.
#pragma once

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/util/ApproximateClock.h>

#include <array>
#include <atomic>
#include <cstddef>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

namespace timeshare::native {

class MemoryHistory {
 public:
  using Action = c10::CachingDeviceAllocator::TraceEntry::Action;
  using Context = std::shared_ptr<c10::GatheredContext>;
  static constexpr int kMaxDevices = 64;

  // torch's recordHistory, for every device.
  void configure(bool enabled, c10::CachingDeviceAllocator::CreateContextFn recorder,
                 std::size_t max_entries, c10::CachingDeviceAllocator::RecordContext when,
                 bool clear_history, const std::vector<std::string>& skip_actions);
  bool enabled() const noexcept { return enabled_.load(std::memory_order_relaxed); }
  void add_tracker(c10::CachingDeviceAllocator::AllocatorTraceTracker tracker);
  bool tracking() const noexcept { return tracking_.load(std::memory_order_relaxed); }
  // Whether a malloc or free must call record() at all.
  bool active() const noexcept { return enabled() || tracking(); }

  // The context to keep for an allocation (or a free, under RecordContext::ALL); null when
  // none is recorded.
  Context gather(int device, bool at_free);
  // One trace entry: to the trackers, and to the device's ring when history is on. A live
  // block's context is kept for snapshots (`live_block`: the block's address, or null).
  void record(int device, Action action, std::size_t addr, std::size_t bytes, void* stream,
              Context context, const void* live_block, c10::MempoolId_t pool = {0, 0});
  void forget(int device, const void* ptr);
  Context context_of(int device, const void* ptr);
  Context any_context_of(const void* ptr);
  // The rings of devices [0, devices), times in microseconds since the epoch, as torch's own
  // snapshot() gives them.
  std::vector<std::vector<c10::CachingDeviceAllocator::TraceEntry>> traces(int devices);

 private:
  struct Device {
    bool enabled = false;
    c10::CachingDeviceAllocator::CreateContextFn recorder = nullptr;
    c10::CachingDeviceAllocator::RecordContext when =
        c10::CachingDeviceAllocator::RecordContext::NEVER;
    std::size_t max_entries = 0;
    std::unordered_set<Action> skip;
    std::deque<c10::CachingDeviceAllocator::TraceEntry> ring;
    std::unordered_map<const void*, Context> live_contexts;
  };
  std::atomic<bool> enabled_{false};
  std::atomic<bool> tracking_{false};
  std::mutex mu_;
  std::array<Device, kMaxDevices> devices_;
  std::vector<c10::CachingDeviceAllocator::AllocatorTraceTracker> trackers_;
  c10::ApproximateClockToUnixTimeConverter clock_;
};

}  // namespace timeshare::native
