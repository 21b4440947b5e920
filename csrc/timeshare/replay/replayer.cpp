#include "timeshare/replay/replayer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "timeshare/common/stats.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/pool/pool.h"
#include "timeshare/predict/predictor.h"

namespace timeshare::trace {

namespace {
// Work queued at a free ends strictly after the free, even where the trace's clock stands still.
constexpr std::uint64_t kTouchSlackNs = 1000;

std::string to_hex(std::uintptr_t v) {
  char buf[2 * sizeof(v) + 1];
  std::snprintf(buf, sizeof(buf), "%llx", static_cast<unsigned long long>(v));
  return buf;
}
}  // namespace

const char* to_string(WarmSource s) noexcept {
  switch (s) {
    case WarmSource::kIterations: return "iterations";
    case WarmSource::kPredictor: return "predictor";
    case WarmSource::kFraction: return "fraction";
  }
  return "?";
}

std::vector<std::uint64_t> true_lifespans(const Event* events, std::size_t n,
                                          std::size_t allocs) {
  std::vector<std::uint64_t> alloc_index(allocs, kNoIndex);
  std::vector<std::uint64_t> lifespan(allocs, kNoIndex);
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (e.op == Op::kAlloc) {
      alloc_index[e.id] = i;
    } else {
      lifespan[e.id] = i - alloc_index[e.id];
    }
  }
  return lifespan;
}

std::uint64_t peak_live_bytes(const Event* events, std::size_t n) {
  std::uint64_t live = 0;
  std::uint64_t peak = 0;
  for (std::size_t i = 0; i < n; ++i) {
    if (events[i].op == Op::kAlloc) {
      live += events[i].bytes;
      peak = std::max(peak, live);
    } else {
      live -= events[i].bytes;
    }
  }
  return peak;
}

namespace {
// The iteration starts inside the trace, sorted, without repeats.
std::vector<std::uint64_t> sorted_starts(const std::vector<std::uint64_t>& iteration_starts,
                                         std::size_t n) {
  std::vector<std::uint64_t> starts;
  for (std::uint64_t s : iteration_starts) {
    if (s < n) starts.push_back(s);
  }
  std::sort(starts.begin(), starts.end());
  starts.erase(std::unique(starts.begin(), starts.end()), starts.end());
  return starts;
}
}  // namespace

std::uint64_t warm_start_from_iterations(const std::vector<std::uint64_t>& iteration_starts,
                                         std::size_t n) {
  const std::vector<std::uint64_t> starts = sorted_starts(iteration_starts, n);
  if (starts.size() >= 2) return starts[1];
  if (starts.size() == 1 && starts[0] > 0) return starts[0];
  return kNoIndex;
}

std::uint64_t cold_start_from_iterations(const std::vector<std::uint64_t>& iteration_starts,
                                         std::size_t n) {
  const std::vector<std::uint64_t> starts = sorted_starts(iteration_starts, n);
  return starts.size() >= 2 ? starts[0] : 0;
}

// ---- timeline -------------------------------------------------------------------------------

TimelineSampler::TimelineSampler(std::size_t events, std::size_t points) {
  points = std::max<std::size_t>(points, 1);
  bucket_events_ = std::max<std::size_t>(1, (events + points - 1) / points);
  points_.reserve(events / bucket_events_ + 2);
}

void TimelineSampler::flush(std::uint64_t event) {
  points_.push_back({event, live_max_, reserved_max_});
  in_bucket_ = 0;
  live_max_ = 0;
  reserved_max_ = 0;
}

std::vector<TimelinePoint> TimelineSampler::finish(std::uint64_t last_event) {
  if (in_bucket_ > 0) flush(last_event);
  return std::move(points_);
}

// ---- prediction scoring ---------------------------------------------------------------------

PredictionFigures score_predictions(const Event* events, std::size_t n,
                                    const std::vector<std::uint64_t>& predicted,
                                    const std::vector<std::uint64_t>& truth,
                                    std::uint64_t warm_from_event, WarmSource warm_source,
                                    std::uint64_t cold_from_event) {
  PredictionFigures f;
  f.warm_from_event = warm_from_event;
  f.warm_source = warm_source;
  f.cold_from_event = std::min(cold_from_event, warm_from_event);
  std::vector<double> errors;
  errors.reserve(predicted.size());
  std::uint64_t within = 0;
  std::uint64_t warm_within = 0;
  std::uint64_t cold_within = 0;
  const double max_log2 = std::log2(kLifespanWithinFactor);
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (e.op != Op::kAlloc || e.id >= predicted.size()) continue;
    const std::uint64_t pred = predicted[e.id];
    const std::uint64_t real = truth[e.id];
    if (pred == 0 || real == kNoIndex) continue;
    f.available = true;
    const double err = std::fabs(std::log2(static_cast<double>(std::max<std::uint64_t>(pred, 1)) /
                                           static_cast<double>(std::max<std::uint64_t>(real, 1))));
    errors.push_back(err);
    const bool ok = err <= max_log2;
    within += ok;
    if (i >= warm_from_event) {
      ++f.warm_scored;
      warm_within += ok;
    } else if (i >= f.cold_from_event) {
      ++f.cold_scored;
      cold_within += ok;
    }
  }
  f.scored = errors.size();
  if (f.scored == 0) return f;
  f.within_2x = static_cast<double>(within) / static_cast<double>(f.scored);
  f.within_2x_warm =
      f.warm_scored ? static_cast<double>(warm_within) / static_cast<double>(f.warm_scored) : 0.0;
  f.within_2x_cold =
      f.cold_scored ? static_cast<double>(cold_within) / static_cast<double>(f.cold_scored) : 0.0;
  double sum = 0.0;
  for (double e : errors) sum += e;
  f.log2_mean_abs_error = sum / static_cast<double>(errors.size());
  const std::size_t mid = errors.size() / 2;
  std::nth_element(errors.begin(), errors.begin() + static_cast<std::ptrdiff_t>(mid), errors.end());
  double median = errors[mid];
  if (errors.size() % 2 == 0) {
    median = (median + *std::max_element(errors.begin(),
                                         errors.begin() + static_cast<std::ptrdiff_t>(mid))) / 2;
  }
  f.log2_median_abs_error = median;
  return f;
}

// ---- work in flight ---------------------------------------------------------------------------

InFlightModel::InFlightModel(const Event* events, std::size_t n, std::uint64_t gpu_lag_events,
                             device::SimBackend* backend)
    : backend_(gpu_lag_events != 0 ? backend : nullptr), lag_events_(gpu_lag_events) {
  if (backend_ == nullptr) return;
  time_ns_.resize(n);
  std::uint64_t t = 0;
  for (std::size_t i = 0; i < n; ++i) {
    t = std::max<std::uint64_t>(t, events[i].time_us * 1000);
    time_ns_[i] = t;
  }
}

void InFlightModel::before_event(std::size_t i) {
  if (backend_ == nullptr) return;
  const std::uint64_t now = backend_->now_ns();
  if (now > time_ns_[i] + host_delay_ns_) host_delay_ns_ = now - time_ns_[i];
  backend_->set_now(time_ns_[i] + host_delay_ns_);
}

void InFlightModel::before_free(std::size_t i, std::uint32_t stream, const void* ptr,
                                std::size_t bytes) {
  if (backend_ == nullptr) return;
  // The work queued on its stream by now completes gpu_lag_events later.
  const std::size_t j = std::min<std::size_t>(i + lag_events_, time_ns_.size() - 1);
  backend_->touch(static_cast<device::Stream>(stream), ptr, bytes,
                  time_ns_[j] + host_delay_ns_ + kTouchSlackNs);
}

// ---- the replay loop ------------------------------------------------------------------------

ReplayResult replay(const Event* events, std::size_t n, pool::Pool& pool,
                    predict::LifespanPredictor* predictor, device::SimBackend* backend,
                    const ReplayOptions& options) {
  ReplayResult r;
  r.policy = pool.name();
  r.events = n;
  std::size_t allocs = 0;
  for (std::size_t i = 0; i < n; ++i) allocs += events[i].op == Op::kAlloc;
  r.allocs = allocs;
  r.frees = n - allocs;

  std::vector<void*> ptrs(allocs, nullptr);
  std::vector<std::uint64_t> predicted(predictor ? allocs : 0, 0);
  TimelineSampler sampler(n, options.timeline_points);
  const DeviceStats& stats = pool.stats();
  std::uint64_t live = 0;
  std::uint64_t peak_live = 0;
  InFlightModel in_flight(events, n, options.gpu_lag_events, backend);
  // Calls per marked iteration: the backend's counters read where each iteration starts.
  const std::vector<std::uint64_t>& starts = options.iteration_starts;
  std::size_t next_start = 0;
  std::uint64_t calls_before = 0;
  const auto device_calls_now = [backend] {
    const device::SimCounters c = backend->counters();
    return c.reserve_calls + c.release_calls;
  };

  const auto start = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    const auto stream = static_cast<device::Stream>(e.stream);
    in_flight.before_event(i);
    if (backend && next_start < starts.size() && starts[next_start] <= i) [[unlikely]] {
      const std::uint64_t calls = device_calls_now();
      r.device_calls_by_iteration.push_back(calls - calls_before);
      calls_before = calls;
      while (next_start < starts.size() && starts[next_start] <= i) ++next_start;
    }
    if (e.op == Op::kAlloc) {
      pool::AllocHint hint;
      hint.now_events = i;
      hint.alloc_id = e.id;
      if (predictor) {
        predict::AllocEvent a;
        a.alloc_id = e.id;
        a.bytes = e.bytes;
        a.stream = e.stream;
        a.now_events = i;
        a.now_us = e.time_us;
        hint.predicted_lifespan = predictor->on_alloc(a);
        predicted[e.id] = hint.predicted_lifespan;
      }
      void* p = pool.allocate(e.bytes, stream, hint);
      if (p == nullptr && e.bytes > 0) {
        ++r.ooms;
      } else {
        ptrs[e.id] = p;
        live += e.bytes;
        if (live > peak_live) peak_live = live;
      }
    } else {
      void* p = ptrs[e.id];
      if (p == nullptr && e.bytes > 0) {
        ++r.skipped_frees;
      } else {
        if (p) {
          in_flight.before_free(i, e.stream, p, e.bytes);
          pool.deallocate(p, i);
        }
        live -= e.bytes;
      }
      if (predictor) predictor->on_free({e.id, i, e.time_us});
    }
    sampler.add(i, live, static_cast<std::uint64_t>(stats.reserved_bytes[kAggregate].current));
  }
  const auto stop = std::chrono::steady_clock::now();

  r.loop_ns = static_cast<double>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(stop - start).count());
  r.ns_per_event = n ? r.loop_ns / static_cast<double>(n) : 0.0;
  r.events_per_second = r.loop_ns > 0 ? static_cast<double>(n) * 1e9 / r.loop_ns : 0.0;
  r.timeline = sampler.finish(n ? n - 1 : 0);
  if (backend && next_start > 0) r.device_calls_by_iteration.push_back(device_calls_now() - calls_before);
  // Peak live is a property of the trace; with OOMs the replayed live peak is lower, and the
  // trace's own figure is the one fragmentation is measured against.
  r.peak_live_bytes = r.ooms ? peak_live_bytes(events, n) : peak_live;
  r.peak_reserved_bytes = static_cast<std::uint64_t>(stats.reserved_bytes[kAggregate].peak);
  r.device_reserve_calls = static_cast<std::uint64_t>(stats.num_device_alloc);
  r.alloc_retries = static_cast<std::uint64_t>(stats.num_alloc_retries);
  if (backend) {
    const device::SimCounters c = backend->counters();
    r.backend_peak_reserved_bytes = c.peak_reserved_bytes;
    r.backend_reserve_calls = c.reserve_calls;
    r.device_calls = c.reserve_calls + c.release_calls;
    r.device_faults = c.device_faults;
    r.device_waits = c.waits;
    if (const auto faults = backend->faults(); !faults.empty()) {
      const device::SimFault& f = faults.front();
      r.first_fault = std::string(f.what) + " of granule 0x" + to_hex(f.addr) + " at " +
                      std::to_string(f.at_ns) + " ns while stream " + std::to_string(f.stream) +
                      " used it until " + std::to_string(f.busy_until_ns) + " ns";
    }
  }

  if (predictor) {
    std::uint64_t warm = warm_start_from_iterations(options.iteration_starts, n);
    WarmSource source = WarmSource::kIterations;
    if (warm == kNoIndex && options.detected_cycle_alloc) {
      const std::uint64_t ordinal = options.detected_cycle_alloc();
      for (std::size_t i = 0; ordinal < allocs && i < n; ++i) {
        if (events[i].op == Op::kAlloc && events[i].id == ordinal) {
          warm = i;
          source = WarmSource::kPredictor;
          break;
        }
      }
    }
    if (warm == kNoIndex) {
      warm = static_cast<std::uint64_t>(static_cast<double>(n) * kWarmFallbackFraction);
      source = WarmSource::kFraction;
    }
    const std::uint64_t cold = source == WarmSource::kIterations
                                   ? cold_start_from_iterations(options.iteration_starts, n)
                                   : 0;
    const std::vector<std::uint64_t> truth = true_lifespans(events, n, allocs);
    if (options.own_answers != nullptr) {
      // The feed's stats: what it still queued is fed first (filling own_answers), and it
      // counts the allocations its board answered.
      const predict::PredictorStats s = predictor->stats();
      r.answers = score_predictions(events, n, predicted, truth, warm, source, cold);
      r.answered_share = s.answered + s.unanswered
                             ? static_cast<double>(s.answered) /
                                   static_cast<double>(s.answered + s.unanswered)
                             : 0.0;
      predicted = *options.own_answers;
      predicted.resize(allocs, 0);
    }
    r.prediction = score_predictions(events, n, predicted, truth, warm, source, cold);
  }
  return r;
}

}  // namespace timeshare::trace
