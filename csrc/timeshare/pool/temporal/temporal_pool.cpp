#include "timeshare/pool/temporal/temporal_pool.h"

#include "timeshare/common/log.h"
#include "timeshare/common/units.h"

#include <algorithm>
#include <iterator>
#include <stdexcept>

namespace timeshare::pool {

namespace {

std::size_t resolve_region_va(device::Backend* backend, const TemporalPoolOptions& o) {
  if (!backend->supports_virtual_memory()) {
    throw std::invalid_argument(std::string("the temporal pool needs virtual memory, which the ") +
                                backend->name() + " backend lacks (make_pool picks PyTorch's "
                                "policy there)");
  }
  const std::size_t g = backend->granule_bytes();
  const std::size_t want = o.region_va_bytes != 0 ? o.region_va_bytes : backend->mem_info().total_bytes;
  return round_up(std::max(want, g), g);
}

}  // namespace

TemporalPool::TemporalPool(device::Backend* backend, TemporalPoolOptions options)
    : backend_(backend),
      options_(options),
      region_va_bytes_(resolve_region_va(backend, options)),
      granules_(backend, backend->granule_bytes(), options.peak_window_events,
                options.slack_granules, options.slack_permille, options.trim_oldest_first,
                options.unsafe_unmap),
      reassign_(options.reassign_min_bytes, options.reassign_horizon_events,
                options.reassign_max_promises),
      events_(*backend) {
  plan_region_ = plan_region_index(options_);  // one more region, after the lifespan ones
  if (options_.forecast_window_events != 0) {
    forecast_ = std::make_unique<FreeForecast>();
    granules_.set_forecast(forecast_.get(), options_.forecast_window_events);
  }
  granules_.set_ahead_page(options_.map_ahead_page_granules);
  granules_.set_ahead_gap(options_.map_ahead_gap_events);
}

TemporalPool::~TemporalPool() {
  process_pending(/*wait=*/true);
  for (auto& a : arenas_) {
    granules_.unmap_arena(a->granule_index);
    backend_->va_release(reinterpret_cast<void*>(a->base), a->va_bytes);
  }
}

TemporalPool::Arena* TemporalPool::arena_for(device::Stream stream) {
  for (auto& a : arenas_) {
    if (a->stream == stream) return a.get();
  }
  const std::size_t n_regions = arena_regions(options_);  // + the plan and small regions
  auto a = std::make_unique<Arena>();
  a->stream = stream;
  a->index = static_cast<std::uint32_t>(arenas_.size());
  a->va_bytes = n_regions * region_va_bytes_;
  void* base = nullptr;
  if (backend_->va_reserve(a->va_bytes, &base) != device::Status::kOk) return nullptr;
  ++stats_.num_device_alloc;
  a->base = reinterpret_cast<std::uintptr_t>(base);
  a->granule_index =
      granules_.add_arena(a->base, a->va_bytes / granules_.granule_bytes(), stream);
  a->regions.resize(n_regions);
  for (std::size_t r = 0; r < n_regions; ++r) {
    a->regions[r].insert(a->base + r * region_va_bytes_, region_va_bytes_);
  }
  arenas_.push_back(std::move(a));
  return arenas_.back().get();
}

bool TemporalPool::fits_mapped(const Arena& arena, std::uintptr_t addr, std::size_t bytes) const {
  return granules_.all_mapped(arena.granule_index, addr, bytes);
}

std::size_t TemporalPool::map_ahead() const noexcept {
  if (granules_.peak_demand() < options_.map_ahead_min_granules) return 0;
  if (options_.map_ahead_permille == 0) return options_.map_ahead_granules;
  return std::min(options_.map_ahead_granules,
                  granules_.peak_demand() * options_.map_ahead_permille / 1000);
}

std::uintptr_t TemporalPool::snap(const Arena& arena, std::size_t region,
                                  const ArenaFreeRanges::Range& r, std::size_t bytes) const {
  if (options_.snap_to_granules == 0 || r.bytes == bytes) return r.addr;
  const std::size_t g = granules_.granule_bytes();
  const std::uintptr_t end = r.addr + r.bytes;
  // The region's tail is not a hole: its end is the end of the region's virtual space.
  const bool tail = end == arena.base + (region + 1) * region_va_bytes_;
  std::uintptr_t best = r.addr;
  TemporalGranules::Cost best_cost = granules_.cost_of(arena.granule_index, r.addr, bytes);
  if (best_cost.fresh == 0) return best;
  const auto consider = [&](std::uintptr_t at) {
    if (at == best || at < r.addr || at + bytes > end) return;
    const TemporalGranules::Cost c = granules_.cost_of(arena.granule_index, at, bytes);
    if (c.fresh < best_cost.fresh && c.to_map <= best_cost.to_map) {
      best = at;
      best_cost = c;
    }
  };
  if (options_.snap_to_granules & 1u) consider(round_up(r.addr, g));
  if ((options_.snap_to_granules & 2u) && !tail) consider(end - bytes);
  return best;
}

bool TemporalPool::commit(Arena& arena, std::size_t region, const ArenaFreeRanges::Range& r,
                          std::size_t bytes, std::uintptr_t* addr, bool mapped_known) {
  const std::uintptr_t at = snap(arena, region, r, bytes);
  return commit_at(arena, region, r, at, bytes, addr, mapped_known && at == r.addr);
}

bool TemporalPool::commit_at(Arena& arena, std::size_t region, const ArenaFreeRanges::Range& r,
                             std::uintptr_t at, std::size_t bytes, std::uintptr_t* addr,
                             bool mapped_known) {
  if (!granules_.acquire(arena.granule_index, at, bytes, limit_bytes_, map_ahead(),
                         mapped_known)) {
    return false;
  }
  arena.regions[region].carve_at(r, at, bytes);
  *addr = at;
  return true;
}

bool TemporalPool::place_promised(Arena& arena, std::size_t region, std::size_t bytes,
                                  std::uintptr_t* addr) {
  reassign_.advance(now_events_, [this](const TemporalPromise& p) {
    const Block* b = live_.find(p.addr);
    return b == nullptr || b->alloc_id != p.alloc_id;
  });
  TemporalPromise p;
  if (reassign_.empty() ||
      !reassign_.claim(arena.index, static_cast<std::uint32_t>(region), bytes, &p)) {
    return false;
  }
  ArenaFreeRanges::Range r;
  ArenaFreeRanges& free = arena.regions[region];
  if (!free.containing(p.addr, bytes, &r) || !fits_mapped(arena, p.addr, bytes)) return false;
  if (!granules_.acquire(arena.granule_index, p.addr, bytes, limit_bytes_)) return false;
  free.carve_at(r, p.addr, bytes);
  *addr = p.addr;
  ++promised_placements_;
  return true;
}

bool TemporalPool::place_in_empty_run(Arena& arena, std::size_t region, std::size_t bytes,
                                      std::uintptr_t* addr) {
  const std::size_t g_bytes = granules_.granule_bytes();
  ArenaFreeRanges& free = arena.regions[region];
  ArenaFreeRanges::Range best_range;
  std::uintptr_t best_at = 0;
  std::size_t best_len = 0;
  granules_.empty_runs_from_top(
      arena.granule_index, options_.empty_run_candidates, [&](std::size_t f, std::size_t l) {
        const std::size_t len = l - f + 1;
        if (best_len != 0 && len >= best_len) return;
        const std::uintptr_t lo = arena.base + f * g_bytes;
        ArenaFreeRanges::Range r;
        if (!free.containing(lo, 1, &r)) return;  // another region's granules
        const auto fits = [&](std::uintptr_t at) {
          return at + bytes <= r.addr + r.bytes && fits_mapped(arena, at, bytes);
        };
        // From where the free range starts when that is in the mapped granule just below the
        // run (the free end of a used granule), else from the run's first granule.
        std::uintptr_t at = 0;
        if (r.addr < lo && r.addr + g_bytes >= lo && fits(r.addr)) {
          at = r.addr;
        } else if (fits(std::max(lo, r.addr))) {
          at = std::max(lo, r.addr);
        } else {
          return;
        }
        best_range = r;
        best_at = at;
        best_len = len;  // every candidate is looked at: the shortest run that fits wins
      });
  return best_len != 0 && commit_at(arena, region, best_range, best_at, bytes, addr);
}

bool TemporalPool::place(Arena& arena, std::size_t region, std::size_t bytes,
                         std::uintptr_t* addr, std::size_t* placed_region) {
  *placed_region = region;
  ArenaFreeRanges::Range own;
  if (!arena.regions[region].peek_lowest_of(bytes, options_.lowest_of_fits, &own)) return false;
  if (fits_mapped(arena, own.addr, bytes)) {
    return commit(arena, region, own, bytes, addr, /*mapped_known=*/true);
  }
  // The next few larger ranges of the own region, when one lies in mapped granules.
  // A range much larger than the request is split, and its remainder becomes a hole between
  // live blocks; taking it to save a map call is worth it only when it is a close fit.
  const std::size_t max_fit_bytes = options_.mapped_fit_max_ratio == 0
                                        ? ~std::size_t{0}
                                        : bytes * options_.mapped_fit_max_ratio;
  const auto mapped = [&](const ArenaFreeRanges::Range& r) {
    return r.bytes <= max_fit_bytes && fits_mapped(arena, r.addr, bytes);
  };
  ArenaFreeRanges::Range alt;
  if (arena.regions[region].find_fit(bytes, options_.mapped_fit_candidates, mapped, &alt)) {
    return commit(arena, region, alt, bytes, addr);
  }
  // The start of the region's tail, when its granules are still mapped (blocks freed at the
  // top): a block placed there splits no hole and costs no device call. The tail is the largest
  // range, so the candidates above never reach it.
  if (options_.mapped_tail_first && arena.regions[region].last(&alt) && alt.bytes >= bytes &&
      fits_mapped(arena, alt.addr, bytes)) {
    return commit(arena, region, alt, bytes, addr);
  }
  if (options_.empty_run_candidates != 0 && granules_.cached_granules() != 0 &&
      place_in_empty_run(arena, region, bytes, addr)) {
    return true;
  }
  // Next-best placement: free space in already-mapped granules of another region, nearest
  // lifespan class first, costs no device call and no new granule. Permanent blocks borrow
  // only from the unknown region: in a timed region they would pin a granule that is
  // otherwise emptied every cycle.
  const std::size_t permanent = options_.num_timed_classes;
  if (options_.borrow_mapped) {
    const std::size_t n = arena.regions.size();
    const std::size_t up_max =
        region == permanent ? 1 : std::min(n, options_.borrow_max_distance);
    // Permanent blocks never borrow from a timed region: with one timed class (the default)
    // that region holds the scratch, whose granules are emptied every cycle.
    const std::size_t down_max =
        region == permanent ? 0 : std::min(up_max, options_.borrow_down_max_distance);
    // Hosts in visiting order: nearest first, or every longer-lived host before any
    // shorter-lived one (a guest that dies first does not pin its host's space).
    std::size_t hosts[2 * 16];
    std::size_t n_hosts = 0;
    for (std::size_t d = 1; d < n && n_hosts + 2 <= std::size(hosts); ++d) {
      if (d <= up_max && region + d < n) hosts[n_hosts++] = region + d;
      if (!options_.borrow_longer_first && d <= down_max && d <= region) {
        hosts[n_hosts++] = region - d;
      }
    }
    if (options_.borrow_longer_first) {
      for (std::size_t d = 1; d <= region && d <= down_max && n_hosts < std::size(hosts); ++d) {
        hosts[n_hosts++] = region - d;
      }
    }
    for (std::size_t h = 0; h < n_hosts; ++h) {
      const std::size_t other = hosts[h];
      ArenaFreeRanges::Range r;
      if (arena.regions[other].find_fit(bytes, options_.mapped_fit_candidates, mapped, &r)) {
        *placed_region = other;
        return commit(arena, other, r, bytes, addr);
      }
    }
  }
  if (options_.fewest_to_map && place_fewest_to_map(arena, region, bytes, own, addr)) return true;
  return commit(arena, region, own, bytes, addr);
}

bool TemporalPool::place_fewest_to_map(Arena& arena, std::size_t region, std::size_t bytes,
                                       const ArenaFreeRanges::Range& own, std::uintptr_t* addr) {
  const std::size_t index = arena.granule_index;
  std::size_t best = granules_.cost_of(index, own.addr, bytes).to_map;
  if (best == 0) return false;
  // The region's tail ends where its virtual space does: only its start is a place.
  const std::uintptr_t region_end = arena.base + (region + 1) * region_va_bytes_;
  ArenaFreeRanges::Range best_range;
  std::uintptr_t best_at = 0;
  ArenaFreeRanges::Range unused;
  arena.regions[region].find_fit(
      bytes, options_.mapped_fit_candidates,
      [&](const ArenaFreeRanges::Range& r) {
        const std::uintptr_t end = r.addr + r.bytes;
        for (const std::uintptr_t at : {r.addr, end == region_end ? r.addr : end - bytes}) {
          const std::size_t to_map = granules_.cost_of(index, at, bytes).to_map;
          if (to_map < best) {
            best = to_map;
            best_range = r;
            best_at = at;
          }
        }
        return best == 0;  // nothing to map: no better place
      },
      &unused);
  return best_at != 0 && commit_at(arena, region, best_range, best_at, bytes, addr);
}

void* TemporalPool::allocate(std::size_t bytes, device::Stream stream, const AllocHint& hint) {
  if (bytes == 0) return nullptr;
  now_events_ = hint.now_events;
  granules_.tick(now_events_);
  if (!pending_.empty()) process_pending(/*wait=*/false);
  Arena* arena = arena_for(stream);
  const std::size_t rounded = round_up(bytes, options_.align_bytes);
  std::size_t region = lifespan_region(options_, hint.predicted_lifespan);
  if (rounded <= options_.small_block_bytes && region != options_.num_timed_classes) {
    region = small_region_index(options_);
  }
  std::uintptr_t addr = 0;
  std::size_t placed_region = region;
  if (board_) refresh_plan();
  bool ok = false;
  if (arena != nullptr && plan_ && place_planned(*arena, rounded, hint.alloc_id, &addr)) {
    ok = true;
    placed_region = plan_region_;
  }
  ok = ok || (arena != nullptr &&
              ((options_.reassign && place_promised(*arena, region, rounded, &addr)) ||
               place(*arena, region, rounded, &addr, &placed_region)));
  if (granules_.has_retiring_changes()) sync_retiring();
  if (!ok) {
    // Free everything cached (waiting for pending blocks) and try once more.
    ++stats_.num_alloc_retries;
    process_pending(/*wait=*/true);
    granules_.release_all_cached();
    if (granules_.has_retiring_changes()) sync_retiring();
    if (arena == nullptr) arena = arena_for(stream);
    ok = arena != nullptr && place(*arena, region, rounded, &addr, &placed_region);
    if (granules_.has_retiring_changes()) sync_retiring();
  }
  if (!ok) {
    ++stats_.num_ooms;
    sync_reserved();
    return nullptr;
  }
  Block b;
  b.bytes = rounded;
  b.requested_bytes = bytes;
  b.arena = arena->index;
  b.region = static_cast<std::uint32_t>(placed_region);
  b.alloc_id = hint.alloc_id;
  if (forecast_) {
    b.predicted_death = forecast_->expect(now_events_, hint.predicted_lifespan, rounded);
  }
  if (options_.reassign && hint.predicted_lifespan != 0 &&
      hint.predicted_lifespan < kPermanentLifespanEvents) {
    reassign_.watch(now_events_ + hint.predicted_lifespan,
                    {addr, rounded, arena->index, b.region, hint.alloc_id, 0});
  }
  count_block(b, /*add=*/true);
  stats_.active.front().increase(1);
  stats_.active_bytes.front().increase(static_cast<std::int64_t>(rounded));
  live_.emplace(addr, std::move(b));
  sync_reserved();
  return reinterpret_cast<void*>(addr);
}

void TemporalPool::set_plan_board(std::shared_ptr<PlanBoard> board) {
  board_ = std::move(board);
  plan_version_ = 0;
  drop_plan();
}

void TemporalPool::refresh_plan() {
  const std::uint64_t v = board_->version();
  if (v == plan_version_) return;
  plan_version_ = v;
  // Plans that kept missing cost memory and calls each time: after kMaxPlanDrops of them the
  // pool places by best fit for good (the predictor keeps publishing; nothing reads it).
  if (plan_stats_.dropped >= kMaxPlanDrops) {
    plan_ = nullptr;
    return;
  }
  granules_.unpin_all();
  plan_ = board_->current();
  plan_shift_ = 0;
  plan_window_tries_ = plan_window_misses_ = 0;
  if (plan_ && (plan_->period == 0 || plan_->slots.size() != plan_->period)) plan_ = nullptr;
  if (plan_) {
    ++plan_stats_.plans;
    // What best fit needed before the first plan: a plan may not hold much more.
    if (plan_stats_.plans == 1) plan_ref_granules_ = granules_.peak_demand();
    // The old layout's cycle peak would keep its granules mapped beside the plan's.
    granules_.restart_window();
  }
}

void TemporalPool::drop_plan() {
  if (plan_) ++plan_stats_.dropped;
  plan_ = nullptr;
  granules_.unpin_all();
}

bool TemporalPool::place_planned(Arena& arena, std::size_t rounded, std::uint64_t alloc_id,
                                 std::uintptr_t* addr) {
  // Allocations inserted into or missing from an iteration move the phase by a few slots;
  // the nearest slot of the right size within this many is taken, and the shift kept.
  constexpr std::int64_t kMaxPlanShift = 4;
  // A plan is dropped when more than a quarter of its tries miss over a window of this many
  // tries (at least): its predictions are wrong, and best fit does better.
  constexpr std::uint64_t kPlanCheckTries = 64;
  // The window is a few slots of the period: a wrong plan is dropped within an eighth of it.
  constexpr std::uint64_t kPlanCheckShare = 8;
  const LayoutPlan& p = *plan_;
  if (arena.stream != p.stream || alloc_id < p.start_alloc_id) return false;
  const auto period = static_cast<std::int64_t>(p.period);
  const std::int64_t rel = static_cast<std::int64_t>(alloc_id - p.start_alloc_id) + plan_shift_;
  const auto at = [&](std::int64_t d) -> const PlanSlot& {
    std::int64_t j = (rel + d) % period;
    if (j < 0) j += period;
    return p.slots[static_cast<std::size_t>(j)];
  };
  const PlanSlot* slot = nullptr;
  if (at(0).bytes == rounded) {
    slot = &at(0);
  } else {
    for (std::int64_t d = 1; d <= kMaxPlanShift && slot == nullptr; ++d) {
      if (at(d).bytes == rounded) {
        slot = &at(d);
        plan_shift_ += d;
      } else if (at(-d).bytes == rounded) {
        slot = &at(-d);
        plan_shift_ -= d;
      }
    }
  }
  if (slot != nullptr && slot->offset == kNoPlanOffset) return false;  // not planned
  bool hit = false;
  if (slot != nullptr) {
    const std::uintptr_t base = arena.base + plan_region_ * region_va_bytes_;
    const std::uintptr_t want = base + slot->offset;
    ArenaFreeRanges& free = arena.regions[plan_region_];
    ArenaFreeRanges::Range r;
    if (slot->offset + rounded <= region_va_bytes_ && free.containing(want, rounded, &r) &&
        granules_.acquire(arena.granule_index, want, rounded, limit_bytes_)) {
      free.carve_at(r, want, rounded);
      granules_.pin_range(arena.granule_index, base, p.footprint_bytes);
      *addr = want;
      hit = true;
    }
  }
  ++plan_window_tries_;
  if (hit) {
    ++plan_stats_.hits;
  } else {
    ++plan_stats_.misses;
    ++plan_window_misses_;
  }
  // A plan of wrong lifespans can hit its slots and still spread them over far more granules
  // than best fit needed (a constant answer packs a whole iteration's bytes side by side):
  // dropped as soon as the pool holds more than 10 % (and 2 granules) above that.
  if (granules_.mapped_granules() > plan_ref_granules_ + plan_ref_granules_ / 10 + 2) {
    drop_plan();
    return hit;
  }
  if (plan_window_tries_ >= std::max<std::uint64_t>(kPlanCheckTries, p.planned / kPlanCheckShare)) {
    const bool bad = plan_window_misses_ * 4 > plan_window_tries_;
    plan_window_tries_ = plan_window_misses_ = 0;
    if (bad) drop_plan();
  }
  return hit;
}

FreeResult TemporalPool::deallocate(void* ptr, std::uint64_t now_events) {
  Block b;
  if (!live_.take(reinterpret_cast<std::uintptr_t>(ptr), &b)) return FreeResult::kUnknownPointer;
  now_events_ = now_events;
  granules_.tick(now_events_);
  if (forecast_) forecast_->forget(now_events_, b.predicted_death, b.bytes);
  count_block(b, /*add=*/false);
  if (!b.other_streams.empty()) {
    Pending p;
    p.addr = reinterpret_cast<std::uintptr_t>(ptr);
    for (device::Stream s : b.other_streams) {
      device::Event e = events_.take();
      if (e == device::kNoEvent || backend_->record(e, s) != device::Status::kOk) {
        // Without an event the only safe choice is to wait for the stream now.
        events_.give(e);
        backend_->synchronize_stream(s);
        continue;
      }
      p.events.push_back(e);
    }
    if (!p.events.empty()) {
      p.block = std::move(b);
      pending_.push_back(std::move(p));
      return FreeResult::kOk;
    }
  }
  release_range(reinterpret_cast<std::uintptr_t>(ptr), b);
  sync_reserved();
  return FreeResult::kOk;
}

void TemporalPool::sync_retiring() {
  for (const TemporalGranules::RetiringChange& c : granules_.take_retiring_changes()) {
    Arena* arena = nullptr;
    for (auto& a : arenas_) {
      if (a->granule_index == c.arena) arena = a.get();
    }
    if (arena == nullptr) continue;
    // A run of granules may cross from one lifespan region into the next (regions are a whole
    // number of granules): each region takes its own part.
    for (std::uintptr_t at = c.addr; at < c.addr + c.bytes;) {
      const std::size_t region = (at - arena->base) / region_va_bytes_;
      const std::uintptr_t region_end = arena->base + (region + 1) * region_va_bytes_;
      const std::size_t bytes = std::min<std::uintptr_t>(c.addr + c.bytes, region_end) - at;
      ArenaFreeRanges& free = arena->regions[region];
      if (!c.retiring) {
        if (!free.insert(at, bytes)) {
          log().error("temporal pool: a retired range [{:#x}, +{}) overlaps free space of region "
                      "{}; it is not placed on again",
                      at, bytes, region);
        }
      } else {
        ArenaFreeRanges::Range r;
        if (free.containing(at, bytes, &r)) free.carve_at(r, at, bytes);
      }
      at += bytes;
    }
  }
}

void TemporalPool::release_range(std::uintptr_t addr, const Block& b) {
  Arena& arena = *arenas_[b.arena];
  if (!arena.regions[b.region].insert(addr, b.bytes)) {
    log().error("temporal pool: the freed block [{:#x}, +{}) overlaps free space of region {}; "
                "its range is not placed on again",
                addr, b.bytes, b.region);
  }
  granules_.release(arena.granule_index, addr, b.bytes);
  if (granules_.has_retiring_changes()) sync_retiring();
  stats_.active.front().decrease(1);
  stats_.active_bytes.front().decrease(static_cast<std::int64_t>(b.bytes));
}

void TemporalPool::process_pending(bool wait) {
  while (!pending_.empty()) {
    Pending& p = pending_.front();
    bool done = true;
    bool failed = false;
    for (device::Event e : p.events) {
      // A wait that fails (a sticky device error) will never see the event complete: the
      // block stays pending, never reused, rather than the host spinning on it.
      if (wait && backend_->synchronize_event(e) != device::Status::kOk) failed = true;
      if (!backend_->query(e)) {
        done = false;
        break;
      }
    }
    if (!done) {
      // Pending blocks complete roughly in order; look further only when waiting.
      if (!wait || failed) break;
      continue;
    }
    for (device::Event e : p.events) events_.give(e);
    release_range(p.addr, p.block);
    pending_.pop_front();
  }
  sync_reserved();
}

void TemporalPool::record_stream(void* ptr, device::Stream stream) {
  Block* found = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
  if (found == nullptr) return;
  Block& b = *found;
  if (stream == arenas_[b.arena]->stream) return;
  if (std::find(b.other_streams.begin(), b.other_streams.end(), stream) == b.other_streams.end()) {
    b.other_streams.push_back(stream);
  }
}

void TemporalPool::empty_cache() {
  process_pending(/*wait=*/false);
  granules_.release_all_cached();
  if (granules_.has_retiring_changes()) sync_retiring();
  sync_reserved();
}

std::size_t TemporalPool::block_size(void* ptr) const {
  const Block* b = live_.find(reinterpret_cast<std::uintptr_t>(ptr));
  return b == nullptr ? 0 : b->bytes;
}

void TemporalPool::set_limit_bytes(std::size_t bytes) noexcept {
  limit_bytes_ = bytes;
}

}  // namespace timeshare::pool
