#include "timeshare/torch/memory_history.h"

#include <algorithm>

namespace timeshare::native {

namespace cda = c10::CachingDeviceAllocator;

void MemoryHistory::configure(bool enabled, cda::CreateContextFn recorder,
                              std::size_t max_entries, cda::RecordContext when,
                              bool clear_history, const std::vector<std::string>& skip_actions) {
  std::unordered_set<Action> skip;
  for (const std::string& a : skip_actions) skip.insert(cda::parseTraceEntryAction(a));
  std::lock_guard lock(mu_);
  for (Device& h : devices_) {
    h.enabled = enabled;
    h.recorder = recorder;
    h.when = enabled ? when : cda::RecordContext::NEVER;
    h.max_entries = std::max<std::size_t>(max_entries, 1);
    h.skip = skip;
    if (clear_history || !enabled) h.ring.clear();
    while (h.ring.size() > h.max_entries) h.ring.pop_front();
    if (!enabled) h.live_contexts.clear();
  }
  enabled_.store(enabled, std::memory_order_relaxed);
}

void MemoryHistory::add_tracker(cda::AllocatorTraceTracker tracker) {
  std::lock_guard lock(mu_);
  trackers_.push_back(std::move(tracker));
  tracking_.store(true, std::memory_order_relaxed);
}

MemoryHistory::Context MemoryHistory::gather(int device, bool at_free) {
  cda::CreateContextFn recorder = nullptr;
  cda::RecordContext when = cda::RecordContext::NEVER;
  {
    std::lock_guard lock(mu_);
    recorder = devices_[device].recorder;
    when = devices_[device].when;
  }
  if (!recorder || when == cda::RecordContext::NEVER) return nullptr;
  if (at_free && when != cda::RecordContext::ALL) return nullptr;
  return recorder();  // outside the lock: it may take the GIL
}

void MemoryHistory::record(int device, Action action, std::size_t addr, std::size_t bytes,
                           void* stream, Context context, const void* live_block,
                           c10::MempoolId_t pool) {
  cda::TraceEntry entry(action, static_cast<c10::DeviceIndex>(device), addr, bytes, stream, pool,
                        c10::getApproximateTime(), context);
  std::vector<cda::AllocatorTraceTracker> trackers;
  {
    std::lock_guard lock(mu_);
    trackers = trackers_;
    Device& h = devices_[device];
    if (h.enabled) {
      if (live_block && h.when != cda::RecordContext::NEVER && context) {
        h.live_contexts[live_block] = context;
      }
      if (!h.skip.count(action)) {
        cda::TraceEntry kept = entry;
        // STATE keeps stacks for live blocks only, not in the trace.
        if (h.when == cda::RecordContext::STATE) kept.context_ = nullptr;
        h.ring.push_back(std::move(kept));
        while (h.ring.size() > h.max_entries) h.ring.pop_front();
      }
    }
  }
  for (const auto& t : trackers) t(entry);  // outside the lock, as torch's contract allows
}

void MemoryHistory::forget(int device, const void* ptr) {
  std::lock_guard lock(mu_);
  devices_[device].live_contexts.erase(ptr);
}

MemoryHistory::Context MemoryHistory::context_of(int device, const void* ptr) {
  std::lock_guard lock(mu_);
  auto& m = devices_[device].live_contexts;
  auto it = m.find(ptr);
  return it == m.end() ? nullptr : it->second;
}

MemoryHistory::Context MemoryHistory::any_context_of(const void* ptr) {
  std::lock_guard lock(mu_);
  for (Device& h : devices_) {
    if (auto it = h.live_contexts.find(ptr); it != h.live_contexts.end()) return it->second;
  }
  return nullptr;
}

std::vector<std::vector<cda::TraceEntry>> MemoryHistory::traces(int devices) {
  devices = std::clamp(devices, 0, kMaxDevices);
  std::vector<std::vector<cda::TraceEntry>> out(static_cast<std::size_t>(devices));
  auto to_ns = clock_.makeConverter();
  std::lock_guard lock(mu_);
  for (int d = 0; d < devices; ++d) {
    for (const cda::TraceEntry& e : devices_[d].ring) {
      cda::TraceEntry copy = e;
      copy.time_.t_ = to_ns(e.time_.approx_t_) / 1000;  // microseconds, as torch's snapshot
      out[d].push_back(std::move(copy));
    }
  }
  return out;
}

}  // namespace timeshare::native
