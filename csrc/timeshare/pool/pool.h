// pool/ — where blocks live.
//
// A Pool turns device memory obtained from a device::Backend into blocks for callers. Two
// pools implement this interface:
//   * CachingPool — a faithful model of PyTorch's default CUDACachingAllocator policy (512-byte
//     rounding, small and large pools, best-fit with splitting, coalescing, stream-ordered reuse
//     with events, free-cache-and-retry, optionally expandable segments). It is timeshare's
//     fallback and the `torch` / `torch-expandable` reference policies in replays.
//   * TemporalPool — timeshare's own policy: places each block by its predicted lifespan so that
//     what dies together sits together, inside one growing virtual arena per stream.
//
// Pools are NOT thread-safe: the Allocator (allocator/) serialises calls under its mutex. Pools
// never talk to CUDA directly, only to the Backend they were given.
//
// Clock: the allocator's clock counts allocation events (every allocate and every deallocate
// is one tick). A lifespan is the number of ticks between an allocate and its deallocate.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "timeshare/common/stats.h"
#include "timeshare/device/backend.h"

namespace timeshare::pool {

// What the caller knows about an allocation beyond its size and stream.
struct AllocHint {
  std::uint64_t now_events = 0;            // allocator clock at this allocate
  std::uint64_t predicted_lifespan = 0;    // predicted ticks until free; 0 = no prediction
  std::uint64_t alloc_id = 0;              // unique id of this allocation (for tracing)
};

enum class FreeResult : std::uint8_t { kOk, kUnknownPointer };

// How a pool gives memory back without unmapping it under running kernels (see
// temporal_granules.h): host waits it made, fences recorded, runs of memory moved within a
// stream's arena (map_alias), and bytes mapped but waiting for their stream (quarantined).
struct ReleaseStats {
  std::uint64_t device_waits = 0;
  std::uint64_t fences = 0;
  std::uint64_t aliases = 0;
  std::size_t quarantined_bytes = 0;
};

class Pool {
 public:
  virtual ~Pool() = default;

  virtual const char* name() const noexcept = 0;

  // Returns a block of at least `bytes` usable on `stream`, or nullptr when the device has no
  // room even after releasing cached memory (the pool then counts an OOM in its stats). Never
  // returns nullptr for other reasons. `bytes` == 0 returns nullptr without error.
  virtual void* allocate(std::size_t bytes, device::Stream stream, const AllocHint& hint) = 0;

  // Returns a block to the pool. Reuse on another stream waits for every stream recorded on the
  // block (record_stream) through events. `now_events` is the allocator clock.
  virtual FreeResult deallocate(void* ptr, std::uint64_t now_events) = 0;

  // The block at `ptr` is also used on `stream` (Tensor.record_stream): it is not reused before
  // work queued on `stream` up to its deallocate has completed.
  virtual void record_stream(void* ptr, device::Stream stream) = 0;

  // Releases every cached (free, not pending) segment or granule back to the device.
  virtual void empty_cache() = 0;

  // Size of the block the pool handed out at `ptr` (0 when unknown).
  virtual std::size_t block_size(void* ptr) const = 0;

  virtual const DeviceStats& stats() const noexcept = 0;
  virtual ReleaseStats release_stats() const noexcept { return {}; }
  virtual void reset_peak_stats() noexcept = 0;
  virtual void reset_accumulated_stats() noexcept = 0;

  // A cap on reserved bytes (set_per_process_memory_fraction, or a budget); 0 = no cap.
  virtual void set_limit_bytes(std::size_t bytes) noexcept = 0;
  virtual std::size_t limit_bytes() const noexcept = 0;

  // Human-readable description of live and reserved memory, for out-of-memory messages.
  virtual std::string describe() const = 0;
};

}  // namespace timeshare::pool
