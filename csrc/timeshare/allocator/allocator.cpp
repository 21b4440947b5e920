#include "timeshare/allocator/allocator.h"

#include <algorithm>

#include "timeshare/allocator/ipc_handle.h"
#include "timeshare/common/log.h"
#include "timeshare/common/units.h"
#include "timeshare/spill/make_room.h"

namespace timeshare {

namespace {

constexpr std::uint64_t kUnknownFreeLogEvery = 1000;  // log the 1st, 1001st, ... unknown free

// Every StatArray of DeviceStats, for summing the pools' statistics.
constexpr StatArray DeviceStats::*kStatArrays[] = {
    &DeviceStats::allocation,      &DeviceStats::segment,
    &DeviceStats::active,          &DeviceStats::inactive_split,
    &DeviceStats::allocated_bytes, &DeviceStats::reserved_bytes,
    &DeviceStats::active_bytes,    &DeviceStats::inactive_split_bytes,
    &DeviceStats::requested_bytes};
constexpr Stat DeviceStats::*kStats[] = {&DeviceStats::oversize_allocations,
                                         &DeviceStats::oversize_segments};
constexpr std::int64_t DeviceStats::*kCounters[] = {
    &DeviceStats::num_alloc_retries, &DeviceStats::num_ooms, &DeviceStats::num_sync_all_streams,
    &DeviceStats::num_device_alloc, &DeviceStats::num_device_free};

void add_stat(Stat& sum, const Stat& s) noexcept {
  sum.current += s.current;
  sum.peak += s.peak;
  sum.allocated += s.allocated;
  sum.freed += s.freed;
}

void add_stats(DeviceStats& sum, const DeviceStats& s) noexcept {
  for (auto m : kStatArrays) {
    for (int t = 0; t < kNumStatTypes; ++t) add_stat((sum.*m)[t], (s.*m)[t]);
  }
  for (auto m : kStats) add_stat(sum.*m, s.*m);
  for (auto m : kCounters) sum.*m += s.*m;
}

// Raises `peaks`' peak to `now`'s current, stat by stat (or sets it, with `reset`).
void raise_peaks(DeviceStats& peaks, const DeviceStats& now, bool reset) noexcept {
  auto raise = [reset](Stat& p, const Stat& n) {
    p.peak = reset ? n.current : std::max(p.peak, n.current);
  };
  for (auto m : kStatArrays) {
    for (int t = 0; t < kNumStatTypes; ++t) raise((peaks.*m)[t], (now.*m)[t]);
  }
  for (auto m : kStats) raise(peaks.*m, now.*m);
}

}  // namespace

Allocator::Allocator(const Options& options, std::unique_ptr<device::Backend> backend)
    : options_(options), backend_(std::make_unique<ObservedBackend>(std::move(backend))) {
  set_log_level(options_.log_level);
  Stack stack = make_stack(options_, *backend_, /*deterministic=*/false);
  pool_ = std::move(stack.pool);
  predictor_ = std::move(stack.predictor);
  if (options_.budget_bytes > 0) pool_->set_limit_bytes(options_.budget_bytes);
  log().info("allocator for {} device {}: pool {}, predictor {}", backend_->name(),
             backend_->device_index(), pool_->name(), predictor_name());
}

Allocator::~Allocator() {
  std::lock_guard lock(mu_);
  for (auto& [ptr, e] : exported_) ipc::close_fds(&e.fds);
  for (void* base : imported_) backend_->release_import(base);
}

const char* Allocator::predictor_name() const noexcept {
  return predictor_ ? predictor_->name() : "none";
}

Allocator::PrivatePool* Allocator::route_for(device::Stream stream) const {
  for (const Route& r : routes_) {
    if (r.filter(stream)) return r.pool;
  }
  return nullptr;
}

void* Allocator::allocate_in(PrivatePool* p, std::size_t bytes, device::Stream stream,
                             const pool::AllocHint& hint) {
  own(p);
  void* ptr = pool_of(p).allocate(bytes, stream, hint);
  if (!ptr) return nullptr;
  live_.emplace(ptr, Live{hint.alloc_id, bytes, stream, p});
  if (p) ++p->live_blocks;
  if (merged_peaks_valid_) track_merged_peaks();
  return ptr;
}

void* Allocator::malloc(std::size_t bytes, device::Stream stream) {
  pool::AllocHint hint;
  PrivatePool* target = nullptr;
  {
    std::lock_guard lock(mu_);
    if (bytes == 0) {
      ++counters_.zero_size_mallocs;
      return nullptr;
    }
    hint.now_events = counters_.clock_events++;
    hint.alloc_id = next_alloc_id_++;
    if (predictor_) {
      predict::AllocEvent e;
      e.alloc_id = hint.alloc_id;
      e.bytes = bytes;
      e.stream = stream;
      e.device = backend_->device_index();
      e.now_events = hint.now_events;
      e.now_us = backend_->now_ns() / 1000;
      hint.predicted_lifespan = predictor_->on_alloc(e);
    }
    if (!routes_.empty()) target = route_for(stream);
    if (void* p = allocate_in(target, bytes, stream, hint)) return p;
  }
  // Conflict spill: under a budget, ask the holders of spillable data (the offload hooks) to
  // make room. Called with no allocator lock held, because they free through this allocator.
  if (options_.budget_bytes > 0) {
    const std::size_t freed = spill::make_room(backend_->device_index(), bytes);
    std::lock_guard lock(mu_);
    if (freed > 0) {
      ++counters_.spill_retries;
      // The pool the allocation was routed to may have been released meanwhile.
      PrivatePool* again = routes_.empty() ? nullptr : route_for(stream);
      if (void* p = allocate_in(again, bytes, stream, hint)) return p;
    }
  }
  std::lock_guard lock(mu_);
  // torch's MemPool(use_on_oom=True): a default-pool allocation may take a block from it.
  if (!routes_.empty() ? route_for(stream) == nullptr : true) {
    for (auto& [id, p] : private_) {
      if (!p->use_on_oom) continue;
      if (void* ptr = allocate_in(p.get(), bytes, stream, hint)) return ptr;
    }
  }
  last_oom_ = oom_message(bytes, stream);
  log().error("{}", last_oom_);
  if (predictor_) {
    predictor_->on_free({hint.alloc_id, hint.now_events, backend_->now_ns() / 1000});
  }
  return nullptr;
}

bool Allocator::free(void* ptr) {
  if (!ptr) return true;
  std::lock_guard lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) {
    if (counters_.unknown_frees++ % kUnknownFreeLogEvery == 0) {
      log().warn("free of pointer {} that timeshare did not allocate: ignored ({} so far)", ptr,
                 counters_.unknown_frees);
    }
    return false;
  }
  const std::uint64_t now = counters_.clock_events++;
  const Live live = it->second;
  live_.erase(it);
  if (!exported_.empty()) forget_export(ptr);
  own(live.pool);
  pool::Pool& pool = pool_of(live.pool);
  if (pool.deallocate(ptr, now) != pool::FreeResult::kOk) {
    log().error("pool {} did not know block {} that the allocator handed out", pool.name(), ptr);
  }
  if (live.pool) {
    --live.pool->live_blocks;
    drop_if_unused(live.pool);
  }
  if (merged_peaks_valid_) track_merged_peaks();
  if (predictor_) predictor_->on_free({live.alloc_id, now, backend_->now_ns() / 1000});
  return true;
}

bool Allocator::record_stream(void* ptr, device::Stream stream) {
  std::lock_guard lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) return false;
  ++counters_.record_streams;
  own(it->second.pool);
  pool_of(it->second.pool).record_stream(ptr, stream);
  return true;
}

bool Allocator::block_info(const void* ptr, device::Stream* stream, std::size_t* bytes) const {
  std::lock_guard lock(mu_);
  auto it = live_.find(const_cast<void*>(ptr));
  if (it == live_.end()) return false;
  if (stream) *stream = it->second.stream;
  if (bytes) *bytes = it->second.bytes;
  return true;
}

void Allocator::empty_cache() {
  // The default pool only, as torch: a private pool's free memory may be what a CUDA graph
  // replays into; it goes back with releasePool (or empty_cache(id), asked for by name).
  std::lock_guard lock(mu_);
  ++counters_.empty_cache_calls;
  own(nullptr);
  pool_->empty_cache();
}

void Allocator::set_capturing(bool begin) {
  std::lock_guard lock(mu_);
  backend_->set_capturing(begin);
}

std::uint64_t Allocator::calls_held_for_capture() const {
  std::lock_guard lock(mu_);
  return backend_->calls_held_for_capture();
}

void Allocator::empty_cache(PoolId id) {
  if (id == kDefaultPoolId) {
    std::lock_guard lock(mu_);
    ++counters_.empty_cache_calls;
    own(nullptr);
    pool_->empty_cache();
    return;
  }
  std::lock_guard lock(mu_);
  auto it = private_.find(id);
  if (it == private_.end()) return;
  ++counters_.empty_cache_calls;
  own(it->second.get());
  it->second->pool->empty_cache();
}

void Allocator::set_memory_fraction(double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    log().warn("memory fraction {} is outside (0, 1]: ignored", fraction);
    return;
  }
  const auto total = backend_->mem_info().total_bytes;
  std::lock_guard lock(mu_);
  std::size_t limit = static_cast<std::size_t>(fraction * static_cast<double>(total));
  if (options_.budget_bytes > 0 && options_.budget_bytes < limit) limit = options_.budget_bytes;
  pool_->set_limit_bytes(limit);
}

double Allocator::memory_fraction() const {
  const auto total = backend_->mem_info().total_bytes;
  std::lock_guard lock(mu_);
  const std::size_t limit = pool_->limit_bytes();
  if (limit == 0 || total == 0) return 1.0;
  return std::min(1.0, static_cast<double>(limit) / static_cast<double>(total));
}

// ---- private pools ------------------------------------------------------------------------

std::string Allocator::create_or_incref_pool(PoolId id) {
  if (id == kDefaultPoolId) return "pool id (0, 0) is the default pool, not a private pool";
  std::lock_guard lock(mu_);
  auto it = private_.find(id);
  if (it != private_.end()) {
    ++it->second->use_count;
    return {};
  }
  if (!merged_peaks_valid_) {
    merged_peaks_ = pool_->stats();
    merged_peaks_valid_ = true;
  }
  auto p = std::make_unique<PrivatePool>();
  p->id = id;
  p->pool = make_private_pool(options_, *backend_);
  private_.emplace(id, std::move(p));
  return {};
}

std::string Allocator::begin_allocate_to_pool(PoolId id, StreamFilter filter) {
  {
    std::lock_guard lock(mu_);
    for (const Route& r : routes_) {
      if (r.id == id) {
        return "beginAllocateToPool: already allocating to pool (" + std::to_string(id.first) +
               ", " + std::to_string(id.second) + ")";
      }
    }
  }
  if (std::string err = create_or_incref_pool(id); !err.empty()) return err;
  std::lock_guard lock(mu_);
  routes_.push_back(Route{id, private_.at(id).get(), std::move(filter)});
  return {};
}

std::string Allocator::end_allocate_to_pool(PoolId id) {
  std::lock_guard lock(mu_);
  for (auto it = routes_.begin(); it != routes_.end(); ++it) {
    if (it->id == id) {
      routes_.erase(it);
      return {};
    }
  }
  return "endAllocateToPool: not allocating to pool (" + std::to_string(id.first) + ", " +
         std::to_string(id.second) + ")";
}

std::string Allocator::release_pool(PoolId id) {
  std::lock_guard lock(mu_);
  auto it = private_.find(id);
  if (it == private_.end()) {
    return "releasePool: no private pool (" + std::to_string(id.first) + ", " +
           std::to_string(id.second) + ")";
  }
  PrivatePool* p = it->second.get();
  if (p->use_count > 0) --p->use_count;
  drop_if_unused(p);
  return {};
}

void Allocator::drop_if_unused(PrivatePool* p) {
  if (p->use_count > 0 || p->live_blocks > 0) return;
  for (const Route& r : routes_) {
    if (r.pool == p) return;  // still routed to (end_allocate_to_pool not called yet)
  }
  // Its totals stay in the device's statistics (torch keeps a released pool's history too):
  // everything it still held counts as freed.
  DeviceStats gone = p->pool->stats();
  for (auto m : kStatArrays) {
    for (int t = 0; t < kNumStatTypes; ++t) {
      Stat& st = (gone.*m)[t];
      st.freed += st.current;
      st.current = 0;
      st.peak = 0;
    }
  }
  for (auto m : kStats) {
    (gone.*m).freed += (gone.*m).current;
    (gone.*m).current = (gone.*m).peak = 0;
  }
  add_stats(retired_, gone);
  own(p);
  private_.erase(p->id);  // the pool's destructor gives its memory back to the device
  own(nullptr);
}

int Allocator::pool_use_count(PoolId id) const {
  std::lock_guard lock(mu_);
  auto it = private_.find(id);
  return it == private_.end() ? 0 : it->second->use_count;
}

std::string Allocator::set_use_on_oom(PoolId id, bool use_on_oom) {
  std::lock_guard lock(mu_);
  auto it = private_.find(id);
  if (it == private_.end()) {
    return "setUseOnOOM: no private pool (" + std::to_string(id.first) + ", " +
           std::to_string(id.second) + ")";
  }
  it->second->use_on_oom = use_on_oom;
  return {};
}

std::vector<void*> Allocator::pool_live_blocks(PoolId id) const {
  std::lock_guard lock(mu_);
  std::vector<void*> out;
  for (const auto& [ptr, live] : live_) {
    const PoolId of = live.pool ? live.pool->id : kDefaultPoolId;
    if (of == id) out.push_back(ptr);
  }
  return out;
}

std::vector<std::pair<PoolId, StatArray>> Allocator::private_pool_reserved() const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<PoolId, StatArray>> out;
  for (const auto& [id, p] : private_) out.emplace_back(id, p->pool->stats().reserved_bytes);
  return out;
}

void Allocator::track_merged_peaks() noexcept {
  DeviceStats now = pool_->stats();
  for (const auto& [id, p] : private_) add_stats(now, p->pool->stats());
  raise_peaks(merged_peaks_, now, /*reset=*/false);
}

// ---- what is mapped -------------------------------------------------------------------------

void Allocator::set_segment_sink(std::function<void(const SegmentEvent&)> sink) {
  std::lock_guard lock(mu_);
  backend_->set_sink(std::move(sink));
}

std::vector<Allocator::SegmentView> Allocator::segments() const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::uintptr_t, const Live*>> blocks;
  blocks.reserve(live_.size());
  for (const auto& [ptr, live] : live_) blocks.emplace_back(reinterpret_cast<std::uintptr_t>(ptr), &live);
  std::sort(blocks.begin(), blocks.end());
  std::vector<SegmentView> out;
  std::size_t b = 0;
  for (const ObservedBackend::Span& span : backend_->spans()) {
    SegmentView seg;
    seg.addr = span.addr;
    seg.bytes = span.bytes;
    seg.pool = span.pool;
    const std::uintptr_t end = span.addr + span.bytes;
    while (b < blocks.size() && blocks[b].first < span.addr) ++b;
    std::uintptr_t at = span.addr;
    bool first = true;
    for (; b < blocks.size() && blocks[b].first < end; ++b) {
      const auto [addr, live] = blocks[b];
      const std::size_t rounded =
          std::max(live->bytes, pool_of(live->pool).block_size(reinterpret_cast<void*>(addr)));
      if (first) seg.stream = live->stream;
      first = false;
      if (addr > at) seg.blocks.push_back(BlockView{at, addr - at, 0, false});
      const std::size_t in_span = std::min<std::uintptr_t>(rounded, end - addr);
      seg.blocks.push_back(BlockView{addr, in_span, live->bytes, true});
      at = addr + in_span;
    }
    if (at < end) seg.blocks.push_back(BlockView{at, end - at, 0, false});
    out.push_back(std::move(seg));
  }
  return out;
}

std::size_t Allocator::largest_cached_bytes() const {
  std::size_t largest = 0;
  for (const SegmentView& seg : segments()) {
    for (const BlockView& b : seg.blocks) {
      if (!b.allocated) largest = std::max(largest, b.bytes);
    }
  }
  return largest;
}

bool Allocator::base_allocation(const void* ptr, std::uintptr_t* base, std::size_t* bytes) const {
  std::lock_guard lock(mu_);
  ObservedBackend::Span span;
  if (!backend_->span_of(reinterpret_cast<std::uintptr_t>(ptr), &span)) return false;
  *base = span.addr;
  *bytes = span.bytes;
  return true;
}

DeviceStats Allocator::stats() const {
  std::lock_guard lock(mu_);
  return stats_locked();
}

DeviceStats Allocator::stats_locked() const {
  if (!merged_peaks_valid_) return pool_->stats();
  DeviceStats sum = pool_->stats();
  for (const auto& [id, p] : private_) add_stats(sum, p->pool->stats());
  add_stats(sum, retired_);
  // Peaks of the whole: tracked at every malloc and free while private pools exist.
  DeviceStats peaks = merged_peaks_;
  raise_peaks(peaks, sum, /*reset=*/false);
  for (auto m : kStatArrays) {
    for (int t = 0; t < kNumStatTypes; ++t) (sum.*m)[t].peak = (peaks.*m)[t].peak;
  }
  for (auto m : kStats) (sum.*m).peak = (peaks.*m).peak;
  return sum;
}

predict::PredictorStats Allocator::predictor_stats() const {
  std::lock_guard lock(mu_);
  return predictor_ ? predictor_->stats() : predict::PredictorStats{};
}

AllocatorCounters Allocator::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

pool::ReleaseStats Allocator::release_stats() const {
  std::lock_guard lock(mu_);
  return pool_->release_stats();
}

void Allocator::reset_peak_stats() {
  std::lock_guard lock(mu_);
  pool_->reset_peak_stats();
  for (auto& [id, p] : private_) p->pool->reset_peak_stats();
  if (merged_peaks_valid_) raise_peaks(merged_peaks_, stats_locked(), /*reset=*/true);
}

void Allocator::reset_accumulated_stats() {
  std::lock_guard lock(mu_);
  retired_ = DeviceStats{};
  pool_->reset_accumulated_stats();
  for (auto& [id, p] : private_) p->pool->reset_accumulated_stats();
}

std::string Allocator::last_oom_message() const {
  std::lock_guard lock(mu_);
  return last_oom_;
}

std::vector<std::pair<std::uintptr_t, std::size_t>> Allocator::live_blocks() const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::uintptr_t, std::size_t>> out;
  out.reserve(live_.size());
  for (const auto& [p, l] : live_) out.emplace_back(reinterpret_cast<std::uintptr_t>(p), l.bytes);
  return out;
}

std::string Allocator::oom_message(std::size_t bytes, device::Stream stream) const {
  const DeviceStats s = stats_locked();
  const auto info = backend_->mem_info();
  const auto allocated = static_cast<std::size_t>(s.allocated_bytes[kAggregate].current);
  const auto reserved = static_cast<std::size_t>(s.reserved_bytes[kAggregate].current);
  std::string msg = "CUDA out of memory (timeshare). Tried to allocate " + format_bytes(bytes) +
                    " on stream " + std::to_string(stream) + ". Device " +
                    std::to_string(backend_->device_index()) + " (" + backend_->name() +
                    ") has a total capacity of " + format_bytes(info.total_bytes) + " of which " +
                    format_bytes(info.free_bytes) + " is free. " +
                    std::to_string(live_.size()) + " live blocks hold " +
                    format_bytes(allocated) + "; timeshare reserves " + format_bytes(reserved) +
                    " (" + format_bytes(reserved - std::min(reserved, allocated)) +
                    " reserved but unallocated).";
  if (pool_->limit_bytes() > 0) {
    msg += " The budget/limit is " + format_bytes(pool_->limit_bytes()) +
           ": raise it (TIMESHARE_CONF=budget:...) or let activations spill "
           "(spill:host).";
  } else {
    msg += " Reduce the batch size, set a budget with spill:host to offload activations, or "
           "call timeshare.empty_cache().";
  }
  msg += " Pool: " + pool_->describe();
  return msg;
}

}  // namespace timeshare
