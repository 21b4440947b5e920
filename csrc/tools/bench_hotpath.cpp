// bench_hotpath: the cost of one malloc + free pair on the allocator's hot path, timeshare
// (TemporalPool + lifespan predictor) against the `torch` reference policy (CachingPool),
// measured in the same run on the same traces.
//
// Each trace's events are replayed in order with their real sizes and streams on a simulated
// device with fake addresses (as replay/replayer.cpp does); the clock is the event index. A
// variant is a pool, a predictor, or both:
//
//   torch                    CachingPool, no predictor (the reference)
//   temporal                 TemporalPool without predictions (hint 0: the "unknown" region)
//   temporal+KIND            TemporalPool, predictor KIND answering every allocation
//   KIND                     the predictor alone (no pool)
//   ...@warm                 (any variant with a predictor) the predictor first sees the
//                            trace over and over, untimed, for --warm-events events (default
//                            1.3 M: past the fifth scheduled retraining, where the back-off of
//                            the schedule reaches its cap), and the run waits (up to
//                            --warm-wait seconds) until a learning predictor has published a
//                            model; then the timed replay continues its clock and ids on a
//                            fresh pool: the steady state of a long job (LSTM head evaluated,
//                            retrainings on their backed-off schedule or on drift)
//   ...@async                the predictor fed through predict::AsyncPredictor, as the
//                            allocator does unless predict_sync: the timed loop pushes events
//                            (hint 0, the pool does not wait); the predictor runs on its thread
//   ...@ff                   (with @async) as the allocator runs with free_forecast:128: the
//                            pool reads the answer board on every allocation and cuts its
//                            map-ahead by the predicted frees
//
// KIND is a predict::make_predictor kind (constant, table, hybrid_nolstm, hybrid, ...). Predictors
// run in REAL-TIME mode (deterministic = false): `hybrid` has its background trainer thread, as
// inside the allocator; its cost on the hot path includes the competition for cores.
//
// Timing: rounds are interleaved (round r runs every trace x variant once before round r + 1),
// so a burst of load on the shared machine hits every variant alike; per (trace, variant) the
// median over rounds is reported, and the ratio to torch is the median over rounds of the
// ratio to torch's time in the same round. ns per pair = event-loop time / allocations (an
// allocation and its free; allocations never freed count as pairs too). Setup (pool, predictor,
// trainer thread start) and teardown are outside the timed loop.
//
// Event rate: with --rates R (events per second; 0 = as fast as possible), events are replayed
// in bursts of --burst events, and after each burst the loop spins until the burst's share of
// wall time at rate R is over. Only the bursts are timed. At low rates a background trainer has
// more time between events; at the maximum rate it competes with every event.
//
//   bench_hotpath [--rounds N] [--rates R1,R2] [--burst N] [--variants a,b] [--warm-wait S]
//                 [--warm-events N (default 1.3 M)]
//                 [--trainer-nice N (default: PredictorOptions' default)] [--json PATH]
//                 trace.tsev ...
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "timeshare/allocator/allocator.h"
#include "timeshare/common/options.h"
#include "timeshare/common/page_faults.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/pool/pool.h"
#include "timeshare/predict/async_predictor.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/trace/events.h"
#include "tool_common.h"

using namespace timeshare;

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kDefaultRounds = 5;
constexpr std::size_t kDefaultBurstEvents = 64;
constexpr std::size_t kReplayCapacityBytes = std::size_t{1} << 40;  // never runs out

const std::vector<std::string> kDefaultVariants = {
    "torch", "temporal+constant", "temporal+hybrid_nolstm", "temporal+hybrid",
    "temporal+hybrid@warm", "hybrid_nolstm", "hybrid@warm"};

constexpr double kDefaultWarmWaitSeconds = 30.0;
constexpr std::size_t kDefaultWarmEvents = 1'300'000;  // @warm: see the top of the file
constexpr auto kWarmPoll = std::chrono::milliseconds(5);
constexpr std::uint64_t kForecastWindowEvents = 128;  // @ff: free_forecast:128

struct Variant {
  std::string name;
  std::string pool;   // "torch", "temporal" or "" (predictor alone)
  std::string kind;   // predictor kind, "" for none
  bool warm = false;
  bool async = false;  // fed through predict::AsyncPredictor (the allocator's default)
  bool forecast = false;  // @ff: answers from the board, the pool's free forecast on
};

struct Run {
  double ns_per_pair = 0.0;
  std::uint64_t ooms = 0;
  std::uint64_t retrains = 0;        // by the end of the timed loop
  std::uint64_t lstm_evaluations = 0;  // in the timed loop
  bool model_active = false;         // a model answered in the timed loop
  std::uint64_t page_faults = 0;     // minor faults during the timed loop (whole process)
  std::uint64_t dropped = 0;         // @async: events the feed dropped (its thread fell behind)
};

struct Cell {
  std::string trace;
  double rate = 0.0;
  std::string variant;
  std::size_t events = 0;
  std::size_t allocs = 0;
  std::vector<Run> runs;
};

using tools::split;

bool parse_variant(const std::string& full, Variant* v, std::string* why) {
  v->name = full;
  std::string spec = full;
  for (bool again = true; again;) {
    again = false;
    if (spec.size() > 5 && spec.ends_with("@warm")) {
      v->warm = again = true;
      spec.resize(spec.size() - 5);
    }
    if (spec.size() > 3 && spec.ends_with("@ff")) {
      v->forecast = again = true;
      spec.resize(spec.size() - 3);
    }
    if (spec.size() > 6 && spec.ends_with("@async")) {
      v->async = again = true;
      spec.resize(spec.size() - 6);
    }
  }
  const std::size_t plus = spec.find('+');
  const std::string head = spec.substr(0, plus);
  if (head == "torch") {
    if (plus != std::string::npos) {
      *why = "torch takes no predictor";
      return false;
    }
    if (v->warm || v->async) {
      *why = v->warm ? "@warm needs a predictor" : "@async needs a predictor";
      return false;
    }
    v->pool = "torch";
    return true;
  }
  if (head == "temporal") {
    v->pool = "temporal";
    v->kind = plus == std::string::npos ? "" : spec.substr(plus + 1);
  } else if (plus == std::string::npos) {
    v->kind = spec;
  } else {
    *why = "expected torch, temporal, temporal+KIND or KIND";
    return false;
  }
  if (v->forecast && !v->async) {
    *why = "@ff needs @async (the answer board)";
    return false;
  }
  if ((v->warm || v->async) && v->kind.empty()) {
    *why = v->warm ? "@warm needs a predictor" : "@async needs a predictor";
    return false;
  }
  if (!v->kind.empty()) {
    predict::PredictorOptions o;
    o.kind = v->kind;
    if (!predict::make_predictor(o)) {
      *why = "unknown predictor kind '" + v->kind + "'";
      return false;
    }
  }
  return true;
}

// Spins until `t` (a sleep would oversleep by tens of microseconds).
void spin_until(Clock::time_point t) {
  while (Clock::now() < t) {
  }
}

// Feeds the trace to the predictor (untimed) pass after pass, each continuing the clock and the
// ids of the one before, until at least `events` events have gone in; returns the passes made.
// Then waits until a learning predictor has a model (or the wait is over).
std::size_t warm_up(predict::LifespanPredictor& p, const trace::Trace& t, std::size_t events,
                    double wait_s) {
  const std::size_t n = t.events.size();
  const std::size_t passes = n == 0 ? 1 : std::max<std::size_t>(1, (events + n - 1) / n);
  for (std::size_t pass = 0; pass < passes; ++pass) {
    const std::uint64_t clock0 = pass * n, id0 = pass * t.allocs;
    for (std::size_t i = 0; i < n; ++i) {
      const trace::Event& e = t.events[i];
      if (e.op == trace::Op::kAlloc) {
        p.on_alloc(tools::alloc_event(e, clock0 + i, id0));
      } else {
        p.on_free({id0 + e.id, clock0 + i, e.time_us});
      }
    }
  }
  if (dynamic_cast<const predict::HybridPredictor*>(&p) == nullptr) return passes;
  // Too few labels for a first training: nothing to wait for.
  if (p.stats().observed < predict::PredictorOptions{}.min_train_samples) return passes;
  const auto deadline = Clock::now() + std::chrono::duration<double>(wait_s);
  while (p.stats().retrains == 0 && Clock::now() < deadline) std::this_thread::sleep_for(kWarmPoll);
  return passes;
}

int g_trainer_nice = predict::kDefaultTrainerNice;
std::size_t g_warm_events = kDefaultWarmEvents;

Run run_once(const Variant& v, const trace::Trace& t, double rate, std::size_t burst,
             double warm_wait_s) {
  device::SimOptions so;
  so.capacity_bytes = kReplayCapacityBytes;
  so.backing = false;
  device::SimBackend backend(so);
  // The allocator's factory builds the pool and the feed from the options, as it runs them.
  Options conf;
  if (v.forecast) conf.free_forecast_events = kForecastWindowEvents;
  if (v.pool == "torch") conf.policy = PolicyKind::kTorch;
  std::unique_ptr<pool::Pool> pool;
  if (!v.pool.empty()) pool = make_pool(conf, backend);
  std::unique_ptr<predict::LifespanPredictor> predictor;
  if (!v.kind.empty()) {
    predict::PredictorOptions o;
    o.kind = v.kind;
    o.deterministic = false;  // as in production: trainer thread for the LSTM kinds
    o.trainer_nice = g_trainer_nice;
    predictor = predict::make_predictor(o);
  }
  // With @warm the timed replay continues the warm-up pass's clock and ids.
  std::uint64_t clock0 = 0, id0 = 0;
  if (v.warm) {
    const std::size_t passes = warm_up(*predictor, t, g_warm_events, warm_wait_s);
    clock0 = passes * t.events.size();
    id0 = passes * t.allocs;
  }
  const auto* hybrid = dynamic_cast<const predict::HybridPredictor*>(predictor.get());
  if (v.async) {  // after the warm-up: the timed loop only pushes events to the feed
    predictor = make_predictor_stack(std::move(predictor), conf, nullptr, /*async=*/true);
  }
  const std::uint64_t evals0 = hybrid ? hybrid->lstm_evaluations() : 0;
  std::vector<void*> ptrs(t.allocs, nullptr);
  Run r;
  const std::size_t n = t.events.size();
  const std::size_t step = rate > 0.0 ? std::max<std::size_t>(burst, 1) : n;
  const auto burst_period = std::chrono::duration<double>(double(step) / std::max(rate, 1e-9));
  double timed_ns = 0.0;
  const std::uint64_t faults0 = minor_page_faults();
  const Clock::time_point begin = Clock::now();
  for (std::size_t from = 0, b = 0; from < n; from += step, ++b) {
    const std::size_t to = std::min(n, from + step);
    const Clock::time_point t0 = Clock::now();
    for (std::size_t i = from; i < to; ++i) {
      const trace::Event& e = t.events[i];
      if (e.op == trace::Op::kAlloc) {
        pool::AllocHint hint;
        hint.now_events = clock0 + i;
        hint.alloc_id = id0 + e.id;
        if (predictor) {
          hint.predicted_lifespan = predictor->on_alloc(tools::alloc_event(e, clock0 + i, id0));
        }
        if (pool) {
          void* p = pool->allocate(e.bytes, static_cast<device::Stream>(e.stream), hint);
          if (p == nullptr && e.bytes > 0) ++r.ooms;
          ptrs[e.id] = p;
        }
      } else {
        if (pool && ptrs[e.id] != nullptr) pool->deallocate(ptrs[e.id], clock0 + i);
        if (predictor) predictor->on_free({id0 + e.id, clock0 + i, e.time_us});
      }
    }
    const Clock::time_point t1 = Clock::now();
    timed_ns += std::chrono::duration<double, std::nano>(t1 - t0).count();
    if (rate > 0.0) {
      spin_until(begin + std::chrono::duration_cast<Clock::duration>(burst_period * double(b + 1)));
    }
  }
  r.page_faults = minor_page_faults() - faults0;
  r.ns_per_pair = t.allocs ? timed_ns / double(t.allocs) : 0.0;
  if (predictor) {
    r.retrains = predictor->stats().retrains;
    r.model_active = predictor->stats().model_active;
  }
  if (hybrid) r.lstm_evaluations = hybrid->lstm_evaluations() - evals0;  // stats() drained it
  if (const auto* a = dynamic_cast<const predict::AsyncPredictor*>(predictor.get())) {
    r.dropped = a->dropped();
  }
  return r;
}

double median(std::vector<double> v) {
  if (v.empty()) return 0.0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : 0.5 * (v[m - 1] + v[m]);
}

std::string json_escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    if (static_cast<unsigned char>(c) < 0x20) continue;
    out += c;
  }
  return out;
}

bool write_json(const std::string& path, int rounds, std::size_t burst,
                const std::vector<Cell>& cells) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (!f) return false;
  std::fprintf(f, "{\n  \"rounds\": %d,\n  \"burst_events\": %zu,\n  \"cells\": [\n", rounds, burst);
  for (std::size_t c = 0; c < cells.size(); ++c) {
    const Cell& x = cells[c];
    std::fprintf(f,
                 "    {\"trace\": \"%s\", \"rate\": %.0f, \"variant\": \"%s\", \"events\": %zu, "
                 "\"allocs\": %zu, \"ns_per_pair\": [",
                 json_escape(x.trace).c_str(), x.rate, json_escape(x.variant).c_str(), x.events,
                 x.allocs);
    std::uint64_t ooms = 0, retrains = 0, evals = 0, active = 0, faults = 0, dropped = 0;
    for (std::size_t r = 0; r < x.runs.size(); ++r) {
      std::fprintf(f, "%s%.2f", r ? ", " : "", x.runs[r].ns_per_pair);
      ooms += x.runs[r].ooms;
      retrains = std::max(retrains, x.runs[r].retrains);
      evals = std::max(evals, x.runs[r].lstm_evaluations);
      active += x.runs[r].model_active;
      faults = std::max(faults, x.runs[r].page_faults);
      dropped += x.runs[r].dropped;
    }
    std::fprintf(f,
                 "], \"ooms\": %llu, \"max_retrains\": %llu, \"max_lstm_evaluations\": %llu, "
                 "\"model_active_runs\": %llu, \"max_page_faults\": %llu, \"dropped\": %llu}%s\n",
                 (unsigned long long)ooms, (unsigned long long)retrains,
                 (unsigned long long)evals, (unsigned long long)active,
                 (unsigned long long)faults, (unsigned long long)dropped,
                 c + 1 < cells.size() ? "," : "");
  }
  std::fprintf(f, "  ]\n}\n");
  return std::fclose(f) == 0;
}

}  // namespace

int main(int argc, char** argv) {
  int rounds = kDefaultRounds;
  std::size_t burst = kDefaultBurstEvents;
  std::vector<double> rates = {0.0};
  std::vector<std::string> variant_specs = kDefaultVariants;
  std::string json_path;
  double warm_wait_s = kDefaultWarmWaitSeconds;
  std::vector<trace::Trace> traces;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_hotpath: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--rounds") {
      rounds = std::max(1, std::atoi(next().c_str()));
    } else if (a == "--burst") {
      burst = std::max<std::size_t>(1, std::strtoull(next().c_str(), nullptr, 10));
    } else if (a == "--rates") {
      rates.clear();
      for (const std::string& s : split(next(), ',')) rates.push_back(std::max(0.0, std::atof(s.c_str())));
    } else if (a == "--variants") {
      variant_specs = split(next(), ',');
    } else if (a == "--json") {
      json_path = next();
    } else if (a == "--trainer-nice") {
      g_trainer_nice = std::atoi(next().c_str());
    } else if (a == "--warm-wait") {
      warm_wait_s = std::max(0.0, std::atof(next().c_str()));
    } else if (a == "--warm-events") {
      g_warm_events = std::strtoull(next().c_str(), nullptr, 10);
    } else if (a == "--help" || a == "-h") {
      std::printf("usage: bench_hotpath [--rounds N] [--rates R1,R2 (events/s, 0 = max)] "
                  "[--burst N] [--variants torch,temporal+KIND,KIND,...,VARIANT@warm] "
                  "[--warm-wait SECONDS] [--warm-events N] [--trainer-nice N] [--json PATH] trace.tsev ...\n");
      return 0;
    } else {
      trace::Trace t;
      std::string error;
      if (!trace::load_trace(a, &t, &error)) {
        std::fprintf(stderr, "bench_hotpath: %s\n", error.c_str());
        return 1;
      }
      traces.push_back(std::move(t));
    }
  }
  if (traces.empty()) {
    std::fprintf(stderr, "bench_hotpath: no traces (give .tsev files)\n");
    return 2;
  }
  std::vector<Variant> variants;
  for (const std::string& s : variant_specs) {
    Variant v;
    std::string why;
    if (!parse_variant(s, &v, &why)) {
      std::fprintf(stderr, "bench_hotpath: variant '%s': %s\n", s.c_str(), why.c_str());
      return 2;
    }
    variants.push_back(v);
  }
  const bool have_torch = std::any_of(variants.begin(), variants.end(),
                                      [](const Variant& v) { return v.pool == "torch"; });

  // cells[(rate * traces + trace) * variants + variant]
  std::vector<Cell> cells;
  for (double rate : rates) {
    for (const trace::Trace& t : traces) {
      for (const Variant& v : variants) {
        Cell c;
        c.trace = t.name;
        c.rate = rate;
        c.variant = v.name;
        c.events = t.events.size();
        c.allocs = t.allocs;
        cells.push_back(std::move(c));
      }
    }
  }
  for (int r = 0; r < rounds; ++r) {
    std::size_t k = 0;
    for (double rate : rates) {
      for (const trace::Trace& t : traces) {
        for (const Variant& v : variants) {
          cells[k++].runs.push_back(run_once(v, t, rate, burst, warm_wait_s));
        }
      }
    }
    std::fprintf(stderr, "bench_hotpath: round %d/%d done\n", r + 1, rounds);
  }

  std::printf("%-22s %10s %-24s %10s %10s %9s\n", "trace", "rate", "variant", "ns/pair",
              "min", "vs torch");
  const std::size_t nv = variants.size();
  for (std::size_t base = 0; base < cells.size(); base += nv) {
    const Cell* torch = nullptr;
    for (std::size_t j = 0; j < nv; ++j) {
      if (variants[j].pool == "torch") torch = &cells[base + j];
    }
    for (std::size_t j = 0; j < nv; ++j) {
      const Cell& c = cells[base + j];
      std::vector<double> ns, ratio;
      for (std::size_t r = 0; r < c.runs.size(); ++r) {
        ns.push_back(c.runs[r].ns_per_pair);
        if (torch && torch->runs[r].ns_per_pair > 0) {
          ratio.push_back(c.runs[r].ns_per_pair / torch->runs[r].ns_per_pair);
        }
      }
      const std::string rate = c.rate > 0 ? std::to_string(std::llround(c.rate)) : "max";
      char ratio_s[32] = "-";
      if (have_torch && !ratio.empty()) std::snprintf(ratio_s, sizeof ratio_s, "%.2f", median(ratio));
      std::printf("%-22s %10s %-24s %10.1f %10.1f %9s\n", c.trace.c_str(), rate.c_str(),
                  c.variant.c_str(), median(ns), *std::min_element(ns.begin(), ns.end()), ratio_s);
    }
  }
  if (!json_path.empty() && !write_json(json_path, rounds, burst, cells)) {
    std::fprintf(stderr, "bench_hotpath: cannot write %s\n", json_path.c_str());
    return 1;
  }
  return 0;
}
