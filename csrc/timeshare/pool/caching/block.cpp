#include "timeshare/pool/caching/block.h"

namespace timeshare::pool {

Block* BlockArena::make(device::Stream stream, std::uintptr_t addr, std::size_t size_bytes,
                        BlockPool* pool) {
  if (free_.empty()) {
    chunks_.push_back(std::make_unique<Block[]>(kChunkBlocks));
    Block* chunk = chunks_.back().get();
    free_.reserve(free_.size() + kChunkBlocks);
    for (std::size_t i = kChunkBlocks; i-- > 0;) free_.push_back(&chunk[i]);
  }
  Block* b = free_.back();
  free_.pop_back();
  b->stream = stream;
  b->addr = addr;
  b->size_bytes = size_bytes;
  b->requested_bytes = 0;
  b->pool = pool;
  b->prev = b->next = nullptr;
  b->expandable = nullptr;
  b->stream_uses.clear();
  b->event_count = 0;
  b->gc_count_base = 0;
  b->allocated = false;
  b->mapped = true;
  ++live_;
  return b;
}

void BlockArena::recycle(Block* b) {
  b->stream_uses.clear();
  free_.push_back(b);
  --live_;
}

}  // namespace timeshare::pool
