// temporal_eval — replays allocation traces through TemporalPool on the sim backend under
// several lifespan predictors and prints fragmentation, device calls and time per event.
//
//   temporal_eval [options] TRACE.tsev...      replay real traces (timeshare.snapshot --tsev)
//   temporal_eval [options] --synthetic        replay built-in training-like traces
//   temporal_eval --write-synthetic DIR        write the synthetic traces as .tsev files
// Options: --predictors oracle,constant,noisy,lastsize,torch,torch-expandable,offline (all)  --seed N
//          --iterations N (synthetic)  --window-events N  --slack-granules N  --slack-permille N  --trim-oldest  --classes N  --class-base N  --class-ratio N  --no-borrow  --fit-candidates N  --detail  --dump
//          --borrow-distance N  --borrow-down N  --longer-first  --reassign  --lowest-of K
//          --fit-max-ratio N (0 = any size)  --unsafe-unmap (detector test)
//          --empty-runs N (0 = off)  --no-tail-first  --map-ahead GRANULES (device calls)
//          --map-ahead-permille N  --map-ahead-page N  --map-ahead-min GRANULES  --map-ahead-gap N
//          --no-fewest-to-map  --gpu-lag-events N (work in flight, default 128; 0 = none)
//          --repeat N (timing: best of N, 3)
//
// Lifespans are computed offline: the number of ticks (allocs + frees) between an allocation
// and its free; never-freed blocks are permanent. Predictors:
//   oracle    the true lifespan
//   constant  the same prediction for every block (the pool degenerates to one best-fit region)
//   noisy     the truth times a log-uniform random factor in [1/4, 4]
//   lastsize  online: the last lifespan observed for a free of the same size (0 before any)
// and, for reference, the other policies on the same sim: `torch` and `torch-expandable`
// (CachingPool, PyTorch's default policy and expandable segments) and `offline` (the offline
// planner of replay/oracle_planner.h, which knows every lifetime; one device call).
// Fragmentation is peak reserved (mapped granules) / peak live (requested bytes). Time per
// event is the wall time of the pool calls only (predictions are computed beforehand); the
// `setfit` line times a bare std::set best-fit with an address map, the reference for the
// hot-path budget.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "timeshare/common/units.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/pool/temporal/arena_free_ranges.h"
#include "timeshare/pool/caching/caching_pool.h"
#include "timeshare/pool/temporal/temporal_pool.h"
#include "timeshare/trace/events.h"
#include "timeshare/replay/oracle_planner.h"
#include "timeshare/replay/replayer.h"

namespace ts = timeshare;
using ts::trace::Event;
using ts::trace::Op;

namespace {

constexpr double kNoisyMaxFactor = 4.0;
constexpr std::size_t kSimHeadroomFactor = 4;  // sim capacity = peak live x this
constexpr std::size_t kAlignBytes = 512;
bool g_detail = false;  // --detail: print region usage at the peak (slows the replay)
bool g_dump = false;    // --dump: with --detail, every live block at the peak
const std::vector<std::uint64_t>* g_truth = nullptr;
// --gpu-lag-events N: the replay's work-in-flight model (0 = none)
std::uint64_t g_gpu_lag_events = ts::trace::kDefaultGpuLagEvents;

// ---- synthetic training-like traces ---------------------------------------------------------

class TraceBuilder {
 public:
  std::uint64_t alloc(std::uint64_t bytes, std::uint32_t stream = 0) {
    const std::uint64_t id = next_id_++;
    events_.push_back(Event{Op::kAlloc, {}, stream, id, bytes, time_us_++});
    bytes_.push_back(bytes);
    stream_.push_back(stream);
    return id;
  }
  void free(std::uint64_t id) {
    events_.push_back(Event{Op::kFree, {}, stream_[id], id, bytes_[id], time_us_++});
  }
  void scratch(std::uint64_t bytes) { free(alloc(bytes)); }
  std::vector<Event> take() { return std::move(events_); }

 private:
  std::vector<Event> events_;
  std::vector<std::uint64_t> bytes_;
  std::vector<std::uint32_t> stream_;
  std::uint64_t next_id_ = 0;
  std::uint64_t time_us_ = 0;
};

struct LayerShape {
  std::uint64_t param_bytes;
  std::uint64_t act_bytes;
  std::uint64_t small_bytes;  // bias-like and bookkeeping tensors
};

// Forward allocates saved activations and scratch; backward frees activations in reverse,
// allocating input-gradients (short) and weight gradients (freed at the optimizer step); the
// optimizer allocates its state once (permanent) and a few temporaries per step.
std::vector<Event> training_trace(const std::vector<LayerShape>& layers, int iterations,
                                  std::mt19937_64& rng, double shape_jitter) {
  TraceBuilder t;
  for (const auto& l : layers) {
    t.alloc(l.param_bytes);
    t.alloc(l.small_bytes);
  }
  std::vector<std::uint64_t> opt_state;
  std::uniform_real_distribution<double> jitter(1.0 - shape_jitter, 1.0 + shape_jitter);
  for (int it = 0; it < iterations; ++it) {
    const double scale = shape_jitter > 0 ? jitter(rng) : 1.0;
    auto act = [&](std::uint64_t b) {
      return std::max<std::uint64_t>(kAlignBytes, static_cast<std::uint64_t>(b * scale));
    };
    std::vector<std::uint64_t> saved;
    const std::uint64_t input = t.alloc(act(layers.front().act_bytes));
    for (const auto& l : layers) {
      t.scratch(act(l.act_bytes) * 2);
      const std::uint64_t tmp = t.alloc(act(l.act_bytes));
      saved.push_back(t.alloc(act(l.act_bytes)));
      saved.push_back(t.alloc(l.small_bytes));
      t.free(tmp);
      t.scratch(l.small_bytes);
    }
    const std::uint64_t loss = t.alloc(512);
    std::vector<std::uint64_t> grads;
    std::uint64_t grad_out = t.alloc(act(layers.back().act_bytes));
    for (std::size_t i = layers.size(); i-- > 0;) {
      const auto& l = layers[i];
      const std::uint64_t grad_in = t.alloc(act(l.act_bytes));
      t.scratch(act(l.act_bytes));
      grads.push_back(t.alloc(l.param_bytes));
      grads.push_back(t.alloc(l.small_bytes));
      t.free(saved.back());
      saved.pop_back();
      t.free(saved.back());
      saved.pop_back();
      t.free(grad_out);
      grad_out = grad_in;
    }
    t.free(grad_out);
    t.free(loss);
    t.free(input);
    // Optimizer step: state created on the first step and kept; temporaries per parameter.
    for (std::size_t i = 0; i < layers.size(); ++i) {
      if (it == 0) {
        opt_state.push_back(t.alloc(layers[i].param_bytes));
        opt_state.push_back(t.alloc(layers[i].param_bytes));
      }
      t.scratch(layers[i].param_bytes);
    }
    for (std::uint64_t g : grads) t.free(g);  // zero_grad(set_to_none=True)
  }
  return t.take();
}

struct NamedTrace {
  std::string name;
  std::vector<Event> events;
};

std::vector<NamedTrace> synthetic_traces(std::uint64_t seed, int iterations) {
  std::mt19937_64 rng(seed);
  std::vector<NamedTrace> out;
  {  // transformer-like: equal blocks, large activations
    std::vector<LayerShape> l(24, LayerShape{12 * ts::kMiB, 24 * ts::kMiB, 6 * ts::kKiB});
    out.push_back({"synth-transformer", training_trace(l, iterations, rng, 0.0)});
  }
  {  // CNN-like: activations shrink, parameters grow
    std::vector<LayerShape> l;
    for (int i = 0; i < 20; ++i) {
      const double f = static_cast<double>(i) / 19.0;
      l.push_back({static_cast<std::uint64_t>((0.05 + 9.0 * f) * ts::kMiB),
                   static_cast<std::uint64_t>((100.0 - 95.0 * f) * ts::kMiB), 2 * ts::kKiB});
    }
    out.push_back({"synth-cnn", training_trace(l, iterations, rng, 0.0)});
  }
  {  // small MLP: everything below a granule
    std::vector<LayerShape> l(16, LayerShape{256 * ts::kKiB, 96 * ts::kKiB, 512});
    out.push_back({"synth-small-mlp", training_trace(l, iterations, rng, 0.0)});
  }
  {  // random layer sizes from 512 B to 100 MiB, dynamic shapes (+-30% per iteration)
    std::uniform_real_distribution<double> lg(std::log(512.0), std::log(100.0 * ts::kMiB));
    std::vector<LayerShape> l;
    for (int i = 0; i < 30; ++i) {
      l.push_back({static_cast<std::uint64_t>(std::exp(lg(rng))),
                   static_cast<std::uint64_t>(std::exp(lg(rng))),
                   static_cast<std::uint64_t>(std::exp(lg(rng)) / 64)});
      l.back().small_bytes = std::max<std::uint64_t>(l.back().small_bytes, 512);
    }
    out.push_back({"synth-dynamic", training_trace(l, iterations, rng, 0.3)});
  }
  return out;
}

// ---- predictors ---------------------------------------------------------------------------------

std::vector<std::uint64_t> true_lifespans(const std::vector<Event>& ev, std::size_t allocs) {
  std::vector<std::uint64_t> at(allocs, 0);
  std::vector<std::uint64_t> life(allocs, ts::pool::kPermanentLifespanEvents);
  for (std::size_t i = 0; i < ev.size(); ++i) {
    if (ev[i].op == Op::kAlloc) at[ev[i].id] = i;
    else life[ev[i].id] = i - at[ev[i].id];
  }
  return life;
}

std::vector<std::uint64_t> predict(const std::string& kind, const std::vector<Event>& ev,
                                   const std::vector<std::uint64_t>& truth, std::uint64_t seed) {
  std::vector<std::uint64_t> p(truth.size(), 0);
  if (kind == "oracle") return truth;
  if (kind == "none") return p;  // no prediction: every block in the unpredicted region
  if (kind == "constant") {
    std::fill(p.begin(), p.end(), 1);
    return p;
  }
  if (kind == "noisy") {
    std::mt19937_64 rng(seed);
    std::uniform_real_distribution<double> f(-std::log(kNoisyMaxFactor), std::log(kNoisyMaxFactor));
    for (std::size_t i = 0; i < p.size(); ++i) {
      const double v = static_cast<double>(truth[i]) * std::exp(f(rng));
      p[i] = std::max<std::uint64_t>(1, static_cast<std::uint64_t>(v));
    }
    return p;
  }
  if (kind == "lastsize") {
    std::unordered_map<std::uint64_t, std::uint64_t> last;
    std::vector<std::uint64_t> at(truth.size(), 0);
    for (std::size_t i = 0; i < ev.size(); ++i) {
      if (ev[i].op == Op::kAlloc) {
        auto it = last.find(ev[i].bytes);
        p[ev[i].id] = it == last.end() ? 0 : it->second;
        at[ev[i].id] = i;
      } else {
        last[ev[i].bytes] = i - at[ev[i].id];
      }
    }
    return p;
  }
  std::fprintf(stderr, "unknown predictor '%s'\n", kind.c_str());
  std::exit(2);
}

// ---- a sim device that clocks its map/unmap calls ------------------------------------------

// Forwards to a SimBackend and sums the wall time of map, unmap, reserve and release, so the
// pool's own (placement) time can be told from the simulated device's.
class TimedBackend final : public ts::device::Backend {
 public:
  explicit TimedBackend(ts::device::SimBackend& sim) : sim_(sim) {}
  double device_ns() const noexcept { return device_ns_; }
  const char* name() const noexcept override { return "sim-timed"; }
  int device_index() const noexcept override { return 0; }
  ts::device::Status reserve(std::size_t b, void** out) override {
    return timed([&] { return sim_.reserve(b, out); });
  }
  ts::device::Status release(void* p, std::size_t b) override {
    return timed([&] { return sim_.release(p, b); });
  }
  ts::device::MemInfo mem_info() override { return sim_.mem_info(); }
  bool supports_virtual_memory() const noexcept override { return true; }
  std::size_t granule_bytes() const noexcept override { return sim_.granule_bytes(); }
  ts::device::Status va_reserve(std::size_t b, void** base) override { return sim_.va_reserve(b, base); }
  ts::device::Status va_release(void* p, std::size_t b) override { return sim_.va_release(p, b); }
  ts::device::Status map(void* a, std::size_t b) override {
    return timed([&] { return sim_.map(a, b); });
  }
  ts::device::Status unmap(void* a, std::size_t b) override {
    return timed([&] { return sim_.unmap(a, b); });
  }
  ts::device::Status map_alias(void* a, const void* from, std::size_t b) override {
    return timed([&] { return sim_.map_alias(a, from, b); });
  }
  ts::device::Status create_stream(ts::device::Stream* s) override { return sim_.create_stream(s); }
  ts::device::Status destroy_stream(ts::device::Stream s) override { return sim_.destroy_stream(s); }
  ts::device::Status create_event(ts::device::Event* e) override { return sim_.create_event(e); }
  ts::device::Status destroy_event(ts::device::Event e) override { return sim_.destroy_event(e); }
  ts::device::Status record(ts::device::Event e, ts::device::Stream s) override {
    return sim_.record(e, s);
  }
  bool query(ts::device::Event e) override { return sim_.query(e); }
  ts::device::Status stream_wait(ts::device::Stream s, ts::device::Event e) override {
    return sim_.stream_wait(s, e);
  }
  ts::device::Status synchronize_event(ts::device::Event e) override {
    return sim_.synchronize_event(e);
  }
  ts::device::Status synchronize_stream(ts::device::Stream s) override {
    return sim_.synchronize_stream(s);
  }
  ts::device::Status synchronize_device() override { return sim_.synchronize_device(); }
  ts::device::Status copy_async(void* d, const void* src, std::size_t b, ts::device::CopyKind k,
                                ts::device::Stream st) override {
    return sim_.copy_async(d, src, b, k, st);
  }
  ts::device::Status host_alloc_pinned(std::size_t b, void** out) override {
    return sim_.host_alloc_pinned(b, out);
  }
  ts::device::Status host_free_pinned(void* p) override { return sim_.host_free_pinned(p); }
  std::uint64_t now_ns() override { return sim_.now_ns(); }
  std::string last_error() const override { return sim_.last_error(); }

 private:
  template <class F>
  ts::device::Status timed(F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    const ts::device::Status st = f();
    device_ns_ += std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0)
                      .count();
    return st;
  }
  ts::device::SimBackend& sim_;
  double device_ns_ = 0;
};

// ---- replay -----------------------------------------------------------------------------------

struct Result {
  std::size_t peak_live_bytes = 0;
  std::size_t peak_reserved_bytes = 0;
  std::int64_t device_alloc = 0;
  std::int64_t device_free = 0;
  std::uint64_t granules_mapped = 0;    // temporal only: granules behind the map calls
  std::uint64_t granules_unmapped = 0;
  double ns_per_event = 0;
  double device_ns_per_event = 0;  // of which inside device calls (sim map/unmap/reserve)
  std::size_t ooms = 0;
  std::uint64_t device_faults = 0;  // the strict sim's (replay/replayer.h: work in flight)
  std::uint64_t device_waits = 0;
};

std::size_t peak_live(const std::vector<Event>& ev) {
  std::size_t live = 0, peak = 0;
  for (const Event& e : ev) {
    if (e.op == Op::kAlloc) live += e.bytes;
    else live -= e.bytes;
    peak = std::max(peak, live);
  }
  return peak;
}

// `policy` is "temporal" (with `prediction`), "torch" or "torch-expandable" (CachingPool).
Result replay(const std::vector<Event>& ev, std::size_t allocs, const std::string& policy,
              const std::vector<std::uint64_t>& prediction, const ts::pool::TemporalPoolOptions& o) {
  Result r;
  r.peak_live_bytes = peak_live(ev);
  ts::device::SimOptions so;
  so.backing = false;
  so.capacity_bytes = ts::round_up(std::max(r.peak_live_bytes * kSimHeadroomFactor, ts::kGiB),
                                   so.granule_bytes);
  ts::device::SimBackend sim(so);
  TimedBackend timed(sim);
  std::unique_ptr<ts::pool::Pool> owned;
  if (policy == "temporal") {
    owned = std::make_unique<ts::pool::TemporalPool>(&timed, o);
  } else {
    ts::pool::CachingPoolOptions co;
    co.expandable_segments = policy == "torch-expandable";
    owned = std::make_unique<ts::pool::CachingPool>(timed, co);
  }
  ts::pool::Pool& pool = *owned;
  std::int64_t detail_peak = 0;
  std::vector<ts::pool::TemporalPool::RegionUsage> detail;
  std::vector<ts::pool::TemporalPool::LiveBlockInfo> dump;
  std::vector<void*> ptr(allocs, nullptr);
  ts::trace::InFlightModel in_flight(ev.data(), ev.size(), g_gpu_lag_events, &sim);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < ev.size(); ++i) {
    const Event& e = ev[i];
    in_flight.before_event(i);
    if (e.op == Op::kAlloc) {
      const std::uint64_t p = prediction.empty() ? 0 : prediction[e.id];
      ptr[e.id] = pool.allocate(e.bytes, e.stream, {i, p, e.id});
      if (!ptr[e.id]) ++r.ooms;
    } else if (ptr[e.id]) {
      in_flight.before_free(i, e.stream, ptr[e.id], e.bytes);
      pool.deallocate(ptr[e.id], i);
    }
    if (g_detail && policy == "temporal") {
      const auto& rb = pool.stats().reserved_bytes[0];
      if (rb.current == rb.peak && rb.current > detail_peak) {
        detail_peak = rb.current;
        detail = static_cast<ts::pool::TemporalPool&>(pool).region_usage();
        if (g_dump) dump = static_cast<ts::pool::TemporalPool&>(pool).live_blocks();
      }
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  r.ns_per_event = std::chrono::duration<double, std::nano>(t1 - t0).count() /
                   static_cast<double>(std::max<std::size_t>(ev.size(), 1));
  r.device_ns_per_event = timed.device_ns() / static_cast<double>(std::max<std::size_t>(ev.size(), 1));
  for (std::size_t k = 0; k < detail.size(); ++k) {
    if (detail[k].blocks == 0) continue;
    std::printf("    at peak: region %zu: %zu blocks, %.2f MiB in %zu granules\n", k,
                detail[k].blocks, static_cast<double>(detail[k].bytes) / ts::kMiB,
                detail[k].granules);
  }
  std::sort(dump.begin(), dump.end(), [](auto& a, auto& b) { return a.addr < b.addr; });
  for (const auto& b : dump) {
    std::printf("    block addr=%#zx granule=%zu bytes=%zu region=%u id=%llu life=%llu\n",
                static_cast<std::size_t>(b.addr), static_cast<std::size_t>(b.addr / (2 * ts::kMiB)),
                b.bytes, b.region, static_cast<unsigned long long>(b.alloc_id),
                static_cast<unsigned long long>(g_truth ? (*g_truth)[b.alloc_id] : 0));
  }
  r.peak_reserved_bytes = static_cast<std::size_t>(pool.stats().reserved_bytes[0].peak);
  r.device_alloc = pool.stats().num_device_alloc;
  r.device_free = pool.stats().num_device_free;
  r.device_faults = sim.counters().device_faults;
  r.device_waits = sim.counters().waits;
  if (policy == "temporal") {
    const auto& tp = static_cast<const ts::pool::TemporalPool&>(pool);
    r.granules_mapped = tp.granules_mapped_total();
    r.granules_unmapped = tp.granules_unmapped_total();
  }
  return r;
}

// A bare best-fit allocator (std::set by size + address map, one unbounded range): the
// hot-path reference.
double setfit_ns_per_event(const std::vector<Event>& ev, std::size_t allocs) {
  ts::pool::ArenaFreeRanges free;
  free.insert(std::uintptr_t{1} << 40, std::size_t{1} << 44);
  std::unordered_map<std::uintptr_t, std::size_t> live;
  std::vector<std::uintptr_t> addr(allocs, 0);
  const auto t0 = std::chrono::steady_clock::now();
  for (const Event& e : ev) {
    if (e.op == Op::kAlloc) {
      const std::size_t b = ts::round_up(e.bytes, kAlignBytes);
      ts::pool::ArenaFreeRanges::Range r;
      free.take_best_fit(b, &r);
      if (r.bytes > b) free.insert(r.addr + b, r.bytes - b);
      live.emplace(r.addr, b);
      addr[e.id] = r.addr;
    } else {
      auto it = live.find(addr[e.id]);
      free.insert(it->first, it->second);
      live.erase(it);
    }
  }
  const auto t1 = std::chrono::steady_clock::now();
  return std::chrono::duration<double, std::nano>(t1 - t0).count() /
         static_cast<double>(std::max<std::size_t>(ev.size(), 1));
}

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t end = std::min(s.find(sep, start), s.size());
    if (end > start) out.push_back(s.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> predictors = {"oracle", "constant", "noisy", "lastsize", "torch", "torch-expandable", "offline"};
  std::vector<std::string> paths;
  bool synthetic = false;
  std::string write_dir;
  std::uint64_t seed = 1;
  int iterations = 8;
  int repeat = 3;
  ts::pool::TemporalPoolOptions o;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "%s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--synthetic") synthetic = true;
    else if (a == "--write-synthetic") write_dir = next();
    else if (a == "--predictors") predictors = split(next(), ',');
    else if (a == "--seed") seed = std::stoull(next());
    else if (a == "--iterations") iterations = std::stoi(next());
    else if (a == "--window-events") o.peak_window_events = std::stoull(next());
    else if (a == "--slack-granules") o.slack_granules = std::stoull(next());
    else if (a == "--slack-permille") o.slack_permille = std::stoull(next());
    else if (a == "--trim-oldest") o.trim_oldest_first = true;
    else if (a == "--classes") o.num_timed_classes = std::stoull(next());
    else if (a == "--class-base") o.class_base_events = std::stoull(next());
    else if (a == "--class-ratio") o.class_ratio = std::stoull(next());
    else if (a == "--no-borrow") o.borrow_mapped = false;
    else if (a == "--detail") g_detail = true;
    else if (a == "--dump") g_dump = g_detail = true;
    else if (a == "--borrow-down") o.borrow_down_max_distance = std::stoull(next());
    else if (a == "--longer-first") o.borrow_longer_first = true;
    else if (a == "--reassign") o.reassign = true;
    else if (a == "--unsafe-unmap") o.unsafe_unmap = true;
    else if (a == "--gpu-lag-events") g_gpu_lag_events = std::stoull(next());
    else if (a == "--lowest-of") o.lowest_of_fits = std::stoull(next());
    else if (a == "--borrow-distance") o.borrow_max_distance = std::stoull(next());
    else if (a == "--fit-candidates") o.mapped_fit_candidates = std::stoull(next());
    else if (a == "--fit-max-ratio") o.mapped_fit_max_ratio = std::stoull(next());
    else if (a == "--empty-runs") o.empty_run_candidates = std::stoull(next());
    else if (a == "--no-tail-first") o.mapped_tail_first = false;
    else if (a == "--map-ahead") o.map_ahead_granules = std::stoull(next());
    else if (a == "--map-ahead-permille") o.map_ahead_permille = std::stoull(next());
    else if (a == "--map-ahead-min") o.map_ahead_min_granules = std::stoull(next());
    else if (a == "--no-fewest-to-map") o.fewest_to_map = false;
    else if (a == "--snap") o.snap_to_granules = static_cast<unsigned>(std::stoul(next()));
    else if (a == "--map-ahead-page") o.map_ahead_page_granules = std::stoull(next());
    else if (a == "--map-ahead-gap") o.map_ahead_gap_events = std::stoull(next());
    else if (a == "--small-bytes") o.small_block_bytes = std::stoull(next());
    else if (a == "--forecast") o.forecast_window_events = std::stoull(next());
    else if (a == "--repeat") repeat = std::stoi(next());
    else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "unknown option %s (see the comment at the top of temporal_eval.cpp)\n",
                   a.c_str());
      return 2;
    } else paths.push_back(a);
  }
  std::vector<NamedTrace> traces;
  if (synthetic || !write_dir.empty()) traces = synthetic_traces(seed, iterations);
  if (!write_dir.empty()) {
    std::filesystem::create_directories(write_dir);
    for (const auto& t : traces) {
      std::string err;
      const std::string p = write_dir + "/" + t.name + ".tsev";
      if (!ts::trace::write_tsev(p, t.events, &err)) {
        std::fprintf(stderr, "%s: %s\n", p.c_str(), err.c_str());
        return 1;
      }
      std::printf("wrote %s (%zu events)\n", p.c_str(), t.events.size());
    }
    if (!synthetic) return 0;
  }
  for (const auto& p : paths) {
    NamedTrace t;
    t.name = std::filesystem::path(p).stem().string();
    std::string err;
    if (!ts::trace::read_tsev(p, &t.events, &err)) {
      std::fprintf(stderr, "%s: %s\n", p.c_str(), err.c_str());
      return 1;
    }
    traces.push_back(std::move(t));
  }
  if (traces.empty()) {
    std::fprintf(stderr, "no traces: pass .tsev files or --synthetic\n");
    return 2;
  }
  std::printf("%-24s %-16s %8s %12s %7s %8s %9s %8s %8s  %-20s %6s %6s\n", "trace", "predictor",
              "events", "peak_live", "frag", "dev_map", "dev_unmap", "ns/event", "dev_ns/ev",
              "granules map/unmap", "waits", "faults");
  for (const auto& t : traces) {
    std::size_t allocs = 0;
    const std::string bad = ts::trace::validate(t.events.data(), t.events.size(), &allocs);
    if (!bad.empty()) {
      std::fprintf(stderr, "%s: %s\n", t.name.c_str(), bad.c_str());
      return 1;
    }
    const auto truth = true_lifespans(t.events, allocs);
    g_truth = &truth;
    for (const auto& kind : predictors) {
      const bool reference = kind == "torch" || kind == "torch-expandable";
      if (kind == "offline") {
        const auto plan = ts::trace::plan_oracle(t.events.data(), t.events.size());
        const std::size_t live = peak_live(t.events);
        std::printf("%-24s %-16s %8zu %8.1f MiB %7.4f %8d %9d %8s\n", t.name.c_str(), "offline",
                    t.events.size(), static_cast<double>(live) / static_cast<double>(ts::kMiB),
                    static_cast<double>(plan.arena_bytes) / static_cast<double>(std::max<std::size_t>(live, 1)),
                    1, 0, "-");
        continue;
      }
      const auto pred = reference ? std::vector<std::uint64_t>{} : predict(kind, t.events, truth, seed);
      const std::string policy = reference ? kind : "temporal";
      Result r = replay(t.events, allocs, policy, pred, o);
      for (int k = 1; k < repeat; ++k) {
        const Result again = replay(t.events, allocs, policy, pred, o);
        if (again.ns_per_event < r.ns_per_event) {
          r.ns_per_event = again.ns_per_event;
          r.device_ns_per_event = again.device_ns_per_event;
        }
      }
      std::printf("%-24s %-16s %8zu %8.1f MiB %7.4f %8lld %9lld %8.1f %8.1f  %-20s %6llu %6llu%s\n",
                  t.name.c_str(), kind.c_str(), t.events.size(),
                  static_cast<double>(r.peak_live_bytes) / static_cast<double>(ts::kMiB),
                  static_cast<double>(r.peak_reserved_bytes) /
                      static_cast<double>(std::max<std::size_t>(r.peak_live_bytes, 1)),
                  static_cast<long long>(r.device_alloc), static_cast<long long>(r.device_free),
                  r.ns_per_event, r.device_ns_per_event,
                  reference ? "-"
                            : (std::to_string(r.granules_mapped) + "/" +
                               std::to_string(r.granules_unmapped))
                                  .c_str(),
                  static_cast<unsigned long long>(r.device_waits),
                  static_cast<unsigned long long>(r.device_faults), r.ooms ? " OOM!" : "");
    }
    double setfit_best = setfit_ns_per_event(t.events, allocs);
    for (int k = 1; k < repeat; ++k) {
      setfit_best = std::min(setfit_best, setfit_ns_per_event(t.events, allocs));
    }
    std::printf("%-24s %-16s %8zu %12s %7s %8s %9s %8.1f\n", t.name.c_str(), "setfit",
                t.events.size(), "-", "-", "-", "-", setfit_best);
  }
  return 0;
}
