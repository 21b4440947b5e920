// TemporalPool — timeshare's own pool: places every block by WHEN it is predicted to die.
//
// The policy, for a newcomer. PyTorch's caching allocator decides only where a block fits; it
// does not know when the block will go away, so a long-lived block often lands between
// short-lived ones and, once they are freed, pins a hole that nothing else fits into. The
// temporal pool gets, with each allocation, a prediction of its lifespan (allocator ticks
// until its free; AllocHint::predicted_lifespan) and uses it for placement:
//
//   * Memory is virtual. Each stream gets one arena: a virtual address range reserved once
//     (Backend::va_reserve) in which physical 2 MiB granules are mapped only under blocks
//     (like PyTorch's expandable segments). Reserved bytes are mapped granules, so only
//     placement decides fragmentation, and a granule left without blocks can be unmapped even
//     in the middle of the arena (TemporalGranules).
//   * The arena is cut into lifespan regions: log-spaced classes of predicted lifespan
//     (scratch, short, ..., long), one region for permanent blocks (parameters, optimizer
//     state) and one for blocks without a prediction (with one timed class, the default, those
//     are placed with the timed blocks). Blocks with similar lifespans allocated
//     close in time die close in time, so within a region the pattern is stack-like (training
//     frees activations in reverse order) and freed blocks coalesce into whole free granules.
//     Scratch never lands between saved activations, and nothing short-lived sits between
//     parameters. Within a region, placement is best fit over coalesced free ranges, lowest
//     address first (ArenaFreeRanges: binary searches in two flat sorted arrays); the region's
//     untouched tail is one large free range, used only when nothing else fits.
//   * Free space moves between regions at granule granularity, through the device: a granule
//     emptied in one region is unmapped (when above the hysteresis mark) and another region
//     maps one. Map/unmap calls are expensive on a GPU, so free granules stay mapped (cached)
//     up to the observed cycle peak of needed granules; a periodic trace whose placement
//     repeats makes no device calls in steady state.
//   * Re-assignment queue (TemporalReassignQueue, from the seed): placed blocks are watched
//     until their predicted death; the slot of a block that is then really gone is promised
//     to the next request of its region that fits it, which takes exactly that slot. A block
//     still live at its predicted death (wrong prediction) promises nothing: requests take
//     the next-best placement, best fit.
//   * Predicted frees (option forecast_window_events, off by default; FreeForecast): at growth
//     the pool maps ahead fewer granules by what the live blocks are predicted to free soon.
//   * Wrong predictions cost memory, never correctness: a block in the "wrong" region is
//     still a block at a unique address in mapped memory, freed whenever the caller frees it.
//
// Streams: one arena per stream, so a block is only ever reused by the stream it was
// allocated on. record_stream(ptr, s) adds s to the block; its deallocate then records an
// event on every such stream and the block's range stays out of the free ranges (pending)
// until all those events complete. Pending blocks are processed at the start of allocate.
//
// Budget: set_limit_bytes caps mapped bytes. A request that would pass it first unmaps
// every cached granule (and waits for pending blocks) and retries once (num_alloc_retries);
// if it still does not fit, allocate returns nullptr and counts an OOM.
//
// Stats (DeviceStats, torch meanings): allocation/allocated_bytes/requested_bytes are live
// blocks (rounded / asked); active also counts pending blocks; reserved_bytes is mapped
// granules; segment counts mapped granules (each is one physical allocation, as in
// expandable segments); num_device_alloc/free count va_reserve+map and unmap+va_release
// calls. Small/large pool split: blocks of at most 1 MiB are "small"; reserved memory is
// all counted in the large pool.
//
// It needs virtual memory (Backend::supports_virtual_memory()): without it there are no
// granules to map under a fixed address range, and the constructor throws. The factory
// (make_pool, allocator/factory.cpp) builds PyTorch's policy, a CachingPool named
// "temporal(fallback:torch)", on such a device instead.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "timeshare/pool/temporal/arena_free_ranges.h"
#include "timeshare/pool/event_pool.h"
#include "timeshare/pool/temporal/free_forecast.h"
#include "timeshare/pool/layout_plan.h"
#include "timeshare/pool/pool.h"
#include "timeshare/pool/temporal/temporal_granules.h"
#include "timeshare/pool/temporal/temporal_live_map.h"
#include "timeshare/pool/temporal/temporal_options.h"
#include "timeshare/pool/temporal/temporal_reassign.h"

namespace timeshare::pool {

class TemporalPool final : public Pool {
 public:
  explicit TemporalPool(device::Backend* backend, TemporalPoolOptions options = {});
  ~TemporalPool() override;
  TemporalPool(const TemporalPool&) = delete;
  TemporalPool& operator=(const TemporalPool&) = delete;

  const char* name() const noexcept override { return "temporal"; }
  void* allocate(std::size_t bytes, device::Stream stream, const AllocHint& hint) override;
  FreeResult deallocate(void* ptr, std::uint64_t now_events) override;
  void record_stream(void* ptr, device::Stream stream) override;
  void empty_cache() override;
  std::size_t block_size(void* ptr) const override;
  const DeviceStats& stats() const noexcept override;
  ReleaseStats release_stats() const noexcept override {
    return {granules_.waits(), granules_.fences_recorded(), granules_.aliases(),
            granules_.quarantined_granules() * granules_.granule_bytes()};
  }
  void reset_peak_stats() noexcept override;
  void reset_accumulated_stats() noexcept override;
  void set_limit_bytes(std::size_t bytes) noexcept override;
  std::size_t limit_bytes() const noexcept override { return limit_bytes_; }
  std::string describe() const override;

  // Predicted layouts (pool/layout_plan.h): from now on, allocations on the plan's stream are
  // placed at their planned slot when it fits and is free, in a region of their own whose
  // granules stay mapped while the plan is followed. nullptr: no plan (the default).
  void set_plan_board(std::shared_ptr<PlanBoard> board);
  static constexpr std::uint64_t kMaxPlanDrops = 2;
  // Allocations placed at their planned slot, and planned ones that could not be (the slot was
  // taken, or no slot of that size was found near the expected phase); plans followed and
  // dropped for missing too often.
  struct PlanStats {
    std::uint64_t hits = 0;
    std::uint64_t misses = 0;
    std::uint64_t plans = 0;
    std::uint64_t dropped = 0;
    std::size_t pinned_free_granules = 0;
  };
  PlanStats plan_stats() const noexcept {
    PlanStats s = plan_stats_;
    s.pinned_free_granules = granules_.pinned_free_granules();
    return s;
  }

  // Introspection for tests and the evaluation tool.
  const TemporalPoolOptions& options() const noexcept { return options_; }
  std::size_t mapped_granules() const noexcept { return granules_.mapped_granules(); }
  std::size_t cached_granules() const noexcept { return granules_.cached_granules(); }
  std::size_t needed_granules() const noexcept { return granules_.needed_granules(); }
  std::uint64_t granules_mapped_total() const noexcept { return granules_.granules_mapped_total(); }
  std::uint64_t granules_unmapped_total() const noexcept {
    return granules_.granules_unmapped_total();
  }
  std::size_t pending_blocks() const noexcept { return pending_.size(); }
  // Granules emptied by a free whose stream may still be using them (not yet trimmable).
  std::size_t quarantined_granules() const noexcept { return granules_.quarantined_granules(); }
  // Host waits made to give memory back, and fences recorded (TemporalGranules).
  std::uint64_t device_waits() const noexcept { return granules_.waits(); }
  std::uint64_t fences_recorded() const noexcept { return granules_.fences_recorded(); }
  std::uint64_t aliases() const noexcept { return granules_.aliases(); }
  std::size_t granule_bytes() const noexcept { return granules_.granule_bytes(); }
  std::uint64_t promised_placements() const noexcept { return promised_placements_; }
  const TemporalReassignQueue& reassign_queue() const noexcept { return reassign_; }

  // Per lifespan region: live blocks, their bytes, and the granules they touch (a granule
  // shared by two regions counts in both). O(live blocks): for diagnostics only.
  struct RegionUsage {
    std::size_t blocks = 0;
    std::size_t bytes = 0;
    std::size_t granules = 0;
  };
  std::vector<RegionUsage> region_usage() const;

  // Live blocks (address, rounded bytes, region, alloc id), unordered. For diagnostics only.
  struct LiveBlockInfo {
    std::uintptr_t addr = 0;
    std::size_t bytes = 0;
    std::uint32_t region = 0;
    std::uint64_t alloc_id = 0;
  };
  std::vector<LiveBlockInfo> live_blocks() const;

 private:
  struct Arena {
    device::Stream stream = device::kDefaultStream;
    std::uint32_t index = 0;                // in arenas_
    std::uintptr_t base = 0;
    std::size_t va_bytes = 0;
    std::size_t granule_index = 0;          // index in granules_
    std::vector<ArenaFreeRanges> regions;   // one per lifespan region
  };
  struct Block {
    std::size_t bytes = 0;                  // rounded
    std::size_t requested_bytes = 0;
    std::uint32_t arena = 0;
    std::uint32_t region = 0;
    std::uint64_t alloc_id = 0;
    std::uint64_t predicted_death = 0;      // tick counted in forecast_ (0: not counted)
    std::vector<device::Stream> other_streams;  // from record_stream
  };
  struct Pending {
    std::uintptr_t addr = 0;
    Block block;
    std::vector<device::Event> events;
  };

  Arena* arena_for(device::Stream stream);
  // Chooses and commits a range for `bytes` whose lifespan region is `region`; sets the
  // region the range came from (another one when borrowing mapped space).
  bool place(Arena& arena, std::size_t region, std::size_t bytes, std::uintptr_t* addr,
             std::size_t* placed_region);
  // In a run of mapped granules that hold no block (of the region), when one fits: the
  // shortest of the highest `empty_run_candidates` runs.
  bool place_in_empty_run(Arena& arena, std::size_t region, std::size_t bytes,
                          std::uintptr_t* addr);
  // Of the mapped_fit_candidates smallest free ranges of `region` that fit `bytes`, at either
  // end, the place that needs fewer granules mapped than `own`'s start; commits it (false: none,
  // nothing done).
  bool place_fewest_to_map(Arena& arena, std::size_t region, std::size_t bytes,
                           const ArenaFreeRanges::Range& own, std::uintptr_t* addr);
  // commit_at at the start of the free range `r` (or where snap puts it in `r`).
  // `mapped_known`: every granule under [r.addr, r.addr + bytes) was just seen mapped.
  bool commit(Arena& arena, std::size_t region, const ArenaFreeRanges::Range& r,
              std::size_t bytes, std::uintptr_t* addr, bool mapped_known = false);
  // Makes [at, at + bytes) inside the free range `r` of `region` usable (its granules mapped as
  // needed, growth mapped ahead) and takes it out of `r`; false, nothing changed, when the limit
  // or the device refuses. `mapped_known`: every granule under it was just seen mapped.
  bool commit_at(Arena& arena, std::size_t region, const ArenaFreeRanges::Range& r,
                 std::uintptr_t at, std::size_t bytes, std::uintptr_t* addr,
                 bool mapped_known = false);
  bool fits_mapped(const Arena& arena, std::uintptr_t addr, std::size_t bytes) const;
  // Where in the free range `r` of `region` a block of `bytes` goes (snap_to_granules).
  std::uintptr_t snap(const Arena& arena, std::size_t region, const ArenaFreeRanges::Range& r,
                      std::size_t bytes) const;
  // Granules mapped ahead at growth: map_ahead_granules, bounded by map_ahead_permille; none
  // while the peak of demand is below map_ahead_min_granules.
  std::size_t map_ahead() const noexcept;
  // The slot promised by the re-assignment queue, when one fits and is still free and mapped.
  bool place_promised(Arena& arena, std::size_t region, std::size_t bytes, std::uintptr_t* addr);
  void release_range(std::uintptr_t addr, const Block& block);
  // The planned slot of this allocation, when the plan has one of its size near the expected
  // phase and it is free; commits it (placed in the plan region).
  bool place_planned(Arena& arena, std::size_t rounded, std::uint64_t alloc_id,
                     std::uintptr_t* addr);
  void refresh_plan();
  void drop_plan();
  // Keeps the regions' free ranges in step with retiring addresses (TemporalGranules): an
  // address whose memory moved to an alias is not placed on until it is unmapped.
  void sync_retiring();
  void process_pending(bool wait);
  void sync_reserved() noexcept;
  void count_block(const Block& b, bool add) noexcept;

  device::Backend* backend_;
  const TemporalPoolOptions options_;
  std::size_t region_va_bytes_ = 0;
  TemporalGranules granules_;
  std::vector<std::unique_ptr<Arena>> arenas_;
  TemporalLiveMap<Block> live_;
  std::deque<Pending> pending_;
  TemporalReassignQueue reassign_;
  std::unique_ptr<FreeForecast> forecast_;  // set when options_.forecast_window_events > 0
  EventPool events_;
  std::size_t limit_bytes_ = 0;
  std::uint64_t now_events_ = 0;
  std::uint64_t promised_placements_ = 0;
  DeviceStats stats_;
  // The layout plan being followed (set_plan_board), and where its slots are in phase.
  std::shared_ptr<PlanBoard> board_;
  std::shared_ptr<const LayoutPlan> plan_;
  std::uint64_t plan_version_ = 0;
  std::int64_t plan_shift_ = 0;        // allocations inserted (+) or missing (-) since planned
  std::uint64_t plan_window_tries_ = 0;  // planned allocations in the current check window
  std::uint64_t plan_window_misses_ = 0;
  std::size_t plan_ref_granules_ = 0;  // best fit's peak demand when the first plan came
  std::size_t plan_region_ = 0;        // index of the plan region in Arena::regions
  PlanStats plan_stats_;
  // What sync_reserved last saw (it returns early when nothing changed).
  std::int64_t synced_mapped_ = -1;
  std::uint64_t synced_calls_ = 0;
  std::int64_t synced_active_bytes_ = -1;
};

}  // namespace timeshare::pool
