// replay/ — above allocator/: the replayer (this file), the named policies a replay compares
// (policies.h; their pools and predictor stacks come from the allocator's factory) and the
// offline oracle planner (oracle_planner.h). Traces themselves are trace/'s (events.h).
//
// Replayer — drives a real pool (and optionally a lifespan predictor) through a recorded trace.
//
// Every figure of the project is measured here. A trace is a compact array of `trace::Event`
// records (trace/events.h): allocations with dense ids and the frees that name them. The replayer
// walks it once, in order, against a `pool::Pool` built on a `device::SimBackend` with fake
// addresses (`backing = false`), so multi-GiB training traces replay in milliseconds and
// nothing is really allocated. The allocator clock is the event index: every allocation and
// every free is one tick, so the true lifespan of an allocation is (index of its free) - (index
// of its allocation). For each allocation the predictor (if any) is asked first and its answer
// goes to the pool in the `AllocHint`; for each free the pool is told first, then the
// predictor, which learns the true lifespan online exactly as it would inside the allocator.
// A pool that answers nullptr (out of memory) is counted and the replay goes on without that
// allocation (its free is skipped).
//
// Measured: peak live bytes (requested sizes: the physical limit), peak reserved bytes (the
// pool's `reserved_bytes.all.peak`, cross-checked with the backend's own counters), device
// reserve calls, nanoseconds per event over the event loop alone (setup excluded), a
// downsampled timeline of (event, live bytes, reserved bytes) for plots, and, when a predictor
// answered, how good its predictions were against the true lifespans (known offline after the
// run): the share within 2x, the median |log2(predicted / true)|, and the share within 2x after
// the first training iteration ("warm"). Allocations never freed have no true lifespan and are
// not scored. The replay is deterministic when the pool and predictor are.
//
// Work in flight (the strict sim, device/sim/sim_backend.h). A GPU runs behind the host, so
// when the host frees a block the kernels that used it may still be queued. The model: each
// block is used by work on its stream from its allocation to its free, and the work the host
// had queued by the time of the free completes when the host reaches the event
// `gpu_lag_events` later in the trace (that event's time_us, plus 1 us), i.e. the GPU runs a
// launch queue of that many allocator events behind. The sim clock follows the trace's
// time_us (shifted later by the time the pool made the host wait). A pool that unmaps memory
// before that work completed makes the sim count a device fault: `device_faults` must be 0.
// `device_waits` counts the host synchronisations the pool made to give memory back.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "timeshare/trace/events.h"

namespace timeshare::device {
class SimBackend;
}
namespace timeshare::pool {
class Pool;
}
namespace timeshare::predict {
class LifespanPredictor;
}

namespace timeshare::trace {

inline constexpr std::size_t kDefaultTimelinePoints = 1500;
inline constexpr double kLifespanWithinFactor = 2.0;     // "within 2x"
inline constexpr double kWarmFallbackFraction = 0.25;    // warm-up share when nothing is known
inline constexpr std::uint64_t kNoIndex = ~std::uint64_t{0};  // "none" for indices and lifespans
// The GPU's lag behind the host, in allocator events: at 2-4 kernels per allocator event, a
// few hundred kernels, below CUDA's launch queue of about 1,024.
inline constexpr std::uint64_t kDefaultGpuLagEvents = 128;

struct ReplayOptions {
  // Downsampled timeline size; each point holds the maxima of its bucket, so peaks survive.
  std::size_t timeline_points = kDefaultTimelinePoints;
  // Event indices where training iterations start (from the snapshot reader); empty = unknown.
  std::vector<std::uint64_t> iteration_starts;
  // When the starts are unknown: asked after the run for the allocation ordinal at which the
  // predictor detected the training cycle (kNoIndex: none). Empty = no such predictor.
  std::function<std::uint64_t()> detected_cycle_alloc;
  // Work in flight: see above. 0 = no work in flight (the permissive model).
  std::uint64_t gpu_lag_events = kDefaultGpuLagEvents;
  // When the predictor answers through a board (AsyncPredictor, as the allocator runs): the
  // predictor's own answer per allocation id, filled as the run goes. Prediction figures then
  // score these, and `answers` scores what the pool got.
  const std::vector<std::uint64_t>* own_answers = nullptr;
};

struct TimelinePoint {
  std::uint64_t event = 0;           // last event index of the bucket
  std::uint64_t live_bytes = 0;      // bucket maximum of live requested bytes
  std::uint64_t reserved_bytes = 0;  // bucket maximum of reserved bytes
};

// Where "warm" prediction scoring starts, and why there.
enum class WarmSource : std::uint8_t { kIterations, kPredictor, kFraction };
const char* to_string(WarmSource s) noexcept;

struct PredictionFigures {
  bool available = false;            // a predictor answered during the replay
  std::uint64_t scored = 0;          // allocations with a prediction and a true lifespan
  double within_2x = 0.0;            // share with pred/true in [1/2, 2]
  double log2_median_abs_error = 0.0;  // median |log2(pred / true)|, lifespans clamped to >= 1
  double log2_mean_abs_error = 0.0;    // mean of the same
  std::uint64_t warm_from_event = 0;
  WarmSource warm_source = WarmSource::kFraction;
  std::uint64_t warm_scored = 0;
  double within_2x_warm = 0.0;
  // "cold": the first training iteration alone, [cold_from_event, warm_from_event): where a
  // predictor has seen nothing of this model's period yet (the pretrained LSTM's case).
  std::uint64_t cold_from_event = 0;
  std::uint64_t cold_scored = 0;
  double within_2x_cold = 0.0;
};

struct ReplayResult {
  std::string policy;
  std::uint64_t events = 0;
  std::uint64_t allocs = 0;
  std::uint64_t frees = 0;
  std::uint64_t peak_live_bytes = 0;              // requested bytes, whole trace
  std::uint64_t peak_reserved_bytes = 0;          // the pool's reserved_bytes.all.peak
  std::uint64_t backend_peak_reserved_bytes = 0;  // the backend's own counter (cross-check)
  std::uint64_t device_reserve_calls = 0;         // pool's num_device_alloc
  std::uint64_t backend_reserve_calls = 0;        // backend's successful reserve + map calls
  std::uint64_t ooms = 0;                         // allocations the pool refused
  std::uint64_t skipped_frees = 0;                // frees of refused allocations
  std::uint64_t alloc_retries = 0;                // pool's num_alloc_retries
  std::uint64_t device_calls = 0;                 // sim: every reserve, release, map and unmap
  std::uint64_t device_faults = 0;                // sim: unmaps under work in flight (must be 0)
  std::uint64_t device_waits = 0;                 // sim: host synchronisations by the pool
  std::string first_fault;                        // what the first device fault was ("" = none)
  // Device calls made before the first marked iteration starts, then in each marked iteration
  // (from the snapshot's iteration starts; empty when there are none or no sim backend): where
  // the calls go, warm-up against steady state.
  std::vector<std::uint64_t> device_calls_by_iteration;
  // Layout plans (temporal pool with `plan`): allocations placed at / missing their planned
  // slot, plans followed, plans dropped for missing too often.
  std::uint64_t plan_hits = 0;
  std::uint64_t plan_misses = 0;
  std::uint64_t plans = 0;
  std::uint64_t plans_dropped = 0;
  double loop_ns = 0.0;                           // event loop only
  double ns_per_event = 0.0;
  double events_per_second = 0.0;
  // For learning predictors: the event-loop cost of the deterministic pass (figures), which
  // includes training run synchronously; ns_per_event then comes from a second, timing pass with
  // the trainer on its background thread, as in real use. 0 when there was no second pass.
  double ns_per_event_deterministic = 0.0;
  std::vector<TimelinePoint> timeline;
  PredictionFigures prediction;
  // With ReplayOptions::own_answers: the answers the pool got (0 = none, not scored) and the
  // share of allocations that got one.
  PredictionFigures answers;
  double answered_share = 0.0;
};

// True lifespan in ticks of every allocation id (kNoIndex for allocations never freed).
// `events` must be valid (see trace::validate).
std::vector<std::uint64_t> true_lifespans(const Event* events, std::size_t n,
                                          std::size_t allocs);

// Peak of the sum of requested bytes of live allocations.
std::uint64_t peak_live_bytes(const Event* events, std::size_t n);

// The event index from which warm prediction figures are counted, from the iteration starts
// when there are some: the start of the second iteration (the first one ends there), or the
// only start when it is not event 0. Returns kNoIndex when the starts say nothing.
std::uint64_t warm_start_from_iterations(const std::vector<std::uint64_t>& iteration_starts,
                                         std::size_t n);
// Where the first marked iteration starts: the first start when there are two or more (the
// cold window runs from it to the warm start), else 0 (the cold window is everything before
// the warm start).
std::uint64_t cold_start_from_iterations(const std::vector<std::uint64_t>& iteration_starts,
                                         std::size_t n);

// The work-in-flight model above, over a trace and a sim backend (replays and tools share it).
// Call before_event(i) at each event, then before_free(i, ...) just before a free reaches the
// pool. Without a backend, or with gpu_lag_events == 0, it does nothing.
class InFlightModel {
 public:
  InFlightModel(const Event* events, std::size_t n, std::uint64_t gpu_lag_events,
                device::SimBackend* backend);
  void before_event(std::size_t i);
  void before_free(std::size_t i, std::uint32_t stream, const void* ptr, std::size_t bytes);

 private:
  device::SimBackend* backend_;
  std::uint64_t lag_events_;
  std::vector<std::uint64_t> time_ns_;  // trace times, monotonic, in ns
  std::uint64_t host_delay_ns_ = 0;     // how far the pool's waits put the host behind
};

// Replays `events` (which must be valid) through `pool`. `backend` (may be null) is the sim
// backend under the pool, for its counters; `predictor` may be null (no hints are given).
ReplayResult replay(const Event* events, std::size_t n, pool::Pool& pool,
                    predict::LifespanPredictor* predictor, device::SimBackend* backend,
                    const ReplayOptions& options);

// Prediction figures from per-allocation predictions (0 = none) and true lifespans.
PredictionFigures score_predictions(const Event* events, std::size_t n,
                                    const std::vector<std::uint64_t>& predicted,
                                    const std::vector<std::uint64_t>& truth,
                                    std::uint64_t warm_from_event, WarmSource warm_source,
                                    std::uint64_t cold_from_event = 0);

// Downsamples per-event (live, reserved) curves as the replayer does: helper for planners.
class TimelineSampler {
 public:
  TimelineSampler(std::size_t events, std::size_t points);
  void add(std::uint64_t event, std::uint64_t live_bytes, std::uint64_t reserved_bytes) noexcept {
    if (live_bytes > live_max_) live_max_ = live_bytes;
    if (reserved_bytes > reserved_max_) reserved_max_ = reserved_bytes;
    if (++in_bucket_ == bucket_events_) flush(event);
  }
  std::vector<TimelinePoint> finish(std::uint64_t last_event);

 private:
  void flush(std::uint64_t event);

  std::size_t bucket_events_ = 1;
  std::size_t in_bucket_ = 0;
  std::uint64_t live_max_ = 0;
  std::uint64_t reserved_max_ = 0;
  std::vector<TimelinePoint> points_;
};

}  // namespace timeshare::trace
