// Blocks and free-block pools of the CachingPool (PyTorch's caching-allocator model).
//
// A Block is a contiguous piece of one segment (a plain device reservation, or a range of an
// expandable segment). Blocks of a segment form a doubly linked list in address order
// (prev/next); a block that is the whole segment has neither. A BlockPool holds the *free*
// blocks of one size class (small or large) ordered by (stream, size, address), so best fit
// is one lower_bound; for expandable segments it also holds the unmapped tail ranges ordered
// by (stream, address).
//
// Blocks are recycled through a BlockArena (a free list over chunks) so that splitting and
// merging on the hot path never calls the system allocator for the Block objects themselves.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <set>
#include <vector>

#include "timeshare/device/backend.h"

namespace timeshare::pool {

class ExpandableSegment;
struct BlockPool;

struct Block {
  device::Stream stream = device::kDefaultStream;  // the allocation stream
  std::uintptr_t addr = 0;                         // first byte
  std::size_t size_bytes = 0;                      // rounded size of this block
  std::size_t requested_bytes = 0;                 // what the caller asked for (unrounded)
  BlockPool* pool = nullptr;                       // small or large free-block pool
  Block* prev = nullptr;                           // neighbour below, same segment
  Block* next = nullptr;                           // neighbour above, same segment
  ExpandableSegment* expandable = nullptr;         // owning expandable segment, if any
  std::vector<device::Stream> stream_uses;         // extra streams (record_stream)
  int event_count = 0;                             // outstanding end-of-use events
  std::int64_t gc_count_base = 0;                  // pool's free-block-search count at insert
  bool allocated = false;                          // handed to a caller and not yet freed
  bool mapped = true;                              // false: unmapped virtual range (expandable)

  bool is_split() const noexcept { return prev != nullptr || next != nullptr; }
  void* ptr() const noexcept { return reinterpret_cast<void*>(addr); }
  std::uintptr_t end() const noexcept { return addr + size_bytes; }
  // Free, mapped and untouched by other streams: may be merged with a neighbour or handed out.
  bool is_idle() const noexcept { return !allocated && event_count == 0 && stream_uses.empty(); }
};

// Links `b` between `before` and `after` (either may be null).
inline void splice(Block* b, Block* before, Block* after) noexcept {
  b->prev = before;
  if (before) before->next = b;
  b->next = after;
  if (after) after->prev = b;
}

// Best-fit order: stream, then size, then address.
struct BlockBySize {
  bool operator()(const Block* a, const Block* b) const noexcept {
    if (a->stream != b->stream) return a->stream < b->stream;
    if (a->size_bytes != b->size_bytes) return a->size_bytes < b->size_bytes;
    return a->addr < b->addr;
  }
};

// Address order within a stream (unmapped ranges of expandable segments).
struct BlockByAddress {
  bool operator()(const Block* a, const Block* b) const noexcept {
    if (a->stream != b->stream) return a->stream < b->stream;
    return a->addr < b->addr;
  }
};

struct BlockPool {
  explicit BlockPool(bool small) : is_small(small) {}

  std::set<Block*, BlockBySize> blocks;       // free, mapped blocks
  std::set<Block*, BlockByAddress> unmapped;  // unmapped ranges of expandable segments
  const bool is_small;
  std::int64_t free_block_searches = 0;       // torch's get_free_blocks_call_count (GC ages)

  // Inserts a free block and stamps its GC age base.
  void insert(Block* b) {
    b->gc_count_base = free_block_searches;
    blocks.insert(b);
  }
  std::int64_t gc_age(const Block* b) const noexcept { return free_block_searches - b->gc_count_base; }
};

// Owns every Block; hands out recycled ones. Not thread-safe (the pool is serialised).
class BlockArena {
 public:
  BlockArena() = default;
  BlockArena(const BlockArena&) = delete;
  BlockArena& operator=(const BlockArena&) = delete;

  Block* make(device::Stream stream, std::uintptr_t addr, std::size_t size_bytes,
              BlockPool* pool);
  void recycle(Block* b);
  std::size_t live_blocks() const noexcept { return live_; }

 private:
  static constexpr std::size_t kChunkBlocks = 1024;
  std::vector<std::unique_ptr<Block[]>> chunks_;
  std::vector<Block*> free_;
  std::size_t live_ = 0;
};

}  // namespace timeshare::pool
