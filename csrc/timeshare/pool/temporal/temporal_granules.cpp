#include "timeshare/pool/temporal/temporal_granules.h"

#include <algorithm>
#include <bit>

#include "timeshare/pool/temporal/granule_unmap.h"

namespace timeshare::pool {

TemporalGranules::TemporalGranules(device::Backend* backend, std::size_t granule_bytes,
                                   std::uint64_t peak_window_events, std::size_t slack_granules,
                                   std::size_t slack_permille, bool trim_oldest_first,
                                   bool unsafe_unmap)
    : backend_(backend),
      granule_bytes_(granule_bytes),
      peak_window_events_(peak_window_events),
      slack_granules_(slack_granules),
      slack_permille_(slack_permille),
      trim_oldest_first_(trim_oldest_first),
      unsafe_unmap_(unsafe_unmap),
      release_(backend, granule_bytes) {
  if (std::has_single_bit(granule_bytes_)) {
    granule_shift_ = static_cast<unsigned>(std::countr_zero(granule_bytes_));
  }
}

std::size_t TemporalGranules::add_arena(std::uintptr_t base, std::size_t granules,
                                        device::Stream stream) {
  ArenaGranules ar;
  ar.base = base;
  ar.offset = cache_.capacity();
  ar.granules = granules;
  ar.occupancy = ZeroedArray<std::uint32_t>(granules);
  ar.mapped = GranuleBits(granules);
  ar.retiring = GranuleBits(granules);
  release_.add_arena(base, ar.offset, granules, stream);
  cache_.resize(ar.offset + granules);
  pinned_free_.resize(ar.offset + granules);
  if (trim_oldest_first_) cache_stamp_.resize(ar.offset + granules, 0);
  arenas_.push_back(std::move(ar));
  return arenas_.size() - 1;
}

std::size_t TemporalGranules::mark() const noexcept {
  const std::size_t peak = std::max(window_peak_, prev_window_peak_);
  return peak + slack_granules_ + peak * slack_permille_ / 1000;
}

void TemporalGranules::tick(std::uint64_t now_events) {
  now_events_ = now_events;
  if (now_events - window_start_events_ < peak_window_events_) return;
  prev_window_peak_ = window_peak_;
  window_peak_ = needed_ + pinned_free_.count();
  window_start_events_ = now_events;
}

bool TemporalGranules::map_run(ArenaGranules& ar, std::size_t first, std::size_t n) {
  void* addr = reinterpret_cast<void*>(ar.base + first * granule_bytes_);
  if (backend_->map(addr, n * granule_bytes_) != device::Status::kOk) return false;
  ++map_calls_;
  granules_mapped_total_ += n;
  ar.mapped.set_range(first, first + n);
  ar.retiring.clear_range(first, first + n);
  mapped_ += n;
  return true;
}

void TemporalGranules::mark_unmapped(ArenaGranules& ar, std::size_t first,
                                     std::size_t n) noexcept {
  ar.mapped.clear_range(first, first + n);
  ar.retiring.clear_range(first, first + n);
}

std::size_t TemporalGranules::unmap_run(ArenaGranules& ar, std::size_t first, std::size_t n,
                                        std::uint8_t* gone) {
  return unmap_granules(*backend_, ar.base, granule_bytes_, first, n, gone, &unmap_calls_);
}

void TemporalGranules::cached_now(std::size_t k) {
  if (!trim_oldest_first_) return;
  cache_stamp_[k] = ++next_stamp_;
  lru_.emplace_back(k, next_stamp_);
  if (lru_.size() > 2 * cache_.count() + 1024) {  // drop stale entries
    std::deque<std::pair<std::size_t, std::uint64_t>> live;
    for (const auto& e : lru_) {
      if (cache_.test(e.first) && cache_stamp_[e.first] == e.second) live.push_back(e);
    }
    lru_.swap(live);
  }
}

void TemporalGranules::cache_keys(std::size_t first, std::size_t last) {
  if (first == last) {
    cache_.set(first);
  } else {
    cache_.set_range(first, last);
  }
  for (std::size_t k = first; trim_oldest_first_ && k <= last; ++k) cached_now(k);
}

bool TemporalGranules::pick_oldest(std::size_t* key) {
  while (!lru_.empty()) {
    const auto [k, stamp] = lru_.front();
    lru_.pop_front();
    if (cache_.test(k) && cache_stamp_[k] == stamp) {
      *key = k;
      return true;
    }
  }
  return false;
}

// ---- the release side --------------------------------------------------------------------------

void TemporalGranules::quarantine(std::size_t a, std::size_t first, std::size_t last) {
  ArenaGranules& ar = arenas_[a];
  if (ar.pin_lo < ar.pin_hi && first < ar.pin_hi && last >= ar.pin_lo) {
    // The pinned part stays mapped for the plan; the rest is quarantined as usual.
    const std::size_t lo = std::max(first, ar.pin_lo);
    const std::size_t hi = std::min(last, ar.pin_hi - 1);
    if (lo == hi) {
      pinned_free_.set(key(a, lo));
    } else {
      pinned_free_.set_range(key(a, lo), key(a, hi));
    }
    if (first < lo) quarantine(a, first, lo - 1);
    if (hi < last) quarantine(a, hi + 1, last);
    return;
  }
  if (unsafe_unmap_) {  // the detector test: trimmable at once, as before the fix
    cache_keys(key(a, first), key(a, last));
    return;
  }
  release_.quarantine(a, first, last);
}

void TemporalGranules::act_on(const GranuleRelease::Completed& done) {
  for (const auto& [first, last] : done.trimmable) cache_keys(first, last);
  for (const GranuleRelease::Unmapped& u : done.unmapped) {
    mark_unmapped(arenas_[u.arena], u.first, u.n);
  }
}

void TemporalGranules::wait_for_quarantine(std::size_t granules) {
  const std::size_t want = cache_.count() + granules;
  advance_fences(/*record=*/true);
  for (std::size_t a = 0; a < arenas_.size() && cache_.count() < want && !quarantined().empty();
       ++a) {
    act_on(release_.wait_for_arena(a));
  }
}

bool TemporalGranules::alias_run(std::size_t a, std::size_t g, std::size_t max_n, Alias* out) {
  if (!release_.alias_run(a, g, max_n, out)) return false;
  ArenaGranules& ar = arenas_[a];
  ar.mapped.clear_range(out->donor, out->donor + out->n);
  ar.retiring.set_range(out->donor, out->donor + out->n);
  ar.mapped.set_range(g, g + out->n);
  ar.retiring.clear_range(g, g + out->n);
  return true;
}

void TemporalGranules::undo_alias(std::size_t a, const Alias& al) {
  ArenaGranules& ar = arenas_[a];
  const std::vector<std::uint8_t> gone = release_.undo_alias(a, al);
  for (std::size_t i = 0; i < al.n; ++i) {
    const std::size_t g = al.g + i;
    const std::size_t donor = al.donor + i;
    if (gone[i]) {  // the donor holds its memory alone again: quarantined as before
      mark_unmapped(ar, g, 1);
      ar.mapped.set(donor);
      ar.retiring.clear(donor);
      quarantine(a, donor, donor);
    } else {  // the device kept the alias: it holds the memory (quarantined like the donor was)
      quarantine(a, g, g);
    }
  }
}

// ---- the mapped granules -----------------------------------------------------------------------

bool TemporalGranules::trim_to(std::size_t target, std::size_t incoming) {
  while (mapped_ + incoming > target && !cache_.empty()) {
    std::size_t last = 0;
    if (!trim_oldest_first_ || !pick_oldest(&last)) last = cache_.find_last();
    std::size_t a = arenas_.size() - 1;
    while (arenas_[a].offset > last) --a;
    ArenaGranules& ar = arenas_[a];
    // Extend the run downwards over contiguous cached granules of the same arena.
    const std::size_t over = mapped_ + incoming - target;
    std::size_t first = last;
    while (!trim_oldest_first_ && last - first + 1 < over && first > ar.offset &&
           cache_.test(first - 1)) {
      --first;
    }
    const std::size_t g_first = first - ar.offset;
    const std::size_t n = last - first + 1;
    std::vector<std::uint8_t> gone(n);
    const std::size_t done = unmap_run(ar, g_first, n, gone.data());
    if (done == n) {
      mark_unmapped(ar, g_first, n);
      if (n == 1) {
        cache_.clear(first);
      } else {
        cache_.clear_range(first, last);
      }
    } else {
      for (std::size_t i = 0; i < n; ++i) {
        if (!gone[i]) continue;  // still mapped (and cached): a later trim retries it
        mark_unmapped(ar, g_first + i, 1);
        cache_.clear(first + i);
      }
    }
    granules_unmapped_total_ += done;
    mapped_ -= done;
    if (done != n) return false;  // the device refuses: stop here
  }
  return mapped_ + incoming <= target;
}

TemporalGranules::Span TemporalGranules::span_of(const ArenaGranules& ar, std::uintptr_t addr,
                                                 std::size_t bytes) const noexcept {
  Span sp;
  const std::size_t begin = addr - ar.base;
  const std::size_t end = begin + bytes;
  sp.first = granule_of(begin);
  sp.last = granule_of(end - 1);
  sp.full_begin = granule_of(begin + granule_bytes_ - 1);  // first granule fully covered
  sp.full_end = std::max(granule_of(end), sp.full_begin);  // one past the last fully covered
  return sp;
}

// ---- acquire -----------------------------------------------------------------------------------

bool TemporalGranules::acquire(std::size_t a, std::uintptr_t addr, std::size_t bytes,
                               std::size_t limit_bytes, std::size_t ahead_granules,
                               bool mapped_known) {
  ArenaGranules& ar = arenas_[a];
  const Span sp = span_of(ar, addr, bytes);
  // A small block in a used granule (one that holds a block covers it in part: blocks never
  // overlap, so it is not a full one).
  if (sp.first == sp.last && ar.occupancy[sp.first] != 0) {
    ++ar.occupancy[sp.first];
    return true;
  }
  const Request r{a, sp, block_cost(ar, sp, mapped_known), limit_bytes, ahead_granules};
  if (!fits_limit(r)) return false;
  if (r.cost.to_map == 0) {  // no device call, nothing can fail
    claim(r);
    count_in(r);
    return true;
  }
  if (r.cost.fresh != r.cost.to_map) claim(r);
  const std::size_t alias_budget = make_room(r);
  wait_out_retiring(r);
  Mapping m;
  if (!map_missing(r, alias_budget, &m)) {
    undo_mapping(r, m);
    return false;
  }
  count_in(r);
  // What was mapped ahead counts in the peak, so the mark keeps it for the blocks to come.
  if (m.ahead_n != 0) window_peak_ = std::max(window_peak_, mapped_);
  return true;
}

TemporalGranules::Cost TemporalGranules::block_cost(const ArenaGranules& ar, const Span& sp,
                                                    bool mapped_known) const {
  // Granules fully covered by the block belong to it alone (blocks never overlap): they are
  // free before and after, and are handled as a range. Only the (at most two) partly covered
  // boundary granules are counted one by one.
  const std::size_t n_full = sp.full_end - sp.full_begin;
  Cost c;
  c.fresh = n_full;
  c.to_map = mapped_known ? 0 : ar.mapped.count_clear(sp.full_begin, sp.full_end);
  sp.for_each_partial([&](std::size_t g) {
    if (ar.needed(g)) return;
    ++c.fresh;
    if (!mapped_known && !ar.mapped.test(g)) ++c.to_map;
  });
  return c;
}

bool TemporalGranules::fits_limit(const Request& r) const {
  if (r.limit_bytes == 0 || (mapped_ + r.cost.to_map) * granule_bytes_ <= r.limit_bytes) {
    return true;
  }
  // Cached granules outside this block may go to make room, but the limit decides.
  // (Pinned free granules are not given back here: the retry at the limit unpins them.)
  const std::size_t cached_inside = r.cost.fresh - r.cost.to_map;
  const std::size_t trimmable = cache_.count() + quarantined().count();
  return (mapped_ - std::min(mapped_, trimmable - std::min(trimmable, cached_inside)) +
          r.cost.to_map) * granule_bytes_ <= r.limit_bytes;
}

void TemporalGranules::claim(const Request& r) {
  // Quarantined granules too: the same arena (stream) reuses them, which stream order makes safe.
  ArenaGranules& ar = arenas_[r.a];
  const Span& sp = r.sp;
  sp.for_each_partial([&](std::size_t g) {
    if (!ar.needed(g) && ar.mapped.test(g)) {
      cache_.clear(key(r.a, g));
      release_.forget(key(r.a, g));
      pinned_free_.clear(key(r.a, g));
    }
  });
  if (sp.full_end != sp.full_begin) {
    if (!cache_.empty()) cache_.clear_range(key(r.a, sp.full_begin), key(r.a, sp.full_end - 1));
    if (!quarantined().empty()) {
      release_.forget(key(r.a, sp.full_begin), key(r.a, sp.full_end - 1));
    }
    if (!pinned_free_.empty()) {
      pinned_free_.clear_range(key(r.a, sp.full_begin), key(r.a, sp.full_end - 1));
    }
  }
}

void TemporalGranules::count_in(const Request& r) {
  ArenaGranules& ar = arenas_[r.a];
  r.sp.for_each_partial([&](std::size_t g) { ++ar.occupancy[g]; });
  if (needed_ + r.cost.fresh > peak_demand()) {
    // A rise of the peak more than ahead_gap_ ticks after the last one starts a new climb.
    if (!climbing()) climb_base_ = peak_demand();
    last_growth_events_ = now_events_;
    grown_ = true;
  }
  needed_ += r.cost.fresh;
  window_peak_ = std::max(window_peak_, needed_ + pinned_free_.count());
}

std::size_t TemporalGranules::make_room(const Request& r) {
  const std::size_t to_map = r.cost.to_map;
  std::size_t target = std::max(mark(), needed_ + r.cost.fresh);
  if (r.limit_bytes != 0) target = std::min(target, r.limit_bytes / granule_bytes_);
  if (mapped_ + to_map > target && cache_.count() < mapped_ + to_map - target &&
      !quarantined().empty()) {
    advance_fences(/*record=*/true);  // quarantined granules whose streams are done may go
  }
  trim_to(target, to_map);
  // Still above the target: the physical memory of this arena's quarantined granules can move
  // here at once (same stream), their old addresses retiring until their fences complete.
  const std::size_t alias_budget = release_.can_alias(r.a) && mapped_ + to_map > target
                                        ? std::min(to_map, mapped_ + to_map - target)
                                        : 0;
  if (r.limit_bytes != 0 &&
      (mapped_ + to_map - alias_budget) * granule_bytes_ > r.limit_bytes) {
    // At the limit, memory must go back now: wait for the quarantined granules' streams.
    wait_for_quarantine(mapped_ + to_map - alias_budget - r.limit_bytes / granule_bytes_);
    trim_to(target, to_map);
  }
  return alias_budget;
}

void TemporalGranules::wait_out_retiring(const Request& r) {
  // An address still retiring cannot be mapped over: unmapped once its stream has passed it
  // (a fence that completed), else after a wait.
  const ArenaGranules& ar = arenas_[r.a];
  const auto retiring_inside = [&] { return ar.retiring.any(r.sp.first, r.sp.last + 1); };
  if (release_.has_retiring(r.a) && retiring_inside()) {
    advance_fences(/*record=*/true);
    if (retiring_inside()) drain_arena(r.a);
  }
}

bool TemporalGranules::map_missing(const Request& r, std::size_t alias_budget, Mapping* m) {
  ArenaGranules& ar = arenas_[r.a];
  const Span& sp = r.sp;
  const std::size_t end = sp.last + 1;
  for (std::size_t g = ar.mapped.find_clear(sp.first, end); g < end;
       g = ar.mapped.find_clear(g, end)) {
    // The run of granules not mapped to their own memory that starts at g.
    std::size_t n = ar.mapped.find_set(g, end) - g;
    while (alias_budget != 0 && n != 0) {
      Alias al;
      if (!alias_run(r.a, g, std::min(n, alias_budget), &al)) break;
      m->aliases.push_back(al);
      alias_budget -= al.n;
      g += al.n;
      n -= al.n;
    }
    if (n == 0) continue;
    if (r.limit_bytes != 0 && (mapped_ + n) * granule_bytes_ > r.limit_bytes) {
      // Fewer aliases than hoped: the rest must fit under the limit by waiting.
      wait_for_quarantine(mapped_ + n - r.limit_bytes / granule_bytes_);
      trim_to(r.limit_bytes / granule_bytes_, n);
    }
    std::size_t ahead = g + n - 1 == sp.last ? ahead_of(r, n) : 0;
    bool ok = map_run(ar, g, n + ahead);
    // The device may have room for the block but not for what was to come after it.
    if (!ok && ahead != 0) {
      ahead = 0;
      ok = map_run(ar, g, n);
    }
    if (!ok) return false;
    m->runs.emplace_back(g, n + ahead);
    if (ahead != 0) {
      // Never used: trimmable at once (no work of any stream can touch them).
      cache_.set_range(key(r.a, sp.last + 1), key(r.a, sp.last + ahead));
      for (std::size_t h = sp.last + 1; trim_oldest_first_ && h <= sp.last + ahead; ++h) {
        cached_now(key(r.a, h));
      }
      m->ahead_first = sp.last + 1;
      m->ahead_n = ahead;
    }
    g += n;
  }
  return true;
}

std::size_t TemporalGranules::ahead_of(const Request& r, std::size_t n) const {
  // Growth: at a new peak of demand, the run that ends the block maps up to
  // `ahead_granules` more after it, for the blocks that follow (one call instead of several).
  if (r.ahead_granules == 0 || needed_ + r.cost.fresh <= peak_demand()) return 0;
  const ArenaGranules& ar = arenas_[r.a];
  std::size_t want = r.ahead_granules;
  if (ahead_gap_ != 0) {
    // As much as the current climb has risen, this block included; nothing for its first step.
    // The peak of demand can fall below the climb's base (a window rolled over, a plan was
    // taken up): the rise counts from the lower of the two.
    if (!climbing()) return 0;
    want = std::min(want, needed_ + r.cost.fresh - std::min(climb_base_, peak_demand()));
  }
  if (forecast_ != nullptr) {
    // What the blocks predicted to die in the window will give back serves the blocks
    // that follow instead: only the rest is mapped ahead.
    const std::size_t back = forecast_->due(now_events_, forecast_window_) / granule_bytes_;
    want -= std::min(back, want);
  }
  if (ahead_page_ != 0) {
    const std::size_t after = mapped_ + n;
    want = std::min(want, (ahead_page_ - after % ahead_page_) % ahead_page_);
  }
  // As many unmapped granules after the block as wanted, the arena has and the limit allows.
  if (r.limit_bytes != 0) {
    const std::size_t cap = r.limit_bytes / granule_bytes_;  // granules under the limit
    want = std::min(want, cap > mapped_ + n ? cap - (mapped_ + n) : 0);
  }
  const std::size_t first = r.sp.last + 1;
  if (want == 0 || first >= ar.granules) return 0;
  const std::size_t end = std::min(ar.granules, first + want);
  return GranuleBits::find_set_either(ar.mapped, ar.retiring, first, end) - first;
}

void TemporalGranules::undo_mapping(const Request& r, const Mapping& m) {
  ArenaGranules& ar = arenas_[r.a];
  if (m.ahead_n != 0) {
    cache_.clear_range(key(r.a, m.ahead_first), key(r.a, m.ahead_first + m.ahead_n - 1));
  }
  for (auto [first, n] : m.runs) {
    std::vector<std::uint8_t> gone(n);
    const std::size_t done = unmap_run(ar, first, n, gone.data());
    granules_unmapped_total_ += done;
    mapped_ -= done;
    for (std::size_t i = 0; i < n; ++i) {
      if (gone[i]) {
        mark_unmapped(ar, first + i, 1);
      } else {
        cache_.set(key(r.a, first + i));  // kept by the device; never used: trimmable
        cached_now(key(r.a, first + i));
      }
    }
  }
  for (const Alias& al : m.aliases) undo_alias(r.a, al);
  // The claimed granules go back to the cache; quarantined again, since some may have been.
  for (std::size_t h = r.sp.first; h <= r.sp.last; ++h) {
    if (!ar.needed(h) && ar.mapped.test(h) && !cache_.test(key(r.a, h)) &&
        !quarantined().test(key(r.a, h))) {
      quarantine(r.a, h, h);
    }
  }
}

// ---- release, pins, teardown -------------------------------------------------------------------

void TemporalGranules::release(std::size_t a, std::uintptr_t addr, std::size_t bytes) {
  ArenaGranules& ar = arenas_[a];
  const Span sp = span_of(ar, addr, bytes);
  bool emptied = false;
  sp.for_each_partial([&](std::size_t g) {
    if (--ar.occupancy[g] != 0) return;
    --needed_;
    quarantine(a, g, g);
    emptied = true;
  });
  const std::size_t n_full = sp.full_end - sp.full_begin;
  if (n_full != 0) {
    needed_ -= n_full;
    quarantine(a, sp.full_begin, sp.full_end - 1);
    emptied = true;
  }
  if (!emptied) return;
  if (!unsafe_unmap_) act_on(release_.fence_after_free(a, now_events_));
  const std::size_t m = mark();
  if (mapped_ > m && cache_.count() < mapped_ - m && !quarantined().empty()) {
    advance_fences(/*record=*/true);
  }
  trim_to(m, 0);
}

void TemporalGranules::pin_range(std::size_t a, std::uintptr_t addr, std::size_t bytes) {
  ArenaGranules& ar = arenas_[a];
  const std::size_t lo = granule_of(addr - ar.base);
  const std::size_t hi = bytes == 0 ? lo : granule_of(addr - ar.base + bytes - 1) + 1;
  if (lo == ar.pin_lo && hi == ar.pin_hi) return;
  if (ar.pin_lo < ar.pin_hi) unpin_all();
  ar.pin_lo = lo;
  ar.pin_hi = std::min(hi, ar.granules);
  // Free granules already mapped there are kept from now on (the same arena reuses them).
  for (std::size_t g = ar.pin_lo; g < ar.pin_hi; ++g) {
    const std::size_t k = key(a, g);
    if (!ar.mapped.test(g)) continue;
    if (cache_.test(k) || quarantined().test(k)) {  // mapped, no block in it
      cache_.clear(k);
      release_.forget(k);
      pinned_free_.set(k);
    }
  }
  window_peak_ = std::max(window_peak_, needed_ + pinned_free_.count());
}

void TemporalGranules::unpin_all() {
  for (std::size_t a = 0; a < arenas_.size(); ++a) {
    ArenaGranules& ar = arenas_[a];
    if (ar.pin_lo >= ar.pin_hi) continue;
    const std::size_t lo = ar.pin_lo;
    const std::size_t hi = ar.pin_hi;
    ar.pin_lo = ar.pin_hi = 0;
    for (std::size_t g = lo; g < hi; ++g) {
      const std::size_t k = key(a, g);
      if (!pinned_free_.test(k)) continue;
      pinned_free_.clear(k);
      quarantine(a, g, g);
    }
  }
}

void TemporalGranules::release_all_cached() {
  unpin_all();
  if (!quarantined().empty()) wait_for_quarantine(quarantined().count());
  trim_to(0, 0);
}

void TemporalGranules::unmap_arena(std::size_t a) {
  ArenaGranules& ar = arenas_[a];
  ar.pin_lo = ar.pin_hi = 0;
  // Teardown: the stream's work must be done first (this unmaps retiring addresses too).
  if (release_.in_flight(a)) drain_arena(a);
  const std::size_t end = ar.granules;
  for (std::size_t g = GranuleBits::find_set_either(ar.mapped, ar.retiring, 0, end); g < end;
       g = GranuleBits::find_set_either(ar.mapped, ar.retiring, g, end)) {
    // The run of mapped or retiring granules that starts at g.
    std::size_t n = 1;
    while (g + n < end && (ar.mapped.test(g + n) || ar.retiring.test(g + n))) ++n;
    std::vector<std::uint8_t> gone(n);
    granules_unmapped_total_ += unmap_run(ar, g, n, gone.data());
    for (std::size_t h = g; h < g + n; ++h) {
      if (!gone[h - g]) continue;  // kept by the device: still counted as mapped
      if (ar.mapped.test(h)) --mapped_;
      mark_unmapped(ar, h, 1);
      cache_.clear(key(a, h));
      release_.forget(key(a, h));
      pinned_free_.clear(key(a, h));
    }
    g += n;
  }
}

}  // namespace timeshare::pool
