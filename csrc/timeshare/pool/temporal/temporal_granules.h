// TemporalGranules — which 2 MiB granules of the arenas are physically mapped, which of them
// hold blocks, and the hysteresis that decides when free ones go back to the device.
//
// Terms:
//   needed granule — holds at least one live or pending block; always mapped.
//   cached granule — mapped but holds no block; kept to avoid a map call when it is reused.
// The reserved bytes of the pool are the mapped granules. Mapping and unmapping are the only
// device calls for memory; all are counted here (with those GranuleRelease makes).
//
// Hysteresis: the mark is the highest count of needed granules seen in the current and the
// previous window of ticks (the observed cycle peak) plus a slack (granules, and thousandths of the peak). Cached granules are
// unmapped, highest address first, only while the mapped count is above the mark, and
// `acquire` unmaps before it maps, so the mapped count never passes the mark by more than the
// granules a request itself needs. On a periodic trace whose placement repeats, the steady
// state makes no device calls at all.
//
// Nothing is unmapped under running kernels: a granule that a free empties is quarantined
// until its stream has passed the free, and an arena may take the memory of its own quarantined
// granules at once through an alias (GranuleRelease, granule_release.h, owned here: quarantine,
// fences, aliases, retiring addresses). A failed unmap leaves the granules it could not unmap
// mapped here as they are in the device (unmap_granules): never placed on as unmapped.
// `unsafe_unmap` (a test of the sim's fault detector only) restores immediate unmapping.
#pragma once

#include <algorithm>
#include <bit>
#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <utility>
#include <vector>

#include "timeshare/device/backend.h"
#include "timeshare/pool/temporal/free_forecast.h"
#include "timeshare/pool/temporal/granule_bits.h"
#include "timeshare/pool/temporal/granule_release.h"
#include "timeshare/pool/temporal/temporal_bit_index.h"
#include "timeshare/pool/zeroed_array.h"

namespace timeshare::pool {

class TemporalGranules {
 public:
  TemporalGranules(device::Backend* backend, std::size_t granule_bytes,
                   std::uint64_t peak_window_events, std::size_t slack_granules,
                   std::size_t slack_permille = 0, bool trim_oldest_first = false,
                   bool unsafe_unmap = false);
  TemporalGranules(const TemporalGranules&) = delete;
  TemporalGranules& operator=(const TemporalGranules&) = delete;

  // Registers the virtual range [base, base + granules * granule_bytes) of the arena of
  // `stream`; returns its index for the calls below.
  std::size_t add_arena(std::uintptr_t base, std::size_t granules,
                        device::Stream stream = device::kDefaultStream);

  // Makes [addr, addr+bytes) of arena `a` usable: marks its granules needed and maps those that
  // are not mapped, unmapping cached granules first to stay under the mark. With
  // `limit_bytes` > 0 the mapped total may not pass it. Returns false, with nothing changed,
  // when the limit or the device refuses.
  // Growth: with `ahead_granules` > 0, when the block raises the peak of demand and its last
  // granule is mapped fresh, up to that many unmapped granules right after it are mapped in the
  // same call and counted in the peak (they stay mapped for the blocks that follow: a frontier
  // that grows block by block makes one call per `ahead_granules`, as expandable segments do
  // per 20 MiB page).
  // `mapped_known`: the caller has just seen every granule under the block mapped
  // (all_mapped), and acquire does not count them again.
  bool acquire(std::size_t a, std::uintptr_t addr, std::size_t bytes, std::size_t limit_bytes,
               std::size_t ahead_granules = 0, bool mapped_known = false);

  // The block at [addr, addr+bytes) of arena `a` is gone: granules left without a block become
  // cached; then cached granules above the mark are unmapped.
  void release(std::size_t a, std::uintptr_t addr, std::size_t bytes);

  // Moves the hysteresis window forward to `now_events`.
  void tick(std::uint64_t now_events);

  // Growth asks `forecast` (owned by the caller) for the bytes predicted to be freed in the next
  // `window_events` ticks, and maps that much less ahead (nullptr: map all `ahead_granules`).
  void set_forecast(FreeForecast* forecast, std::uint64_t window_events) noexcept {
    forecast_ = forecast;
    forecast_window_ = window_events;
  }

  // Growth maps ahead only up to the next multiple of `granules` of the mapped total (0: all
  // `ahead_granules`).
  void set_ahead_page(std::size_t granules) noexcept { ahead_page_ = granules; }
  // Growth maps ahead at most what the peak of demand has risen in its current climb: rises at
  // most `events` ticks apart (0: no such bound). A peak raised again after a quiet spell
  // maps only what its block needs, and a climb maps ahead as fast as it has climbed.
  void set_ahead_gap(std::uint64_t events) noexcept { ahead_gap_ = events; }

  // Unmaps every cached granule (empty_cache, or before a retry at the limit), waiting for the
  // fences of quarantined ones.
  void release_all_cached();

  // Unmaps every mapped granule of arena `a` (pool teardown; the arena must hold no block),
  // after its stream has finished.
  void unmap_arena(std::size_t a);

  // Predicted demand (a layout plan, pool/layout_plan.h): granules of [addr, addr+bytes) of
  // arena `a` that its blocks leave empty stay mapped (not trimmed, not unmapped) until
  // unpin_all(), since the plan will place blocks there again within an iteration. The mark's
  // peak counts them like needed granules (demand = needed + free pinned). One pinned range per arena; a new one
  // replaces the old. Pinned free granules are reused only by their own arena (stream).
  void pin_range(std::size_t a, std::uintptr_t addr, std::size_t bytes);
  // Drops every pin: free pinned granules are quarantined like any emptied granule.
  void unpin_all();
  // The observed peak of demand (needed + free pinned granules) over the current and the
  // previous window.
  std::size_t peak_demand() const noexcept { return std::max(window_peak_, prev_window_peak_); }
  // Forgets the observed peak (a new layout makes the old cycle's peak a poor guide): the mark
  // restarts from the demand now.
  void restart_window() noexcept {
    window_peak_ = prev_window_peak_ = needed_ + pinned_free_.count();
    window_start_events_ = now_events_;
  }
  std::size_t pinned_free_granules() const noexcept { return pinned_free_.count(); }

  std::size_t mapped_granules() const noexcept { return mapped_; }
  std::size_t needed_granules() const noexcept { return needed_; }
  // Mapped granules without a block: trimmable ones and quarantined ones.
  std::size_t cached_granules() const noexcept {
    return cache_.count() + quarantined().count() + pinned_free_.count();
  }
  std::size_t quarantined_granules() const noexcept { return quarantined().count(); }
  // Host waits made to give memory back (synchronize on a fence or a stream), and fences.
  std::uint64_t waits() const noexcept { return release_.waits(); }
  std::uint64_t fences_recorded() const noexcept { return release_.fences_recorded(); }
  // Runs of granules whose memory moved within an arena by map_alias instead of waiting.
  std::uint64_t aliases() const noexcept { return release_.aliases(); }
  // Address ranges that started or stopped retiring (GranuleRelease::take_retiring_changes).
  using RetiringChange = GranuleRelease::RetiringChange;
  bool has_retiring_changes() const noexcept { return release_.has_retiring_changes(); }
  std::vector<RetiringChange> take_retiring_changes() { return release_.take_retiring_changes(); }
  // Map calls (an alias is one) and unmap calls.
  std::uint64_t map_calls() const noexcept { return map_calls_ + release_.aliases(); }
  std::uint64_t unmap_calls() const noexcept { return unmap_calls_ + release_.unmap_calls(); }
  // Granules mapped / unmapped over the pool's life (a call may cover a run of granules; the
  // CUDA backend makes one driver call per granule).
  std::uint64_t granules_mapped_total() const noexcept {
    return granules_mapped_total_ + release_.granules_aliased();
  }
  std::uint64_t granules_unmapped_total() const noexcept { return granules_unmapped_total_; }
  std::size_t granule_bytes() const noexcept { return granule_bytes_; }
  // Mapped to memory of its own (not retiring).
  bool is_mapped(std::size_t a, std::size_t granule) const {
    return arenas_[a].mapped.test(granule);
  }
  // Calls fn(first, last) on runs [first, last] of arena `a`'s mapped granules that hold no
  // block (trimmable, quarantined or pinned), highest first, at most `max_runs` of them.
  // Granule indices are the arena's.
  template <class Fn>
  void empty_runs_from_top(std::size_t a, std::size_t max_runs, Fn&& fn) const {
    const ArenaGranules& ar = arenas_[a];
    const TemporalBitIndex& quarantined_keys = quarantined();
    // The lowest key of the run of empty keys that ends at k (not below the arena), a word of
    // keys at a time.
    constexpr std::size_t kBits = TemporalBitIndex::kBits;
    const auto run_start = [&](std::size_t k) {
      std::size_t w = k / kBits;
      std::uint64_t below = TemporalBitIndex::mask_upto(k % kBits);
      for (;;) {
        const std::uint64_t full =
            ~(cache_.word(w) | quarantined_keys.word(w) | pinned_free_.word(w)) & below;
        if (full != 0) {
          const std::size_t first =
              w * kBits + kBits - static_cast<std::size_t>(std::countl_zero(full));
          return std::max(first, ar.offset);
        }
        if (w == 0 || w * kBits <= ar.offset) return ar.offset;
        --w;
        below = ~std::uint64_t{0};
      }
    };
    const auto prev = [&](std::size_t k) {  // highest empty key below k (npos: none)
      const std::size_t p =
          TemporalBitIndex::find_prev_union(cache_, quarantined_keys, pinned_free_, k);
      return p != TemporalBitIndex::npos && p >= ar.offset ? p : TemporalBitIndex::npos;
    };
    std::size_t k = prev(ar.offset + ar.granules);
    for (std::size_t runs = 0; runs < max_runs && k != TemporalBitIndex::npos; ++runs) {
      const std::size_t first = run_start(k);
      fn(first - ar.offset, k - ar.offset);
      k = first > ar.offset ? prev(first) : TemporalBitIndex::npos;
    }
  }

  // Whether every granule under [addr, addr+bytes) of arena `a` is mapped.
  bool all_mapped(std::size_t a, std::uintptr_t addr, std::size_t bytes) const {
    const ArenaGranules& ar = arenas_[a];
    const std::size_t g0 = granule_of(addr - ar.base);
    const std::size_t g1 = granule_of(addr + bytes - 1 - ar.base);
    if (g0 == g1) return ar.mapped.test(g0);
    return ar.mapped.all(g0, g1 + 1);
  }
  // What placing a block at [addr, addr+bytes) of arena `a` would cost in granules: `fresh`,
  // granules it would add to the needed ones (holding no block yet), and `to_map`, those of them
  // not mapped. The inside of a free range holds no block, so only the two boundary granules
  // are looked at one by one (the inside is a count of mapped bits).
  struct Cost {
    std::size_t fresh = 0;
    std::size_t to_map = 0;
  };
  Cost cost_of(std::size_t a, std::uintptr_t addr, std::size_t bytes) const {
    const ArenaGranules& ar = arenas_[a];
    const std::size_t g0 = granule_of(addr - ar.base);
    const std::size_t g1 = granule_of(addr + bytes - 1 - ar.base);
    Cost c;
    const auto end = [&](std::size_t g) {
      if (ar.needed(g)) return;
      ++c.fresh;
      c.to_map += !ar.mapped.test(g);
    };
    end(g0);
    if (g1 != g0) end(g1);
    if (g1 > g0 + 1) {  // the inside of a free range holds no block: a count of mapped bits
      const std::size_t n = g1 - g0 - 1;
      c.fresh += n;
      c.to_map += ar.mapped.count_clear(g0 + 1, g1);
    }
    return c;
  }

  // Granule index of a byte offset (a shift: granules are powers of two on every backend we
  // know; a division otherwise).
  std::size_t granule_of(std::size_t offset_bytes) const noexcept {
    return granule_shift_ != 0 ? offset_bytes >> granule_shift_ : offset_bytes / granule_bytes_;
  }

 private:
  // A granule is unmapped, mapped (`mapped`: to memory of its own) or retiring (`retiring`:
  // still mapped, its physical memory moved to an alias); never both bits. `occupancy` counts
  // only the blocks that cover a granule in part (at most two per block, its boundary
  // granules). A granule that a block covers fully holds that block alone (blocks never
  // overlap), and nothing here needs to know it: a block's inside costs nothing at its malloc
  // and free beyond the count of needed granules (issue 28: walk runs, not granules).
  struct ArenaGranules {
    std::uintptr_t base = 0;
    std::size_t offset = 0;                 // of granule 0 in cache_
    std::size_t granules = 0;
    ZeroedArray<std::uint32_t> occupancy;  // blocks covering each granule in part
    GranuleBits mapped;
    GranuleBits retiring;
    std::size_t pin_lo = 0;  // pinned granules [pin_lo, pin_hi) (pin_range)
    std::size_t pin_hi = 0;
    // Holds a block (live or pending), for a granule that meets free address space: the
    // granules of a request and the ends of a free range, the only ones asked about. A block
    // covering such a granule whole would overlap that free space, so only blocks that cover it
    // in part can hold it. (A mapped granule that holds no block is in the cache, quarantine or
    // the pinned set: that is how the rest of the arena is told apart.)
    bool needed(std::size_t g) const noexcept { return occupancy[g] != 0; }
  };
  using Alias = GranuleRelease::Alias;
  std::size_t key(std::size_t a, std::size_t g) const noexcept { return arenas_[a].offset + g; }
  // The granules under a block: [first, last], of which [full_begin, full_end) are fully
  // covered (empty when full_begin == full_end).
  struct Span {
    std::size_t first = 0;
    std::size_t last = 0;
    std::size_t full_begin = 0;
    std::size_t full_end = 0;
    bool full(std::size_t g) const noexcept { return g >= full_begin && g < full_end; }
    // Calls fn(g) on the (at most two) granules the block covers only in part, first first.
    template <class Fn>
    void for_each_partial(Fn&& fn) const {
      if (!full(first)) fn(first);
      if (last != first && !full(last)) fn(last);
    }
  };
  Span span_of(const ArenaGranules& ar, std::uintptr_t addr, std::size_t bytes) const noexcept;
  std::size_t mark() const noexcept;
  // Unmaps cached granules (highest first) until mapped + incoming <= target; returns false
  // when the cache ran out first.
  bool trim_to(std::size_t target, std::size_t incoming);
  bool map_run(ArenaGranules& ar, std::size_t first, std::size_t n);
  // unmap_granules (granule_unmap.h) on granules [first, first+n) of an arena, counted.
  std::size_t unmap_run(ArenaGranules& ar, std::size_t first, std::size_t n, std::uint8_t* gone);
  // Granules [first, first+n) of an arena are unmapped now (neither mapped nor retiring).
  static void mark_unmapped(ArenaGranules& ar, std::size_t first, std::size_t n) noexcept;

  // The release side (release_): quarantine, fences, aliases.
  const TemporalBitIndex& quarantined() const noexcept { return release_.quarantined(); }
  // Granules [first, last] of arena `a` have just lost their last block: pinned ones stay
  // mapped for the plan, the rest go to quarantine (or straight to the cache: unsafe_unmap).
  void quarantine(std::size_t a, std::size_t first, std::size_t last);
  // Acts on generations the release side completed: their granules join the cache, and their
  // retiring addresses are unmapped.
  void act_on(const GranuleRelease::Completed& done);
  void advance_fences(bool record) { act_on(release_.advance_fences(record)); }
  void drain_arena(std::size_t a) { act_on(release_.drain(a)); }
  // Waits for fences (oldest first) until at least `granules` more are trimmable, or all are.
  void wait_for_quarantine(std::size_t granules);
  // GranuleRelease::alias_run, and the granules it moved marked (mapped, donors retiring).
  bool alias_run(std::size_t a, std::size_t g, std::size_t max_n, Alias* out);
  // GranuleRelease::undo_alias, and the granules it moved back marked and quarantined.
  void undo_alias(std::size_t a, const Alias& al);

  // The steps of acquire, for one request: the block's granules and what it costs.
  struct Request {
    std::size_t a = 0;
    Span sp;
    Cost cost;
    std::size_t limit_bytes = 0;
    std::size_t ahead_granules = 0;
  };
  // What mapping a request did, undone when a later part of it fails.
  struct Mapping {
    std::vector<std::pair<std::size_t, std::size_t>> runs;  // (first, n) mapped fresh
    std::vector<Alias> aliases;
    std::size_t ahead_first = 0;  // granules mapped ahead of the block (trimmable)
    std::size_t ahead_n = 0;
  };
  // With `mapped_known` the caller has seen every granule under the block mapped.
  Cost block_cost(const ArenaGranules& ar, const Span& sp, bool mapped_known) const;
  // Whether the request can fit under the limit, once cached granules outside it go.
  bool fits_limit(const Request& r) const;
  // Takes the block's cached granules out of the cache, quarantine and pins, so that trimming
  // cannot take them.
  void claim(const Request& r);
  // The block's granules count it; its fresh granules are needed now.
  void count_in(const Request& r);
  // Unmaps cached granules (waiting for quarantine at the limit) so that the request stays
  // under the mark; returns how many granules it may alias instead of mapping.
  std::size_t make_room(const Request& r);
  // Waits until no address under the block is retiring (it cannot be mapped over).
  void wait_out_retiring(const Request& r);
  // Maps the block's missing runs, aliases first (within `alias_budget`); false on a failure.
  bool map_missing(const Request& r, std::size_t alias_budget, Mapping* m);
  // Granules to map ahead after the run of `n` granules that ends the block (growth).
  std::size_t ahead_of(const Request& r, std::size_t n) const;
  // Whether the peak of demand last rose at most ahead_gap_ ticks ago (a climb goes on).
  bool climbing() const noexcept {
    return grown_ && now_events_ - last_growth_events_ <= ahead_gap_;
  }
  // Undoes what map_missing did (and the claim) when it failed.
  void undo_mapping(const Request& r, const Mapping& m);

  device::Backend* backend_;
  std::size_t granule_bytes_;
  unsigned granule_shift_ = 0;  // log2(granule_bytes_) when a power of two, else 0
  std::uint64_t peak_window_events_;
  std::size_t slack_granules_;
  std::size_t slack_permille_;  // extra slack, in thousandths of the observed peak
  // Trim order: the granule cached longest ago first (else the highest address first).
  bool trim_oldest_first_;
  std::deque<std::pair<std::size_t, std::uint64_t>> lru_;  // (key, stamp), oldest first
  std::vector<std::uint64_t> cache_stamp_;                 // per key: stamp when cached
  std::uint64_t next_stamp_ = 0;
  void cached_now(std::size_t k);
  // Keys [first, last] join the cache (trimmable), stamped for the trim order.
  void cache_keys(std::size_t first, std::size_t last);
  bool pick_oldest(std::size_t* key);
  std::vector<ArenaGranules> arenas_;
  TemporalBitIndex cache_;        // key(arena, granule) of trimmable cached granules
  TemporalBitIndex pinned_free_;  // key(arena, granule) of mapped, empty, pinned granules
  bool unsafe_unmap_;
  GranuleRelease release_;  // quarantined granules (release_.quarantined()), fences, aliases
  std::size_t mapped_ = 0;
  std::size_t needed_ = 0;
  std::size_t window_peak_ = 0;       // peak of needed_ in the current window
  std::size_t prev_window_peak_ = 0;  // and in the previous one
  std::uint64_t window_start_events_ = 0;
  std::uint64_t now_events_ = 0;  // the last tick() seen
  std::size_t ahead_page_ = 0;
  std::uint64_t ahead_gap_ = 0;
  std::uint64_t last_growth_events_ = 0;  // tick at which a block last raised the peak of demand
  bool grown_ = false;                    // ... and whether one ever has
  std::size_t climb_base_ = 0;            // the peak of demand before the current climb
  FreeForecast* forecast_ = nullptr;
  std::uint64_t forecast_window_ = 0;
  std::uint64_t map_calls_ = 0;
  std::uint64_t unmap_calls_ = 0;
  std::uint64_t granules_mapped_total_ = 0;
  std::uint64_t granules_unmapped_total_ = 0;
};

}  // namespace timeshare::pool
