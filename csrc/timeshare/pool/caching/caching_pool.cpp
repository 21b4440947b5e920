// CachingPool: allocate, deallocate, splitting, coalescing, stream events, statistics.
// Releasing memory (empty_cache, retries, garbage collection) and expandable segments are in
// caching_pool_release.cpp. The policy is explained in caching_pool.h.
#include "timeshare/pool/caching/caching_pool.h"

#include <algorithm>
#include <bit>
#include <unordered_set>

#include <fmt/format.h>

namespace timeshare::pool {

namespace {

// Requests above this are refused outright (no rounding overflow, no device call).
constexpr std::size_t kMaxRequestBytes = std::size_t{1} << 60;

std::size_t divisions_for(std::size_t bytes, const CachingPoolOptions& o) noexcept {
  const auto& d = o.roundup_power2_divisions;
  if (d.empty()) return 0;
  if (d.size() == 1) return d.front();
  const std::size_t log_size = static_cast<std::size_t>(std::bit_width(bytes)) - 1;
  const std::size_t log_start = static_cast<std::size_t>(std::bit_width(kRoundupPower2Start)) - 1;
  const std::size_t index = log_size > log_start ? log_size - log_start : 0;
  return d[std::min(index, d.size() - 1)];
}

// The next of `divisions` equal steps of the power-of-two interval holding `bytes`.
std::size_t roundup_power2_next_division(std::size_t bytes, std::size_t divisions) noexcept {
  if (std::has_single_bit(bytes)) return bytes;
  const std::size_t floor = std::bit_floor(bytes);
  const std::size_t step = floor >> (std::bit_width(divisions) - 1);
  if (step == 0) return floor << 1;
  const std::size_t rounded = bytes & ~(step - 1);
  return rounded == bytes ? bytes : rounded + step;
}

}  // namespace

std::size_t caching_round_size(std::size_t bytes, const CachingPoolOptions& options) noexcept {
  if (bytes < kMinBlockSize) return kMinBlockSize;
  const std::size_t divisions = divisions_for(bytes, options);
  if (divisions > 1 && bytes > kMinBlockSize * divisions) {
    return roundup_power2_next_division(bytes, divisions);
  }
  return round_up(bytes, kMinBlockSize);
}

std::size_t caching_segment_size(std::size_t rounded_bytes) noexcept {
  if (rounded_bytes <= kSmallSize) return kSmallBuffer;
  if (rounded_bytes < kMinLargeAlloc) return kLargeBuffer;
  return round_up(rounded_bytes, kRoundLarge);
}

CachingPool::CachingPool(device::Backend& backend, CachingPoolOptions options)
    : backend_(backend), options_(std::move(options)), events_(backend) {
  stats_.max_split_size = static_cast<std::int64_t>(options_.max_split_size_bytes);
  live_.reserve(4096);
}

CachingPool::~CachingPool() {
  for (auto& [stream, queue] : pending_events_) {
    for (const PendingEvent& pe : queue) backend_.destroy_event(pe.event);
  }
  // Give every plain segment back (whatever is still live: the pool is going away).
  for (const SegmentInfo& seg : snapshot()) {
    if (!seg.is_expandable) backend_.release(reinterpret_cast<void*>(seg.addr), seg.total_bytes);
  }
  expandable_segments_.clear();  // unmaps and releases the virtual ranges
}

// ---- allocate ---------------------------------------------------------------------------------

void* CachingPool::allocate(std::size_t bytes, device::Stream stream, const AllocHint& /*hint*/) {
  if (bytes == 0) return nullptr;
  if (!pending_events_.empty()) process_events();

  Request r;
  r.stream = stream;
  bool found = false;
  if (bytes <= kMaxRequestBytes) {
    r.size_bytes = caching_round_size(bytes, options_);
    r.pool = r.size_bytes <= kSmallSize ? &small_blocks_ : &large_blocks_;
    r.alloc_bytes = caching_segment_size(r.size_bytes);
    found = get_free_block(r);
    if (!found) {
      if (gc_enabled()) garbage_collect_cached_blocks();
      found = alloc_block(r, /*is_retry=*/false) ||
              (release_available_cached_blocks(r) && alloc_block(r, /*is_retry=*/false)) ||
              (release_cached_blocks() && alloc_block(r, /*is_retry=*/true));
    }
  }
  if (!found) {
    ++stats_.num_ooms;
    last_oom_ = {bytes, r.alloc_bytes, stream, true};
    return nullptr;
  }
  Block* block = alloc_found_block(r, bytes, should_split(r.block, r.size_bytes));
  live_.emplace(block->addr, block);
  return block->ptr();
}

bool CachingPool::get_free_block(Request& r) {
  BlockPool& pool = *r.pool;
  if (gc_enabled()) ++pool.free_block_searches;  // ages for the garbage collector
  Block key;
  key.stream = r.stream;
  key.size_bytes = r.size_bytes;
  auto it = pool.blocks.lower_bound(&key);
  if (it == pool.blocks.end() || (*it)->stream != r.stream) return false;

  if ((*it)->expandable) {
    // A block followed by unmapped space can grow into it: for best fit, its size is what it
    // can grow to. Walk on while a later block would waste less.
    auto growable = [](const Block* b) {
      return b->size_bytes + (b->next && !b->next->mapped ? b->next->size_bytes : 0);
    };
    auto next = std::next(it);
    while ((*it)->expandable && next != pool.blocks.end() && (*next)->stream == r.stream &&
           growable(*next) < growable(*it)) {
      it = next++;
    }
  }

  const std::size_t max_split = options_.max_split_size_bytes;
  // Requests under the split limit never take an oversize block...
  if (r.size_bytes < max_split && (*it)->size_bytes >= max_split) return false;
  // ...and oversize requests take a cached block only if it is not much bigger.
  if (r.size_bytes >= max_split &&
      (*it)->size_bytes >= r.size_bytes + options_.max_non_split_rounding_bytes) {
    return false;
  }
  r.block = *it;
  pool.blocks.erase(it);
  return true;
}

bool CachingPool::alloc_block(Request& r, bool is_retry) {
  const std::size_t size = r.alloc_bytes;
  if (is_retry) ++stats_.num_alloc_retries;
  if (limit_bytes_ > 0 && total_reserved_bytes_ + size > limit_bytes_) return false;
  if (options_.expandable_segments) {
    r.block = try_allocate_expandable_block(r.stream, *r.pool, r.size_bytes);
    return r.block != nullptr;
  }
  void* ptr = nullptr;
  if (backend_.reserve(size, &ptr) != device::Status::kOk || ptr == nullptr) return false;
  total_reserved_bytes_ += size;
  r.block = arena_.make(r.stream, reinterpret_cast<std::uintptr_t>(ptr), size, r.pool);
  stat_increase(stats_.segment, *r.pool, 1);
  stat_increase(stats_.reserved_bytes, *r.pool, size);
  if (size >= options_.max_split_size_bytes) stats_.oversize_segments.increase(1);
  ++stats_.num_device_alloc;
  return true;
}

bool CachingPool::should_split(const Block* block, std::size_t size_bytes) const noexcept {
  const std::size_t remaining = block->size_bytes - size_bytes;
  if (block->pool->is_small || options_.expandable_segments) return remaining >= kMinBlockSize;
  return size_bytes < options_.max_split_size_bytes && remaining > kSmallSize;
}

Block* CachingPool::alloc_found_block(Request& r, std::size_t requested_bytes, bool split) {
  BlockPool& pool = *r.pool;
  Block* block = r.block;
  const bool already_split = block->is_split();
  if (split) {
    // [block | remaining]: the front is handed out, the rest goes back to the free set.
    Block* remaining = block;
    block = arena_.make(r.stream, remaining->addr, r.size_bytes, &pool);
    block->expandable = remaining->expandable;
    splice(block, remaining->prev, remaining);
    remaining->addr += r.size_bytes;
    remaining->size_bytes -= r.size_bytes;
    pool.insert(remaining);
    if (!block->expandable) {
      if (already_split) {
        // An inactive split block shrinks by the size handed out.
        stat_decrease(stats_.inactive_split_bytes, pool, block->size_bytes);
      } else {
        // A whole segment is split for the first time: its rest is a new inactive split.
        stat_increase(stats_.inactive_split_bytes, pool, remaining->size_bytes);
        stat_increase(stats_.inactive_split, pool, 1);
      }
    }
  } else if (already_split && !block->expandable) {
    stat_decrease(stats_.inactive_split_bytes, pool, block->size_bytes);
    stat_decrease(stats_.inactive_split, pool, 1);
  }

  block->allocated = true;
  block->requested_bytes = requested_bytes;
  stat_increase(stats_.allocation, pool, 1);
  stat_increase(stats_.allocated_bytes, pool, block->size_bytes);
  stat_increase(stats_.active, pool, 1);
  stat_increase(stats_.active_bytes, pool, block->size_bytes);
  stat_increase(stats_.requested_bytes, pool, requested_bytes);
  if (block->size_bytes >= options_.max_split_size_bytes) stats_.oversize_allocations.increase(1);
  return block;
}

// ---- deallocate ---------------------------------------------------------------------------------

FreeResult CachingPool::deallocate(void* ptr, std::uint64_t /*now_events*/) {
  auto it = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == live_.end()) return FreeResult::kUnknownPointer;
  Block* block = it->second;
  live_.erase(it);

  block->allocated = false;
  const BlockPool& pool = *block->pool;
  stat_decrease(stats_.allocation, pool, 1);
  stat_decrease(stats_.allocated_bytes, pool, block->size_bytes);
  if (block->size_bytes >= options_.max_split_size_bytes) stats_.oversize_allocations.decrease(1);

  if (!block->stream_uses.empty()) {
    insert_events(block);  // back to the pool once the other streams are done with it
  } else {
    free_block(block);
  }
  return FreeResult::kOk;
}

void CachingPool::record_stream(void* ptr, device::Stream stream) {
  auto it = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (it == live_.end()) return;
  Block* block = it->second;
  if (stream == block->stream) return;  // uses on the allocation stream are ordered already
  auto& uses = block->stream_uses;
  if (std::find(uses.begin(), uses.end(), stream) == uses.end()) uses.push_back(stream);
}

void CachingPool::free_block(Block* block) {
  const std::size_t original_bytes = block->size_bytes;
  const std::size_t requested_bytes = block->requested_bytes;
  BlockPool& pool = *block->pool;
  std::int64_t net_blocks = 0;
  std::int64_t net_bytes = 0;

  for (Block* candidate : {block->prev, block->next}) {
    const std::size_t subsumed = try_merge_blocks(block, candidate, pool);
    if (subsumed > 0) {
      net_blocks -= 1;
      net_bytes -= static_cast<std::int64_t>(subsumed);
    }
  }
  pool.insert(block);
  if (block->is_split()) {
    net_blocks += 1;
    net_bytes += static_cast<std::int64_t>(block->size_bytes);
  }

  // As torch: expandable segments are left out of inactive_split (their free pages can always
  // be given back, so they are not the fragmentation this figure is about).
  if (!block->expandable) {
    if (net_blocks > 0) stat_increase(stats_.inactive_split, pool, static_cast<std::size_t>(net_blocks));
    if (net_blocks < 0) stat_decrease(stats_.inactive_split, pool, static_cast<std::size_t>(-net_blocks));
    if (net_bytes > 0) stat_increase(stats_.inactive_split_bytes, pool, static_cast<std::size_t>(net_bytes));
    if (net_bytes < 0) stat_decrease(stats_.inactive_split_bytes, pool, static_cast<std::size_t>(-net_bytes));
  }
  stat_decrease(stats_.active, pool, 1);
  stat_decrease(stats_.active_bytes, pool, original_bytes);
  stat_decrease(stats_.requested_bytes, pool, requested_bytes);
}

std::size_t CachingPool::try_merge_blocks(Block* dst, Block* src, BlockPool& pool) {
  if (!src || !src->is_idle() || dst->mapped != src->mapped) return 0;
  if (dst->prev == src) {  // [src dst]
    dst->addr = src->addr;
    dst->prev = src->prev;
    if (dst->prev) dst->prev->next = dst;
  } else {  // [dst src]
    dst->next = src->next;
    if (dst->next) dst->next->prev = dst;
  }
  const std::size_t subsumed = src->size_bytes;
  dst->size_bytes += subsumed;
  if (src->mapped) {
    pool.blocks.erase(src);
  } else {
    pool.unmapped.erase(src);
  }
  arena_.recycle(src);
  return subsumed;
}

// ---- stream events ----------------------------------------------------------------------------

void CachingPool::insert_events(Block* block) {
  std::vector<device::Stream> streams = std::move(block->stream_uses);
  block->stream_uses.clear();
  for (device::Stream s : streams) {
    const device::Event e = events_.take();
    if (e != device::kNoEvent && backend_.record(e, s) == device::Status::kOk) {
      ++block->event_count;
      pending_events_[s].push_back({e, block});
      continue;
    }
    // No event to be had: wait for the stream here rather than risk an early reuse.
    events_.give(e);
    backend_.synchronize_stream(s);
  }
  if (block->event_count == 0) free_block(block);
}

void CachingPool::process_events() { reap_events(/*wait=*/false); }

void CachingPool::synchronize_and_free_events() {
  ++stats_.num_sync_all_streams;
  reap_events(/*wait=*/true);
}

void CachingPool::reap_events(bool wait) {
  for (auto it = pending_events_.begin(); it != pending_events_.end();) {
    auto& queue = it->second;
    while (!queue.empty()) {
      const PendingEvent pe = queue.front();
      // A failed wait (a sticky device error) proves nothing: the block stays pending. Later
      // events on this stream are later still.
      if (wait && backend_.synchronize_event(pe.event) != device::Status::kOk) break;
      if (!backend_.query(pe.event)) break;
      queue.pop_front();
      events_.give(pe.event);
      if (--pe.block->event_count == 0) free_block(pe.block);
    }
    it = queue.empty() ? pending_events_.erase(it) : std::next(it);
  }
}

// ---- introspection ------------------------------------------------------------------------------

std::size_t CachingPool::block_size(void* ptr) const {
  auto it = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
  return it == live_.end() ? 0 : it->second->size_bytes;
}

std::size_t CachingPool::cached_free_bytes() const noexcept {
  std::size_t total = 0;
  for (const BlockPool* p : {&small_blocks_, &large_blocks_}) {
    for (const Block* b : p->blocks) total += b->size_bytes;
  }
  return total;
}

std::size_t CachingPool::largest_free_block_bytes() const noexcept {
  std::size_t largest = 0;
  for (const BlockPool* p : {&small_blocks_, &large_blocks_}) {
    for (const Block* b : p->blocks) largest = std::max(largest, b->size_bytes);
  }
  return largest;
}

std::vector<SegmentInfo> CachingPool::snapshot() const {
  std::unordered_set<const Block*> all;
  for (const BlockPool* p : {&small_blocks_, &large_blocks_}) {
    all.insert(p->blocks.begin(), p->blocks.end());
    all.insert(p->unmapped.begin(), p->unmapped.end());
  }
  for (const auto& [addr, b] : live_) all.insert(b);
  for (const auto& [stream, queue] : pending_events_) {
    for (const PendingEvent& pe : queue) all.insert(pe.block);
  }
  std::vector<SegmentInfo> out;
  for (const Block* head : all) {
    // A segment starts at a mapped block with no mapped block before it (for expandable
    // segments, every mapped stretch is reported as one segment, as torch does).
    if (!head->mapped || (head->prev && head->prev->mapped)) continue;
    SegmentInfo seg;
    seg.addr = head->addr;
    seg.stream = head->stream;
    seg.is_large = !head->pool->is_small;
    seg.is_expandable = head->expandable != nullptr;
    for (const Block* b = head; b && b->mapped; b = b->next) {
      const bool active = b->allocated || b->event_count > 0;
      seg.blocks.push_back({b->addr, b->size_bytes, b->requested_bytes, b->allocated, active});
      seg.total_bytes += b->size_bytes;
      if (b->allocated) seg.allocated_bytes += b->size_bytes;
    }
    out.push_back(std::move(seg));
  }
  std::sort(out.begin(), out.end(),
            [](const SegmentInfo& a, const SegmentInfo& b) { return a.addr < b.addr; });
  return out;
}

}  // namespace timeshare::pool
