// StandInEvents — events recorded for a backend's events on streams of other devices' contexts.
//
// The driver records an event only on a stream of the event's own context (otherwise
// CUDA_ERROR_INVALID_HANDLE), yet a pool records its device's events on whatever stream
// record_stream named, and PyTorch may name a stream of another GPU. PyTorch records an event
// created under a device guard on that stream's device; the CUDA backend does the same: on a
// stream of another context it records a stand-in created in that context, and the stand-in
// answers for the backend's event (queries, waits) until the event is recorded again or
// destroyed. Stand-ins are kept per context and reused.
// Thread-safe. Internal to device/cuda/.
#pragma once

#include <cuda.h>

#include <atomic>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace timeshare::device::cuda_api {

class StandInEvents {
 public:
  StandInEvents() = default;
  StandInEvents(const StandInEvents&) = delete;
  StandInEvents& operator=(const StandInEvents&) = delete;

  // Records on `stream`, a stream of context `owner`, a stand-in for `e`, then makes `home` current
  // again. On a failure returns the driver's result and sets *what to the failing call.
  CUresult record(CUevent e, CUstream stream, CUcontext owner, CUcontext home, const char** what);
  // The event the driver recorded for `e`: its stand-in, else `e` itself.
  CUevent resolve(CUevent e) {
    if (!any_.load(std::memory_order_acquire)) return e;
    std::lock_guard lock(mu_);
    auto it = live_.find(e);
    return it == live_.end() ? e : it->second.event;
  }
  // `e` answers for itself again (recorded on its own context's stream, or destroyed).
  void drop(CUevent e) {
    if (!any_.load(std::memory_order_acquire)) return;
    std::lock_guard lock(mu_);
    auto it = live_.find(e);
    if (it == live_.end()) return;
    spare_[it->second.ctx].push_back(it->second.event);
    live_.erase(it);
  }
  // Destroys every stand-in (a context of this process current), for the backend's teardown.
  void destroy_all();

 private:
  struct StandIn {
    CUevent event = nullptr;
    CUcontext ctx = nullptr;
  };
  std::mutex mu_;
  std::unordered_map<CUevent, StandIn> live_;                  // by the event it stands in for
  std::unordered_map<CUcontext, std::vector<CUevent>> spare_;  // ready for reuse, per context
  std::atomic<bool> any_{false};  // a stand-in was ever recorded: look them up
};

}  // namespace timeshare::device::cuda_api
