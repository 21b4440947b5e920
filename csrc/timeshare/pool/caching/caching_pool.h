// CachingPool — a faithful model of PyTorch's default CUDACachingAllocator policy.
//
// Notes (read this before the code)
// ---------------------------------
// Sizes. Every request is rounded up to a multiple of 512 bytes (kMinBlockSize), or, with the
// `roundup_power2_divisions` option, to the next of N equal divisions of its power-of-two
// interval (1200 B with 4 divisions -> 1280 B). Requests of at most 1 MiB (kSmallSize) are
// "small" and live in the small pool; everything else is "large". The two pools never share
// memory.
//
// Segments. When no cached block fits, the pool reserves a new segment from the device: 2 MiB
// (kSmallBuffer) for a small request, 20 MiB (kLargeBuffer) for a large request under 10 MiB
// (kMinLargeAlloc), and the request rounded up to 2 MiB (kRoundLarge) for anything bigger.
//
// Best fit and splitting. Free blocks sit in an ordered set keyed by (stream, size, address):
// a request takes the smallest free block of its own stream and pool that is big enough. The
// rest of the block is split off and stays cached when it is worth keeping: in the small pool
// (and with expandable segments) when at least 512 B remain, in the large pool when more than
// 1 MiB remains. With `max_split_size_bytes` set, blocks at or above it are "oversize": they are
// never split, requests below the limit never take them, and an oversize request takes only a
// cached block smaller than request + `max_non_split_rounding_bytes` (20 MiB by default).
//
// Freeing and coalescing. A freed block merges with its free neighbours in the same segment,
// so a segment whose blocks are all free is again one block that can be released.
//
// Streams. A freed block is reused only by requests on the stream it was allocated on: work on
// one stream is ordered, so the next user cannot start before the last use ended. When a block
// was also used on other streams (record_stream), deallocate records an event on each of them
// and the block joins the free pool only once they have all completed; pending events are
// polled at the start of every allocate (torch's process_events).
//
// Running out. If the device refuses a new segment (or the limit set by set_limit_bytes, i.e.
// set_per_process_memory_fraction, would be passed), the pool (1) with max_split_size set,
// releases cached oversize blocks big enough for the request and retries, then (2) waits for
// every pending event, releases every cached whole segment (empty_cache) and retries once more:
// that last try is counted in num_alloc_retries. If it still fails, num_ooms is counted and
// allocate returns nullptr; describe() then says what was asked, allocated, reserved and cached.
// With a limit and `garbage_collection_threshold` set, whole cached large segments that have not
// been reused for longer than average are released first when reserved memory is above the
// threshold fraction of the limit.
//
// Expandable segments. With `expandable_segments`, each (stream, pool) reserves one virtual
// range once and maps physical pages at its end as it grows (2 MiB pages for small, 20 MiB for
// large), so blocks tile one growing segment instead of many fixed ones; a block at the end of
// the mapped part can grow by mapping the pages after it. empty_cache unmaps the free pages.
// Reserved bytes are mapped bytes; as in torch, these ranges do not count in `segment` stats
// nor in `inactive_split` stats.
//
// Statistics follow torch's DeviceStats field by field (see common/stats.h): `allocation` and
// `allocated_bytes` count blocks handed out; `active` also counts blocks waiting for events;
// `inactive_split` counts free blocks inside partly used segments; `requested_bytes` are the
// unrounded sizes of active blocks.
//
// What is not modelled: CUDA-graph private pools and MemPools, IPC sharing, free-memory
// callbacks, the allocation-history recorder and the release of the lock around cudaMalloc.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "timeshare/common/stats.h"
#include "timeshare/common/units.h"
#include "timeshare/device/backend.h"
#include "timeshare/pool/caching/block.h"
#include "timeshare/pool/caching/expandable_segment.h"
#include "timeshare/pool/event_pool.h"
#include "timeshare/pool/pool.h"

namespace timeshare::pool {

inline constexpr std::size_t kMinBlockSize = 512;          // every size rounds up to this
inline constexpr std::size_t kSmallSize = 1 * kMiB;        // largest "small" request
inline constexpr std::size_t kSmallBuffer = 2 * kMiB;      // small segments (and pages)
inline constexpr std::size_t kLargeBuffer = 20 * kMiB;     // large segments under kMinLargeAlloc
inline constexpr std::size_t kMinLargeAlloc = 10 * kMiB;   // from here, segment = request
inline constexpr std::size_t kRoundLarge = 2 * kMiB;       // big segments round up to this
inline constexpr std::size_t kNoMaxSplitSize = std::numeric_limits<std::size_t>::max();
inline constexpr std::size_t kRoundupPower2Intervals = 16;  // 1 MiB, 2 MiB, ... 32 GiB and up
inline constexpr std::size_t kRoundupPower2Start = 1 * kMiB;

struct CachingPoolOptions {
  bool expandable_segments = false;
  // Blocks of at least this size are never split (torch: max_split_size_mb); default: no limit.
  std::size_t max_split_size_bytes = kNoMaxSplitSize;
  // An oversize request may take a cached block at most this much bigger than itself
  // (torch: max_non_split_rounding_mb, 20 MiB by default).
  std::size_t max_non_split_rounding_bytes = kLargeBuffer;
  // With a limit set: reclaim old cached large segments above this fraction of the limit.
  // 0 = off (torch's default).
  double garbage_collection_threshold = 0.0;
  // Divisions per power-of-two interval of the request size, as torch's
  // roundup_power2_divisions: empty = off; one value = every interval; otherwise entry i is the
  // interval [2^i MiB, 2^(i+1) MiB) (entry 0 also covers everything below 1 MiB, the last entry
  // everything above). Values 0 or 1 mean plain 512-byte rounding.
  std::vector<std::size_t> roundup_power2_divisions = {};
  // What name() says (nullptr: "torch" or "torch-expandable"): the factory labels the pool
  // that serves a temporal policy on a device without virtual memory.
  const char* label = nullptr;
};

// A view of one segment, in torch's snapshot() shape (tests, replays, summaries).
struct BlockInfo {
  std::uintptr_t addr = 0;
  std::size_t size_bytes = 0;
  std::size_t requested_bytes = 0;
  bool allocated = false;
  bool active = false;  // allocated, or freed and waiting for other streams
};
struct SegmentInfo {
  std::uintptr_t addr = 0;
  std::size_t total_bytes = 0;
  std::size_t allocated_bytes = 0;
  device::Stream stream = device::kDefaultStream;
  bool is_large = false;
  bool is_expandable = false;  // one mapped stretch of an expandable segment
  std::vector<BlockInfo> blocks;
};

// Pure size rules, exposed for tests and for the replay tooling.
std::size_t caching_round_size(std::size_t bytes, const CachingPoolOptions& options) noexcept;
std::size_t caching_segment_size(std::size_t rounded_bytes) noexcept;

class CachingPool final : public Pool {
 public:
  explicit CachingPool(device::Backend& backend, CachingPoolOptions options = {});
  ~CachingPool() override;
  CachingPool(const CachingPool&) = delete;
  CachingPool& operator=(const CachingPool&) = delete;

  const char* name() const noexcept override {
    if (options_.label != nullptr) return options_.label;
    return options_.expandable_segments ? "torch-expandable" : "torch";
  }
  void* allocate(std::size_t bytes, device::Stream stream, const AllocHint& hint) override;
  FreeResult deallocate(void* ptr, std::uint64_t now_events) override;
  void record_stream(void* ptr, device::Stream stream) override;
  void empty_cache() override;
  std::size_t block_size(void* ptr) const override;
  const DeviceStats& stats() const noexcept override { return stats_; }
  void reset_peak_stats() noexcept override { stats_.reset_peak(); }
  void reset_accumulated_stats() noexcept override { stats_.reset_accumulated(); }
  void set_limit_bytes(std::size_t bytes) noexcept override { limit_bytes_ = bytes; }
  std::size_t limit_bytes() const noexcept override { return limit_bytes_; }
  std::string describe() const override;

  const CachingPoolOptions& options() const noexcept { return options_; }
  // Every segment with its blocks, sorted by address. Linear in the number of blocks.
  std::vector<SegmentInfo> snapshot() const;
  // Bytes of free, mapped blocks held in the cache.
  std::size_t cached_free_bytes() const noexcept;
  // Largest free cached block (torch's cacheInfo, which cuDNN asks for).
  std::size_t largest_free_block_bytes() const noexcept;

 private:
  struct Request {
    std::size_t size_bytes = 0;   // rounded
    std::size_t alloc_bytes = 0;  // segment size if a new segment is needed
    device::Stream stream = device::kDefaultStream;
    BlockPool* pool = nullptr;
    Block* block = nullptr;       // the block found or created
  };
  struct PendingEvent {
    device::Event event = device::kNoEvent;
    Block* block = nullptr;
  };
  struct LastOom {
    std::size_t requested_bytes = 0;
    std::size_t alloc_bytes = 0;
    device::Stream stream = device::kDefaultStream;
    bool happened = false;
  };

  // allocate's steps (torch: get_free_block, alloc_block, release_*, alloc_found_block).
  bool get_free_block(Request& r);
  bool alloc_block(Request& r, bool is_retry);
  bool release_available_cached_blocks(const Request& r);
  bool release_cached_blocks();
  void garbage_collect_cached_blocks();
  bool should_split(const Block* block, std::size_t size_bytes) const noexcept;
  Block* alloc_found_block(Request& r, std::size_t requested_bytes, bool split);

  // Freeing: to the pool now, or after events on the recorded streams.
  void free_block(Block* block);
  std::size_t try_merge_blocks(Block* dst, Block* src, BlockPool& pool);
  void insert_events(Block* block);
  void process_events();
  void synchronize_and_free_events();
  // Frees the blocks whose events completed (with `wait`, after waiting for each).
  void reap_events(bool wait);

  // Segments: release whole plain segments; expandable map/unmap.
  void release_block(Block* block);
  void release_blocks(BlockPool& pool);
  Block* find_expandable_block(device::Stream stream, BlockPool& pool, std::size_t size_bytes);
  bool map_block(Block* to_map, std::size_t size_bytes);
  Block* try_allocate_expandable_block(device::Stream stream, BlockPool& pool,
                                       std::size_t size_bytes);
  void unmap_block(Block* block);
  void release_expandable_segment(Block* block);

  // Stats for the aggregate and the block's pool together.
  void stat_increase(StatArray& a, const BlockPool& pool, std::size_t n) noexcept {
    a[kAggregate].increase(static_cast<std::int64_t>(n));
    a[pool.is_small ? kSmallPool : kLargePool].increase(static_cast<std::int64_t>(n));
  }
  void stat_decrease(StatArray& a, const BlockPool& pool, std::size_t n) noexcept {
    a[kAggregate].decrease(static_cast<std::int64_t>(n));
    a[pool.is_small ? kSmallPool : kLargePool].decrease(static_cast<std::int64_t>(n));
  }
  bool gc_enabled() const noexcept {
    return limit_bytes_ > 0 && options_.garbage_collection_threshold > 0.0;
  }

  device::Backend& backend_;
  const CachingPoolOptions options_;
  BlockArena arena_;
  BlockPool small_blocks_{true};
  BlockPool large_blocks_{false};
  std::unordered_map<std::uintptr_t, Block*> live_;  // allocated blocks by address
  std::map<device::Stream, std::deque<PendingEvent>> pending_events_;
  EventPool events_;
  std::vector<std::unique_ptr<ExpandableSegment>> expandable_segments_;
  DeviceStats stats_;
  std::size_t total_reserved_bytes_ = 0;  // torch's total_allocated_memory
  std::size_t limit_bytes_ = 0;           // 0 = no limit
  LastOom last_oom_;
};

}  // namespace timeshare::pool
