// TemporalPoolOptions — the knobs of the temporal pool, with units, and the lifespan classes.
//
// Every figure the pool's policy depends on lives here as a named field with its unit, so
// that tests and the evaluation tool (csrc/tools/temporal_eval.cpp) can vary them. The
// defaults are the ones measured in docs/temporal_pool.md.
#pragma once

#include <cstddef>
#include <cstdint>

#include "timeshare/common/units.h"

namespace timeshare::pool {

// Lifespan (allocator ticks) at or above which a block is treated as permanent (parameters,
// optimizer state, blocks that are never freed). Callers that know a block is never freed
// pass this value or larger.
inline constexpr std::uint64_t kPermanentLifespanEvents = std::uint64_t{1} << 40;

struct TemporalPoolOptions {
  // Every block is rounded up to this many bytes (PyTorch's kMinBlockSize is 512).
  std::size_t align_bytes = 512;

  // Virtual address space reserved per lifespan region of each stream's arena. 0 = the
  // device's total memory rounded up to a granule, so one region can hold anything the
  // device can. Virtual space costs no physical memory.
  std::size_t region_va_bytes = 0;

  // Lifespan classes: class 0 holds lifespans below `class_base_events`; class k (k >= 1)
  // holds [base * ratio^(k-1), base * ratio^k). The last class before the permanent one is
  // open-ended; lifespans >= kPermanentLifespanEvents go to the permanent class, and blocks
  // without a prediction (predicted_lifespan == 0) to the unknown class.
  std::uint64_t class_base_events = 16;
  std::uint64_t class_ratio = 8;
  // Classes for finite predicted lifespans. Default 1: every finite prediction shares one
  // best-fit region; only permanent and unpredicted blocks are kept apart. Measured on the 8
  // shipped training traces (docs/temporal_pool.md), splitting finite lifespans into 2-5
  // classes helps with true lifespans on some traces but, with the shipped hybrid predictor
  // (right within 2x on 0.84-0.95 of allocations), a mispredicted block pins a granule of the
  // wrong region and every split variant was worse than one region on resnet18/resnet50.
  std::size_t num_timed_classes = 1;

  // When the best fit in a block's own region would need a new granule, first look for free
  // space in already-mapped granules of the other (non-permanent) regions, nearest class
  // first. Trades a little lifespan mixing for fewer partly used granules and map calls.
  bool borrow_mapped = true;
  // Placement inside a region: of the `lowest_of_fits` smallest free ranges that fit, the one
  // at the lowest address (1 = plain best fit).
  std::size_t lowest_of_fits = 1;
  // Borrow only from regions at most this many classes away (permanent blocks: 1).
  std::size_t borrow_max_distance = 16;
  // ... and at most this many classes towards shorter lifespans.
  std::size_t borrow_down_max_distance = 16;
  // Visit every longer-lived region before any shorter-lived one (else nearest first).
  bool borrow_longer_first = false;
  // How many free ranges per region (smallest fitting first) are checked for one that lies
  // entirely in mapped granules before the pool maps new ones. Bounds the miss path.
  std::size_t mapped_fit_candidates = 4;
  // ... and such a range (or a borrowed one) is taken only when it is at most this many times
  // the request (0 = any size). Measured on the shipped traces: 4 took resnet18 from 1.075 to
  // 1.053 (3 and 8 both gave 1.064) for a few more map calls. (The last step, `fewest_to_map`,
  // may still split a larger range, where the block would otherwise map.)
  std::size_t mapped_fit_max_ratio = 4;

  // Device calls (docs/temporal_pool.md, "Device calls"). Where the best fit would need a new
  // granule, and no candidate above lies in mapped granules: the start of the region's tail
  // when it is still mapped; then of the highest `empty_run_candidates` runs of mapped granules
  // that hold no block, the shortest that fits (0 = off). Such granules are the ones a trim
  // would unmap next: without these, a block mapped a granule low in the arena while one high
  // up was unmapped, every cycle (bert_mlm: 80 calls per iteration).
  bool mapped_tail_first = true;
  std::size_t empty_run_candidates = 8;
  // Last, when the block must map granules wherever it goes: of the `mapped_fit_candidates`
  // smallest free ranges that fit, at the start of each or at its end (not the tail's end), the
  // place that leaves the fewest granules to map; best fit on a tie. Measured on the tuning
  // split: fasterrcnn_mobilenet 92 -> 43 calls, gpt2_varlen 329 -> 293, no peak higher
  // (squeezenet_sgd_b16 1.175 -> 1.106); docs/temporal_pool.md.
  bool fewest_to_map = true;
  // Growth: at a new peak of demand the block's last run maps this many granules more, which
  // the blocks that follow use (counted in the peak). Measured on the shipped traces: 9 (18 MiB,
  // close to the 20 MiB pages of expandable segments) cut the first iterations' calls 3-6x for
  // 0-30 MiB more peak reserved; 0 maps only what blocks cover.
  std::size_t map_ahead_granules = 9;  // TIMESHARE_CONF map_ahead, rounded up to granules
  // ... and at most this many thousandths of the observed peak of demand (0 = no such bound):
  // map-ahead sized by the pool. A fixed 18 MiB is 4-10 % of a 180-500 MiB model's peak, and
  // what is mapped ahead and still unused when demand peaks is reserved for nothing.
  std::size_t map_ahead_permille = 100;
  // ... and only up to the next multiple of this many granules of the mapped total (0 = no such
  // bound): growth then maps whole pages of the pool's memory, as expandable segments map 20 MiB
  // pages, so what is mapped and unused at the peak is at most part of one page.
  std::size_t map_ahead_page_granules = 10;
  // ... and only once the observed peak of demand has reached this many granules (0 = from the
  // first block). Below it a tenth of the peak is one or two granules: what that saves is a
  // call or two per growth step, while the granules mapped ahead at the last step stay unused
  // at the peak, 5-10 % of a pool this small (measured on the tuning traces: three 40 MiB
  // models above expandable segments' peak with it, none without; docs/temporal_pool.md).
  std::size_t map_ahead_min_granules = 24;
  // ... and at most what the peak of demand has risen in its current climb, a climb being rises
  // at most this many ticks apart (0 = no such bound): its first rise maps only what its block
  // covers. A peak raised again after a quiet spell (a longer batch, the optimizer's state, a
  // later iteration a granule or two above the first) is a step, not the start of a growth
  // that blocks will follow, and what was mapped ahead there stayed unused at the peak
  // (ssdlite_mnv3_sgd: 9 granules in its second iteration). A sixteenth of the mark's window;
  // chosen on the tuning split (docs/temporal_pool.md, "Map-ahead follows the climb").
  std::uint64_t map_ahead_gap_events = 4096;

  // Where in the chosen free range a block goes: at its start (the old rule), or at the
  // granule boundary inside it, or at its end, whichever adds the fewest granules to the needed
  // ones (and maps no more than the start would). A block that ends mid-granule leaves the rest
  // of that granule to its neighbour's hole; one moved to the hole's end shares the granule its
  // neighbour already holds.
  // 0: at the start; 1: the start or the granule boundary; 2: the start or the end; 3: any.
  unsigned snap_to_granules = 0;

  // Blocks of at most this many bytes get a region of their own (0 = none), as PyTorch keeps
  // small blocks in 2 MiB segments of their own: a small block between large ones shifts every
  // large block after it off the granule grid, and each hole between them then wastes part of
  // a granule at both ends.
  std::size_t small_block_bytes = 0;
  // Predicted frees (pool/temporal/free_forecast.h): at growth, map ahead that many granules fewer as
  // the live blocks are predicted to give back in the next `forecast_window_events` ticks
  // (0 = off: always map_ahead_granules).
  std::uint64_t forecast_window_events = 0;

  // Re-assignment queue (temporal_reassign.h): blocks of at least `reassign_min_bytes` are
  // watched until their predicted death; the slot of one that is then gone is promised to
  // the next request of its region that fits it, for `reassign_horizon_events` ticks.
  // Off by default: measured, it raised fragmentation (docs/temporal_pool.md).
  bool reassign = false;
  std::size_t reassign_min_bytes = 64 * kKiB;
  std::uint64_t reassign_horizon_events = 4096;
  std::size_t reassign_max_promises = 64;

  // Hysteresis. Free mapped granules are kept (cached) while the mapped total stays at or
  // below the high-water mark of needed granules (granules holding a live or pending block)
  // over the current and the previous window of `peak_window_events` ticks, plus
  // `slack_granules`. Above the mark, cached granules are unmapped, highest address first.
  std::uint64_t peak_window_events = std::uint64_t{1} << 16;
  std::size_t slack_granules = 0;
  // More slack, in thousandths of that peak (20 = 2 %). Slack trades reserved memory for
  // fewer map/unmap calls: at 0 physical memory moves between regions every cycle.
  std::size_t slack_permille = 0;
  // Which cached granule goes first above the mark: the one cached longest ago (true) or the
  // one at the highest address (false).
  bool trim_oldest_first = false;

  // A test of the sim backend's fault detector, never for use: unmap a granule as soon as its
  // last block is freed, without waiting for the work its stream queued before the free (the
  // behaviour before granules were quarantined; on a GPU an illegal-address fault).
  bool unsafe_unmap = false;
};

// Index of the region a block with this predicted lifespan goes to. Regions 0 ..
// num_timed_classes-1 are the timed classes, then the permanent region, then the unknown one.
inline std::size_t lifespan_region(const TemporalPoolOptions& o,
                                   std::uint64_t predicted_lifespan_events) noexcept {
  const std::size_t permanent = o.num_timed_classes;
  // With one timed class a block without a prediction is placed with the timed ones: answers
  // come and go (AsyncPredictor's board), and two regions would each need their own mapped space.
  if (predicted_lifespan_events == 0) return o.num_timed_classes == 1 ? 0 : permanent + 1;
  if (predicted_lifespan_events >= kPermanentLifespanEvents) return permanent;
  std::size_t k = 0;
  std::uint64_t bound = o.class_base_events;
  while (predicted_lifespan_events >= bound && k + 1 < o.num_timed_classes) {
    ++k;
    bound *= o.class_ratio;
  }
  return k;
}

inline std::size_t num_regions(const TemporalPoolOptions& o) noexcept {
  return o.num_timed_classes + 2;
}

// Regions of an arena: the lifespan regions, then the plan region (pool/layout_plan.h), then
// the small-block region (TemporalPoolOptions::small_block_bytes).
inline std::size_t plan_region_index(const TemporalPoolOptions& o) noexcept {
  return num_regions(o);
}
inline std::size_t small_region_index(const TemporalPoolOptions& o) noexcept {
  return num_regions(o) + 1;
}
inline std::size_t arena_regions(const TemporalPoolOptions& o) noexcept {
  return num_regions(o) + 2;
}

}  // namespace timeshare::pool
