// CachingPool: giving memory back (empty_cache, free-and-retry, garbage collection),
// expandable segments (map on growth, unmap on release) and the out-of-memory description.
#include <algorithm>

#include <fmt/format.h>

#include "timeshare/common/units.h"
#include "timeshare/pool/caching/caching_pool.h"

namespace timeshare::pool {

// ---- releasing cached segments -----------------------------------------------------------------

void CachingPool::empty_cache() { release_cached_blocks(); }

bool CachingPool::release_available_cached_blocks(const Request& r) {
  const std::size_t max_split = options_.max_split_size_bytes;
  if (max_split == kNoMaxSplitSize) return false;
  BlockPool& pool = *r.pool;
  Block key;
  key.stream = r.stream;
  key.size_bytes = std::max(r.size_bytes, max_split);
  auto releasable = [&](const Block* b) {
    return b->stream == r.stream && b->size_bytes >= max_split && !b->is_split() &&
           !b->expandable;
  };
  auto it = pool.blocks.lower_bound(&key);
  if (it != pool.blocks.end() && (*it)->stream == r.stream) {
    if (!releasable(*it)) return false;
    release_block(*it);  // one oversize block is enough
    return true;
  }
  // No single block is large enough: release oversize blocks from the largest down.
  if (it == pool.blocks.begin()) return false;
  std::size_t released = 0;
  --it;
  while (released < key.size_bytes && releasable(*it)) {
    Block* victim = *it;
    const bool last = it == pool.blocks.begin();
    if (!last) --it;
    released += victim->size_bytes;
    release_block(victim);
    if (last) break;
  }
  return released >= key.size_bytes;
}

bool CachingPool::release_cached_blocks() {
  synchronize_and_free_events();  // blocks waiting for other streams become free first
  release_blocks(large_blocks_);
  release_blocks(small_blocks_);
  return true;
}

void CachingPool::release_blocks(BlockPool& pool) {
  std::vector<Block*> to_unmap;
  for (auto it = pool.blocks.begin(); it != pool.blocks.end();) {
    Block* block = *it;
    ++it;
    if (block->expandable) {
      to_unmap.push_back(block);  // unmapping reshapes the set: do it after the walk
    } else if (!block->is_split()) {
      release_block(block);
    }
  }
  for (Block* block : to_unmap) {
    unmap_block(block);
    if (!block->is_split() && !block->mapped) release_expandable_segment(block);
  }
}

void CachingPool::release_block(Block* block) {
  BlockPool& pool = *block->pool;
  ++stats_.num_device_free;
  backend_.release(block->ptr(), block->size_bytes);
  total_reserved_bytes_ -= block->size_bytes;
  stat_decrease(stats_.segment, pool, 1);
  stat_decrease(stats_.reserved_bytes, pool, block->size_bytes);
  if (block->size_bytes >= options_.max_split_size_bytes) stats_.oversize_segments.decrease(1);
  pool.blocks.erase(block);
  arena_.recycle(block);
}

void CachingPool::garbage_collect_cached_blocks() {
  // Reclaim whole cached large segments that have gone unused the longest (no synchronisation,
  // unlike empty_cache), until reserved memory is back under the threshold.
  const auto threshold_bytes = static_cast<std::size_t>(
      options_.garbage_collection_threshold * static_cast<double>(limit_bytes_));
  if (total_reserved_bytes_ <= threshold_bytes) return;
  const std::size_t target_bytes = total_reserved_bytes_ - threshold_bytes;
  auto freeable = [](const Block* b) { return !b->is_split() && !b->expandable; };

  std::int64_t total_age = 0;
  std::int64_t freeable_count = 0;
  for (const Block* b : large_blocks_.blocks) {
    if (freeable(b)) {
      total_age += large_blocks_.gc_age(b);
      ++freeable_count;
    }
  }
  std::size_t reclaimed_bytes = 0;
  bool block_freed = true;
  while (reclaimed_bytes < target_bytes && block_freed && freeable_count > 0) {
    const double age_threshold =
        static_cast<double>(total_age) / static_cast<double>(freeable_count);
    block_freed = false;
    // Free every block older than average; don't stop at the target, so GC runs less often.
    for (auto it = large_blocks_.blocks.begin(); it != large_blocks_.blocks.end();) {
      Block* block = *it;
      ++it;
      const std::int64_t age = large_blocks_.gc_age(block);
      if (freeable(block) && static_cast<double>(age) >= age_threshold) {
        block_freed = true;
        reclaimed_bytes += block->size_bytes;
        total_age -= age;
        --freeable_count;
        release_block(block);
      }
    }
  }
}

// ---- expandable segments ------------------------------------------------------------------------

Block* CachingPool::find_expandable_block(device::Stream stream, BlockPool& pool,
                                          std::size_t size_bytes) {
  auto allocatable = [](const Block* b) { return b && b->is_idle(); };
  auto has_room = [&](const Block* b) {
    std::size_t bytes = 0;
    while (bytes < size_bytes && allocatable(b)) {
      bytes += b->size_bytes;
      b = b->next;
    }
    return bytes >= size_bytes;
  };
  // The lowest unmapped range of this stream (with the free block just before it) that can
  // hold the request once mapped.
  Block key;
  key.stream = stream;
  for (auto it = pool.unmapped.lower_bound(&key);
       it != pool.unmapped.end() && (*it)->stream == stream; ++it) {
    Block* candidate = *it;
    if (allocatable(candidate->prev)) candidate = candidate->prev;
    if (has_room(candidate)) return candidate;
  }

  // None: reserve a new virtual range for 9/8 of the device, as torch does.
  const std::size_t granule = std::max<std::size_t>(backend_.granule_bytes(), 1);
  const std::size_t page_bytes = round_up(pool.is_small ? kSmallBuffer : kLargeBuffer, granule);
  const device::MemInfo info = backend_.mem_info();
  const std::size_t va_bytes =
      std::max(info.total_bytes + info.total_bytes / 8, round_up(size_bytes, page_bytes));
  device::Status status = device::Status::kOk;
  auto segment = ExpandableSegment::create(backend_, stream, va_bytes, page_bytes, &status);
  if (!segment) return nullptr;
  ExpandableSegment* es = segment.get();
  expandable_segments_.push_back(std::move(segment));
  Block* candidate = arena_.make(stream, es->base(), es->size_bytes(), &pool);
  candidate->mapped = false;
  candidate->expandable = es;
  pool.unmapped.insert(candidate);
  return candidate;
}

bool CachingPool::map_block(Block* to_map, std::size_t size_bytes) {
  const SegmentRange mapped = to_map->expandable->map({to_map->addr, size_bytes});
  if (mapped.bytes == 0) return false;

  BlockPool& pool = *to_map->pool;
  pool.unmapped.erase(to_map);
  to_map->mapped = true;
  if (mapped.bytes < to_map->size_bytes) {
    // [to_map (now mapped) | remaining (still unmapped)]
    Block* remaining = arena_.make(to_map->stream, to_map->addr + mapped.bytes,
                                   to_map->size_bytes - mapped.bytes, &pool);
    remaining->mapped = false;
    remaining->expandable = to_map->expandable;
    splice(remaining, to_map, to_map->next);
    pool.unmapped.insert(remaining);
    to_map->size_bytes = mapped.bytes;
  }
  try_merge_blocks(to_map, to_map->prev, pool);
  try_merge_blocks(to_map, to_map->next, pool);
  pool.insert(to_map);

  total_reserved_bytes_ += mapped.bytes;
  stat_increase(stats_.reserved_bytes, pool, mapped.bytes);
  ++stats_.num_device_alloc;
  return true;
}

Block* CachingPool::try_allocate_expandable_block(device::Stream stream, BlockPool& pool,
                                                  std::size_t size_bytes) {
  Block* candidate = find_expandable_block(stream, pool, size_bytes);
  if (!candidate) return nullptr;
  // candidate is [unmapped], [unmapped | free ...] or [free | unmapped ...] with room enough.
  if (!candidate->mapped &&
      !map_block(candidate, std::min(candidate->size_bytes, size_bytes))) {
    return nullptr;
  }
  while (candidate->size_bytes < size_bytes) {
    // [free | unmapped]: map what is missing; the mapped part merges into the free block.
    Block* next = candidate->next;
    const std::size_t missing = size_bytes - candidate->size_bytes;
    if (!map_block(next, std::min(missing, next->size_bytes))) return nullptr;
    candidate = next;
  }
  pool.blocks.erase(candidate);
  return candidate;
}

void CachingPool::unmap_block(Block* block) {
  const SegmentRange unmapped = block->expandable->unmap({block->addr, block->size_bytes});
  if (unmapped.bytes == 0) return;  // no whole page inside this free block

  BlockPool& pool = *block->pool;
  pool.blocks.erase(block);
  const std::size_t before_bytes = unmapped.addr - block->addr;
  if (before_bytes > 0) {  // [before (free, mapped) | block]
    Block* before = arena_.make(block->stream, block->addr, before_bytes, &pool);
    before->expandable = block->expandable;
    splice(before, block->prev, block);
    pool.insert(before);
  }
  const std::size_t after_bytes = block->size_bytes - before_bytes - unmapped.bytes;
  if (after_bytes > 0) {  // [block | after (free, mapped)]
    Block* after =
        arena_.make(block->stream, unmapped.addr + unmapped.bytes, after_bytes, &pool);
    after->expandable = block->expandable;
    splice(after, block, block->next);
    pool.insert(after);
  }
  block->addr = unmapped.addr;
  block->size_bytes = unmapped.bytes;
  block->mapped = false;
  try_merge_blocks(block, block->prev, pool);
  try_merge_blocks(block, block->next, pool);
  pool.unmapped.insert(block);

  total_reserved_bytes_ -= unmapped.bytes;
  stat_decrease(stats_.reserved_bytes, pool, unmapped.bytes);
  ++stats_.num_device_free;
}

void CachingPool::release_expandable_segment(Block* block) {
  block->pool->unmapped.erase(block);
  auto it = std::find_if(expandable_segments_.begin(), expandable_segments_.end(),
                         [&](const auto& es) { return es.get() == block->expandable; });
  if (it != expandable_segments_.end()) expandable_segments_.erase(it);  // va_release
  arena_.recycle(block);
}

// ---- out-of-memory description ------------------------------------------------------------------

std::string CachingPool::describe() const {
  const device::MemInfo info = backend_.mem_info();
  const std::size_t allocated = static_cast<std::size_t>(stats_.allocated_bytes[kAggregate].current);
  const std::size_t reserved = static_cast<std::size_t>(stats_.reserved_bytes[kAggregate].current);
  const std::size_t cached = cached_free_bytes();
  std::string out;
  if (last_oom_.happened) {
    out += fmt::format("Out of memory. Tried to allocate {} (a {} request on stream {}). ",
                       format_bytes(last_oom_.alloc_bytes), format_bytes(last_oom_.requested_bytes),
                       last_oom_.stream);
  }
  out += fmt::format("Device {} has a total capacity of {} of which {} is free. ",
                     backend_.device_index(), format_bytes(info.total_bytes),
                     format_bytes(info.free_bytes));
  if (limit_bytes_ > 0) out += fmt::format("{} allowed; ", format_bytes(limit_bytes_));
  out += fmt::format(
      "Of the allocated memory {} is allocated by the '{}' pool, and {} is reserved but "
      "unallocated ({} of it free in cache; {} segments, {} inactive split blocks).",
      format_bytes(allocated), name(), format_bytes(reserved - std::min(reserved, allocated)),
      format_bytes(cached), stats_.segment[kAggregate].current,
      stats_.inactive_split[kAggregate].current);
  if (!options_.expandable_segments && reserved > allocated + reserved / 4) {
    out += " If reserved but unallocated memory is large, try expandable_segments:True "
           "(PYTORCH_CUDA_ALLOC_CONF, or TIMESHARE_CONF) to avoid fragmentation, or "
           "max_split_size_mb to stop large cached blocks from being split.";
  }
  if (limit_bytes_ > 0) {
    out += " The limit (set_per_process_memory_fraction or the budget) can be raised.";
  }
  return out;
}

}  // namespace timeshare::pool
