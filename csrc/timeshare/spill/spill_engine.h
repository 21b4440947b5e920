// SpillEngine — moves saved activations out of device memory and back, asynchronously.
//
// The engine sees a device only through `device::Backend` (CUDA on a GPU, sim elsewhere) and
// knows nothing of PyTorch: its caller (the offload hooks) decides *what* to spill and hands it
// a device pointer at pack time, and a destination at unpack time. It owns three things:
//
//   * a pinned host arena, allocated once and sub-allocated (PinnedArena): no pinned allocation
//     per tensor;
//   * two copy streams: device-to-host spills and host-to-device restores run on their own
//     streams, so they overlap compute and each other. A spill first makes its copy stream wait
//     (an event) for the compute stream, then records an event when the copy is done; the caller
//     releases the device memory only once spill_complete() says so. A restore makes the copy
//     stream wait for the compute stream (where the destination was allocated) and the spill's
//     own event, and the compute stream then waits for the restore's event: no device-wide sync;
//   * an SSD tier (SsdTier + one background I/O thread, IoQueue): when the arena passes its high
//     water mark, the entries needed furthest in the future are written to files and their
//     pinned ranges freed; as backward approaches them they are read back into pinned memory
//     ahead of need (read-ahead), or on demand at restore.
//
// Need order: every entry has a key (its pack position in the iteration). NeedOrder learns the
// order in which keys were restored in the previous iteration; that order drives prefetch
// (prefetch_candidates: the next entries within a look-ahead in bytes), SSD eviction (furthest
// need first) and read-ahead (soonest need first). Without history it assumes backward's
// last-in-first-out order.
//
// Nothing is lost: a pinned range is reused only after every copy touching it completed
// (events); a full arena, a failed copy or a failed SSD write leaves the data where it is (still
// on the device: spill() returns kNoHandle; or in pinned memory) with one logged warning per
// kind and a counter; a failed restore leaves the entry intact, and copy_to_host() is the
// synchronous way out. Thread-safe: one mutex guards the engine's state and is never held while
// waiting on I/O or a copy; the engine never calls the allocator.
#pragma once

#include <array>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "timeshare/common/options.h"
#include "timeshare/common/units.h"
#include "timeshare/device/backend.h"
#include "timeshare/spill/io_queue.h"
#include "timeshare/spill/need_order.h"
#include "timeshare/spill/pinned_arena.h"
#include "timeshare/spill/ssd_tier.h"

namespace timeshare::spill {

using Handle = std::uint64_t;
inline constexpr Handle kNoHandle = 0;

inline constexpr double kDefaultSsdHighWater = 0.75;     // share of the arena
inline constexpr std::size_t kReadaheadFactor = 2;       // SSD read-ahead = factor x prefetch
inline constexpr std::uint64_t kEvictWaitMs = 30'000;    // longest a spill waits for room

struct SpillConfig {
  std::size_t pinned_bytes = 2 * kGiB;
  bool ssd = false;
  std::string spill_dir{};                       // empty = a temporary directory
  std::size_t ssd_capacity_bytes = SIZE_MAX;
  std::size_t prefetch_bytes = 512 * kMiB;
  double ssd_high_water = kDefaultSsdHighWater;

  static SpillConfig from_options(const Options& o);
};

enum class Tier : std::uint8_t { kPinned, kSsd };

struct SpillStats {
  std::uint64_t spills = 0;                 // entries copied to pinned memory
  std::uint64_t restores = 0;               // entries copied back to the device
  std::size_t spilled_bytes_pinned = 0;     // device -> pinned
  std::size_t spilled_bytes_ssd = 0;        // pinned -> SSD
  std::size_t restored_bytes_pinned = 0;    // pinned -> device
  std::size_t restored_bytes_ssd = 0;       // SSD -> pinned (read-ahead and demand)
  std::uint64_t prefetch_hits = 0;          // restores whose prefetch had completed at need
  std::uint64_t late_restores = 0;          // restores not complete at need (demand or late prefetch)
  std::uint64_t demand_ssd_reads = 0;       // SSD reads done at need, on the restoring thread
  std::uint64_t wait_ns = 0;                // host time spent waiting (I/O, host syncs)
  std::size_t current_pinned_bytes = 0;
  std::size_t peak_pinned_bytes = 0;
  std::size_t current_ssd_bytes = 0;
  std::size_t peak_ssd_bytes = 0;
  std::size_t pinned_capacity_bytes = 0;
  std::uint64_t entries = 0;                // live handles
  std::uint64_t pinned_full = 0;            // spills refused: no room in the arena (data stayed)
  std::uint64_t copy_failures = 0;          // copies that could not be started (data stayed)
  std::uint64_t ssd_write_failures = 0;     // data stayed in pinned memory
  std::uint64_t ssd_full = 0;               // data stayed in pinned memory
  std::uint64_t ssd_read_failures = 0;      // data stayed on SSD
};

class SpillEngine {
 public:
  SpillEngine(device::Backend& backend, SpillConfig config);
  ~SpillEngine();
  SpillEngine(const SpillEngine&) = delete;
  SpillEngine& operator=(const SpillEngine&) = delete;

  // Allocates the arena and the copy streams, prepares the SSD tier. "" on success, else one
  // line; the engine stays usable (every spill then keeps its data resident).
  std::string init();

  // Starts copying [device_ptr, +bytes) to pinned memory after the work queued on
  // compute_stream. kNoHandle when the data must stay on the device (arena full, copy failure).
  Handle spill(const void* device_ptr, std::size_t bytes, device::Stream compute_stream,
               std::uint64_t key);
  // True once the spill's copy completed: the device source may be released.
  bool spill_complete(Handle h);
  void wait_spill(Handle h);  // host waits for the spill's copy

  // Starts the copy back into device_dst (prefetch = started ahead of need). kOk also when a
  // restore into the same destination is already running.
  device::Status start_restore(Handle h, void* device_dst, device::Stream compute_stream,
                               bool prefetch = false);
  // compute_stream waits for the restore (host too with host_wait); records the need order.
  device::Status finish_restore(Handle h, device::Stream compute_stream, bool host_wait);
  device::Status restore(Handle h, void* device_dst, device::Stream stream, bool host_wait);
  // Synchronous fallback: the entry's bytes into host memory, from whichever tier holds them.
  bool copy_to_host(Handle h, void* host_dst);
  // Drops the entry; its pinned range is reused once the copies touching it completed.
  void release(Handle h);

  // Entries to restore ahead of need: in predicted order, within `lookahead_bytes` counted
  // from the soonest-needed live entry (restores already running count too).
  std::vector<Handle> prefetch_candidates(std::size_t lookahead_bytes);
  void end_iteration();  // the restore order seen so far predicts the next iteration

  SpillStats stats() const;
  std::optional<Tier> tier_of(Handle h) const;
  bool is_restoring(Handle h) const;
  std::string ssd_dir() const;
  SsdTier* ssd() noexcept { return ssd_.get(); }  // tests: fault injection
  PinnedArena& arena() noexcept { return arena_; }
  void drain_io();  // waits for the background I/O queued so far
  const SpillConfig& config() const noexcept { return config_; }

 private:
  enum Warn : std::uint8_t { kWarnPinned, kWarnCopy, kWarnSsdWrite, kWarnSsdFull, kWarnSsdRead,
                             kWarnCount };
  struct Entry {
    std::size_t bytes = 0;
    std::uint64_t key = 0;
    void* pinned = nullptr;                     // arena range (or staging) holding the data
    std::unique_ptr<std::byte[]> staging;       // host buffer when the arena had no room
    device::Event d2h_event = device::kNoEvent;
    device::Event h2d_event = device::kNoEvent;
    void* restore_dst = nullptr;
    bool on_ssd = false;        // a file holds the data (pinned may hold it too)
    bool io_busy = false;       // an SSD write or read of this entry is running
    bool evict_failed = false;  // do not try the SSD again for this entry
    bool restoring = false;
    bool prefetched = false;
  };
  struct Deferred {
    void* arena_ptr = nullptr;
    std::unique_ptr<std::byte[]> staging;
    std::vector<device::Event> events;  // freed once all completed
  };
  using Lock = std::unique_lock<std::mutex>;

  device::Event take_event_locked();
  void reap_locked();
  void warn_once_locked(Warn w, const std::string& message);
  void* allocate_pinned_locked(Lock& lock, std::size_t bytes);
  std::vector<Handle> by_rank_locked(bool soonest_first) const;
  void schedule_evictions_locked();
  void schedule_readahead_locked();
  void evict_job(Handle h);
  void readahead_job(Handle h, void* dst);
  void wait_io_locked(Lock& lock, Entry*& e, Handle h);
  void update_peaks_locked();

  device::Backend& backend_;
  const SpillConfig config_;
  mutable std::mutex mu_;
  std::condition_variable io_cv_;
  PinnedArena arena_;
  std::unique_ptr<SsdTier> ssd_;
  std::unique_ptr<IoQueue> io_;
  NeedOrder need_;
  std::unordered_map<Handle, Entry> entries_;
  std::vector<Deferred> deferred_;
  std::vector<device::Event> free_events_;
  std::vector<device::Event> all_events_;
  device::Stream d2h_stream_ = device::kDefaultStream;
  device::Stream h2d_stream_ = device::kDefaultStream;
  device::Event fence_ = device::kNoEvent;
  bool ready_ = false;
  Handle next_handle_ = 1;
  std::size_t evicting_bytes_ = 0;
  std::size_t reading_bytes_ = 0;
  SpillStats stats_;
  std::array<bool, kWarnCount> warned_{};
};

}  // namespace timeshare::spill
