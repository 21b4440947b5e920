// Statistics in PyTorch's shape: every figure is a {current, peak, allocated, freed} record,
// kept for the aggregate and for the small and large pools, exactly as
// c10::CachingDeviceAllocator::DeviceStats does, so that `memory_stats()` can answer with
// torch's key names ("allocated_bytes.all.current", "segment.large_pool.peak", ...).
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace timeshare {

struct Stat {
  std::int64_t current = 0;
  std::int64_t peak = 0;
  std::int64_t allocated = 0;  // total ever added
  std::int64_t freed = 0;      // total ever removed

  void increase(std::int64_t n) noexcept {
    current += n;
    allocated += n;
    if (current > peak) peak = current;
  }
  void decrease(std::int64_t n) noexcept {
    current -= n;
    freed += n;
  }
  void reset_peak() noexcept { peak = current; }
  void reset_accumulated() noexcept { allocated = freed = 0; }
};

enum StatType : int { kAggregate = 0, kSmallPool = 1, kLargePool = 2, kNumStatTypes = 3 };
using StatArray = std::array<Stat, kNumStatTypes>;

// Mirrors torch's DeviceStats field for field (names and meanings).
struct DeviceStats {
  StatArray allocation;            // number of live allocations handed to the caller
  StatArray segment;               // number of device segments (reserve calls live)
  StatArray active;                // live + pending-free blocks
  StatArray inactive_split;        // free blocks that are part of a split segment
  StatArray allocated_bytes;       // bytes of live allocations (rounded sizes)
  StatArray reserved_bytes;        // bytes reserved from the device
  StatArray active_bytes;
  StatArray inactive_split_bytes;
  StatArray requested_bytes;       // bytes asked for by the caller (unrounded)
  std::int64_t num_alloc_retries = 0;   // mallocs that freed the cache and tried again
  std::int64_t num_ooms = 0;            // mallocs that failed for lack of memory
  std::int64_t num_sync_all_streams = 0;
  std::int64_t num_device_alloc = 0;    // reserve/map calls made to the backend
  std::int64_t num_device_free = 0;     // release/unmap calls made to the backend
  Stat oversize_allocations;       // allocations above max_split_size
  Stat oversize_segments;
  std::int64_t max_split_size = -1;

  void reset_peak() noexcept;
  void reset_accumulated() noexcept;
};

// Flattens `s` into torch.cuda.memory_stats() key/value pairs, sorted by key.
std::vector<std::pair<std::string, std::int64_t>> to_torch_keys(const DeviceStats& s);

}  // namespace timeshare
