// allocator/ — one Allocator per device: composes a device backend, a pool and a predictor.
//
// Glossary (see also csrc/timeshare/README.md):
//   block     a range of device memory handed to PyTorch for one tensor storage
//   segment   a range obtained from the device in one reserve call (or a mapped granule run)
//   granule   the 2 MiB unit of physical memory mapped into a virtual range
//   clock     the allocator's own time: every malloc and every free is one tick
//   lifespan  ticks between a block's malloc and its free; the predictor estimates it at malloc
//   budget    a cap on reserved device memory; above it activations are spilled
//   spill     moving a saved activation to pinned host memory (then SSD) until backward
//   restore   bringing it back, on a copy stream, before backward needs it
//
// The Allocator is the thread-safe front: one mutex serialises the pool and the predictor (both
// are single-threaded by design and cheap on the hot path). It never throws on the malloc path:
// out of memory returns nullptr with a message ready for the caller (the C entry points turn it
// into PyTorch's OutOfMemoryError).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "timeshare/common/options.h"
#include "timeshare/common/stats.h"
#include "timeshare/device/backend.h"
#include "timeshare/pool/layout_plan.h"
#include "timeshare/pool/pool.h"
#include "timeshare/pool/temporal_options.h"
#include "timeshare/predict/async_predictor.h"
#include "timeshare/predict/predictor.h"

namespace timeshare {

struct AllocatorCounters {
  std::uint64_t clock_events = 0;     // mallocs + frees seen
  std::uint64_t unknown_frees = 0;    // frees of pointers this allocator did not hand out
  std::uint64_t zero_size_mallocs = 0;
  std::uint64_t record_streams = 0;
  std::uint64_t empty_cache_calls = 0;
  std::uint64_t spill_retries = 0;    // allocations retried after the spill engine made room
};

class Allocator {
 public:
  // Builds the pool and predictor that `options` name on top of `backend`.
  Allocator(const Options& options, std::unique_ptr<device::Backend> backend);
  ~Allocator();
  Allocator(const Allocator&) = delete;
  Allocator& operator=(const Allocator&) = delete;

  // A block of at least `bytes` for `stream`; nullptr for 0 bytes, or when out of memory (then
  // last_oom_message() says why).
  void* malloc(std::size_t bytes, device::Stream stream);
  // False (and a logged warning) for a pointer this allocator did not hand out.
  bool free(void* ptr);
  // False when `ptr` is not a live block of this allocator.
  bool record_stream(void* ptr, device::Stream stream);
  void empty_cache();
  // Cap reserved memory at `fraction` of the device's total (torch's memory fraction).
  void set_memory_fraction(double fraction);

  DeviceStats stats() const;
  predict::PredictorStats predictor_stats() const;
  AllocatorCounters counters() const;
  pool::ReleaseStats release_stats() const;
  void reset_peak_stats();
  void reset_accumulated_stats();
  std::string last_oom_message() const;
  // Live blocks as (address, bytes), for tests and the stress checker.
  std::vector<std::pair<std::uintptr_t, std::size_t>> live_blocks() const;

  const Options& options() const noexcept { return options_; }
  device::Backend& backend() noexcept { return *backend_; }
  const char* pool_name() const noexcept { return pool_->name(); }
  const char* predictor_name() const noexcept;

 private:
  struct Live {
    std::uint64_t alloc_id;
    std::size_t bytes;
  };
  std::string oom_message(std::size_t bytes, device::Stream stream) const;

  const Options options_;
  std::unique_ptr<device::Backend> backend_;
  std::unique_ptr<pool::Pool> pool_;
  std::unique_ptr<predict::LifespanPredictor> predictor_;  // null under the torch policy
  mutable std::mutex mu_;
  std::unordered_map<void*, Live> live_;
  std::uint64_t next_alloc_id_ = 0;
  AllocatorCounters counters_;
  std::string last_oom_;
};

// Builds the pool `options` select (CachingPool for policy torch, TemporalPool for timeshare).
std::unique_ptr<pool::Pool> make_pool(const Options& options, device::Backend& backend);
// The TemporalPool's options that `options` select on `backend` (make_pool's, and the replay's).
pool::TemporalPoolOptions temporal_pool_options(const Options& options,
                                                const device::Backend& backend);
// Builds the predictor `options` select; null under the torch policy. With a plan board (and
// option `plan`), the predictor's answers also feed a layout planner that publishes there
// (inside the asynchronous feed, so planning runs on the predictor's thread).
std::unique_ptr<predict::LifespanPredictor> make_predictor_for(
    const Options& options, bool deterministic,
    std::shared_ptr<pool::PlanBoard> board = nullptr);
// How make_predictor_for's AsyncPredictor feeds (and the replay's timing pass): the answer board
// is on only when one of the pool's options uses lifespans (free_forecast).
predict::AsyncFeedOptions async_feed_options(const Options& options);

}  // namespace timeshare
