// predict_eval: replays allocation traces through every lifespan predictor kind, online from the
// first event, and prints per trace and kind: within-2x share, median |log2 error|, within-2x
// after the first detected iteration ("warm"), and ns per event (on_alloc + on_free).
//
//   predict_eval [options] [trace.tsev ...]
//     --synthetic          add three synthetic traces (fixed shape, varying length, drift)
//     --iterations N       training iterations per synthetic trace (default 30)
//     --kinds a,b,c        kinds to run (default: all)
//     --realtime           background trainer thread instead of deterministic replay
//     --explain KIND       bucket KIND's warm misses (lifespan, size, aligned twin in the previous
//                          marked iteration, detector vs marks); marks from NAME.iters beside
//                          NAME.tsev (event indices of iteration starts, one a line)
//     --checksum           also print a hash of every prediction (to check that a change of the
//                          predictor's code leaves its deterministic answers bit for bit the same)
//     --weights PATH       pretrained LSTM weights for kinds hybrid and lstm_pre ("none": from
//                          scratch; default: $TIMESHARE_LSTM_WEIGHTS, else beside the binary)
//     --gate-start N       with pretrained weights: the global gate's start (PredictorOptions::
//                          pretrained_gate_start)
//     cold2x / mwarm2x     within 2x over the first marked iteration / from the second mark
//                          (marks from NAME.iters; -1 without marks), as the replay JSON's
//                          lifespan_within_2x_cold / lifespan_within_2x_warm
//     --hidden N --context-k K --retrain-events N --seed S --lag N --train-steps N
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "timeshare/predict/hashing.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/period_detector.h"
#include "timeshare/predict/synthetic_trace.h"
#include "timeshare/trace/events.h"
#include "tool_common.h"

using namespace timeshare;
using namespace timeshare::predict;

namespace {

struct Figures {
  double within_2x = 0.0;
  double median_abs_log2 = 0.0;
  double warm_within_2x = 0.0;
  double cold_within_2x = -1.0;   // first marked iteration (-1: no marks)
  double marked_warm_within_2x = -1.0;   // from the second mark (-1: no marks)
  double ns_per_event = 0.0;
  std::size_t scored = 0;
};

using tools::split;

// Allocation index after which the first iteration is over, by the same detector the
// predictors use (SIZE_MAX when no period is ever found).
std::uint64_t warm_start_alloc(const std::vector<trace::Event>& events) {
  PeriodDetector d;
  for (const auto& e : events) {
    if (e.op != trace::Op::kAlloc) continue;
    d.push(e.bytes);
    if (d.first_confirmed_at() != UINT64_MAX) return d.first_confirmed_at();
  }
  return UINT64_MAX;
}

Figures replay(const std::vector<trace::Event>& events, const std::vector<std::uint64_t>& truth,
               std::uint64_t warm_from, const std::vector<std::uint64_t>& marks,
               LifespanPredictor* p, std::vector<std::uint64_t>* pred_out = nullptr) {
  std::vector<std::uint64_t> pred(truth.size(), 0);
  std::vector<std::uint64_t> at(truth.size(), 0);   // event index of each allocation
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < events.size(); ++i) {
    const trace::Event& e = events[i];
    if (e.op == trace::Op::kAlloc) {
      pred[e.id] = p->on_alloc(tools::alloc_event(e, i));
      at[e.id] = i;
    } else {
      FreeEvent f;
      f.alloc_id = e.id;
      f.now_events = i;
      f.now_us = e.time_us;
      p->on_free(f);
    }
  }
  const double ns =
      std::chrono::duration<double, std::nano>(std::chrono::steady_clock::now() - t0).count();
  Figures f;
  f.ns_per_event = events.empty() ? 0.0 : ns / double(events.size());
  std::vector<double> err;
  std::size_t within = 0, warm = 0, warm_within = 0;
  // The replayer's windows (replay/replayer.h): cold = [first mark, second mark), warm = from
  // the second mark.
  const bool marked = marks.size() >= 2;
  const std::uint64_t cold_from = marked ? marks[0] : 0, cold_to = marked ? marks[1] : 0;
  std::size_t cold = 0, cold_within = 0, mwarm = 0, mwarm_within = 0;
  for (std::size_t id = 0; id < truth.size(); ++id) {
    if (truth[id] == 0) continue;
    const double e = std::fabs(std::log2(double(pred[id])) - std::log2(double(truth[id])));
    err.push_back(e);
    const bool ok = e <= 1.0;
    within += ok;
    if (id > warm_from) {
      ++warm;
      warm_within += ok;
    }
    if (marked && at[id] >= cold_from && at[id] < cold_to) {
      ++cold;
      cold_within += ok;
    } else if (marked && at[id] >= cold_to) {
      ++mwarm;
      mwarm_within += ok;
    }
  }
  if (marked) {
    f.cold_within_2x = cold ? double(cold_within) / double(cold) : 0.0;
    f.marked_warm_within_2x = mwarm ? double(mwarm_within) / double(mwarm) : 0.0;
  }
  f.scored = err.size();
  if (!err.empty()) {
    std::nth_element(err.begin(), err.begin() + err.size() / 2, err.end());
    f.median_abs_log2 = err[err.size() / 2];
    f.within_2x = double(within) / double(err.size());
  }
  f.warm_within_2x = warm ? double(warm_within) / double(warm) : 0.0;
  if (pred_out) *pred_out = std::move(pred);
  return f;
}

using tools::read_marks;

constexpr int kLifeBuckets = 6;
constexpr const char* kLifeBucketNames[kLifeBuckets] = {"1-3", "4-15", "16-255", "256-4095",
                                                        "4096-1iter", ">1iter"};
constexpr int kSizeBuckets = 4;
constexpr const char* kSizeBucketNames[kSizeBuckets] = {"<4KiB", "<1MiB", "<64MiB", ">=64MiB"};
enum Aligned : int { kNoAligned, kAlignedSame, kAlignedDiffers, kAlignedAlive, kAlignedCount };
constexpr const char* kAlignedNames[kAlignedCount] = {
    "no aligned twin (shape differs)", "twin within 2x, known at alloc",
    "twin differs >2x (nondeterminism)", "twin within 2x, still live at alloc"};

// --explain: buckets the warm misses of one kind against the trace's own iteration marks. The
// allocation at position q of iteration j is "aligned" with position q of iteration j-1 when
// both iterations have the same allocation count and the sizes agree.
void explain(const trace::Trace& t, const std::vector<std::uint64_t>& marks,
             const std::vector<std::uint64_t>& truth, const std::vector<std::uint64_t>& pred,
             std::uint64_t warm_from) {
  const std::size_t n_ids = truth.size();
  std::vector<std::uint64_t> alloc_tick(n_ids, 0), bytes(n_ids, 0);
  std::vector<std::vector<std::uint64_t>> iters(marks.size() + 1);
  std::size_t it = 0;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    while (it < marks.size() && i >= marks[it]) ++it;
    const trace::Event& e = t.events[i];
    if (e.op != trace::Op::kAlloc) continue;
    alloc_tick[e.id] = i;
    bytes[e.id] = e.bytes;
    iters[it].push_back(e.id);
  }
  std::vector<std::int64_t> twin(n_ids, -1);
  std::uint64_t iter_ticks = 0;
  for (std::size_t j = 2; j < iters.size(); ++j) {   // iters[0]: before the first mark
    if (iters[j].size() != iters[j - 1].size() || iters[j].empty()) continue;
    iter_ticks = std::max<std::uint64_t>(iter_ticks, alloc_tick[iters[j][0]] - alloc_tick[iters[j - 1][0]]);
    for (std::size_t q = 0; q < iters[j].size(); ++q) {
      if (bytes[iters[j][q]] == bytes[iters[j - 1][q]]) twin[iters[j][q]] = std::int64_t(iters[j - 1][q]);
    }
  }
  if (iter_ticks == 0) iter_ticks = UINT64_MAX;
  std::uint64_t warm = 0, miss = 0, over = 0;
  std::uint64_t by_life[kLifeBuckets][2] = {}, by_size[kSizeBuckets][2] = {};
  std::uint64_t by_aligned[kAlignedCount][2] = {};
  for (std::size_t id = std::size_t(warm_from + 1); id < n_ids; ++id) {
    if (truth[id] == 0 || pred[id] == 0) continue;
    const double err = std::log2(double(pred[id])) - std::log2(double(truth[id]));
    const bool ok = std::fabs(err) <= 1.0;
    ++warm;
    miss += !ok;
    over += !ok && err > 0;
    const std::uint64_t l = truth[id];
    const int lb = l < 4 ? 0 : l < 16 ? 1 : l < 256 ? 2 : l < 4096 ? 3 : l <= iter_ticks ? 4 : 5;
    const std::uint64_t b = bytes[id];
    const int sb = b < (1u << 12) ? 0 : b < (1u << 20) ? 1 : b < (std::uint64_t{1} << 26) ? 2 : 3;
    int ab = kNoAligned;
    if (twin[id] >= 0) {
      const std::uint64_t tl = truth[std::size_t(twin[id])];
      const bool close = tl > 0 && std::fabs(std::log2(double(tl)) - std::log2(double(l))) <= 1.0;
      const bool live = tl == 0 || alloc_tick[std::size_t(twin[id])] + tl > alloc_tick[id];
      ab = !close ? kAlignedDiffers : live ? kAlignedAlive : kAlignedSame;
    }
    ++by_life[lb][0]; by_life[lb][1] += !ok;
    ++by_size[sb][0]; by_size[sb][1] += !ok;
    ++by_aligned[ab][0]; by_aligned[ab][1] += !ok;
  }
  std::printf("  explain %s: warm allocations %llu, misses %llu (%.4f), over-predicted %llu, "
              "iteration %llu ticks, %zu marks\n", t.name.c_str(), (unsigned long long)warm,
              (unsigned long long)miss, warm ? double(miss) / double(warm) : 0.0,
              (unsigned long long)over, (unsigned long long)iter_ticks, marks.size());
  auto row = [&](const char* what, const char* name, const std::uint64_t* c) {
    std::printf("    %-9s %-38s n=%8llu  misses=%7llu  miss_rate=%.4f  share_of_misses=%.4f\n",
                what, name, (unsigned long long)c[0], (unsigned long long)c[1],
                c[0] ? double(c[1]) / double(c[0]) : 0.0, miss ? double(c[1]) / double(miss) : 0.0);
  };
  for (int i = 0; i < kLifeBuckets; ++i) row("lifespan", kLifeBucketNames[i], by_life[i]);
  for (int i = 0; i < kSizeBuckets; ++i) row("size", kSizeBucketNames[i], by_size[i]);
  for (int i = 0; i < kAlignedCount; ++i) row("aligned", kAlignedNames[i], by_aligned[i]);
  // The detector against the marks: share of warm allocations where its period equals the
  // marked iteration's allocation count.
  PeriodDetector d;
  std::uint64_t seen = 0, right = 0;
  std::size_t k = 0;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    while (k < marks.size() && i >= marks[k]) ++k;
    const trace::Event& e = t.events[i];
    if (e.op != trace::Op::kAlloc) continue;
    if (e.id > warm_from && k < iters.size()) {
      ++seen;
      right += d.period() == iters[k].size();
    }
    d.push(e.bytes);
  }
  std::printf("    detector period == marked allocations per iteration on %.4f of warm allocations "
              "(final period %llu, marked %zu)\n", seen ? double(right) / double(seen) : 0.0,
              (unsigned long long)d.period(), iters.size() > 2 ? iters[2].size() : 0);
}

}  // namespace

int main(int argc, char** argv) {
  PredictorOptions base;
  base.deterministic = true;
  std::vector<std::string> kinds = kPredictorKinds;
  std::vector<trace::Trace> traces;
  bool synthetic = false;
  int synthetic_iterations = SyntheticTraceOptions{}.iterations;
  std::string explain_kind;
  bool checksum = false;
  std::vector<std::vector<std::uint64_t>> marks;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "predict_eval: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--synthetic") synthetic = true;
    else if (a == "--iterations") synthetic_iterations = std::atoi(next().c_str());
    else if (a == "--kinds") kinds = split(next(), ',');
    else if (a == "--realtime") base.deterministic = false;
    else if (a == "--explain") explain_kind = next();
    else if (a == "--checksum") checksum = true;
    else if (a == "--hidden") base.hidden = std::atoi(next().c_str());
    else if (a == "--context-k") base.context_k = std::atoi(next().c_str());
    else if (a == "--retrain-events") base.retrain_interval_events = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--seed") base.seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--lag") base.lag_allocs = std::atoi(next().c_str());
    else if (a == "--train-steps") base.train_steps = std::atoi(next().c_str());
    else if (a == "--weights") base.lstm_weights = next();
    else if (a == "--gate-start") base.pretrained_gate_start = std::atoi(next().c_str());
    else if (a == "--help" || a == "-h") {
      std::printf("usage: predict_eval [--synthetic] [--kinds a,b] [--realtime] [--hidden N] "
                  "[--context-k K] [--retrain-events N] [--seed S] [--lag N] [--train-steps N] "
                  "[trace.tsev ...]\n");
      return 0;
    } else {
      trace::Trace t;
      std::string error;
      if (!trace::load_trace(a, &t, &error)) {
        std::fprintf(stderr, "predict_eval: %s\n", error.c_str());
        return 1;
      }
      traces.push_back(std::move(t));
      marks.push_back(read_marks(a));
    }
  }
  if (synthetic) {
    SyntheticTraceOptions so;
    so.iterations = synthetic_iterations;
    trace::Trace fixed = make_synthetic_trace(so);
    fixed.name = "syn_fixed";
    so.seq_len_min = 128;
    so.seq_len_max = 512;
    trace::Trace varlen = make_synthetic_trace(so);
    varlen.name = "syn_varlen";
    so.seq_len_min = so.seq_len_max = 256;
    so.change_at_iteration = so.iterations / 2;
    trace::Trace drift = make_synthetic_trace(so);
    drift.name = "syn_drift";
    traces.push_back(std::move(fixed));
    traces.push_back(std::move(varlen));
    traces.push_back(std::move(drift));
  }
  if (traces.empty()) {
    std::fprintf(stderr, "predict_eval: no traces (give .tsev files or --synthetic)\n");
    return 2;
  }
  std::printf("%-28s %-14s %8s %8s %8s %8s %8s %9s %8s %7s %6s %9s %9s\n", "trace", "kind",
              "cold2x", "within2x", "mwarm2x", "med_err", "warm2x", "ns/event", "events",
              "retrain", "drift", "lstm_ans", "lstm_eval");
  marks.resize(traces.size());
  for (std::size_t ti = 0; ti < traces.size(); ++ti) {
    const trace::Trace& t = traces[ti];
    const auto truth = true_lifespans(t.events);
    const std::uint64_t warm_from = warm_start_alloc(t.events);
    for (const std::string& kind : kinds) {
      PredictorOptions opt = base;
      opt.kind = kind;
      auto p = make_predictor(opt);
      if (!p) {
        std::fprintf(stderr, "predict_eval: unknown kind '%s'\n", kind.c_str());
        return 2;
      }
      set_oracle_truth(p.get(), truth);
      std::vector<std::uint64_t> pred;
      std::vector<std::uint64_t> sorted_marks = marks[ti];
      std::sort(sorted_marks.begin(), sorted_marks.end());
      const Figures f = replay(t.events, truth, warm_from, sorted_marks, p.get(), &pred);
      const PredictorStats s = p->stats();
      double lstm_share = 0.0, eval_share = 0.0;
      if (auto* h = dynamic_cast<HybridPredictor*>(p.get())) {
        lstm_share = s.predictions ? double(h->lstm_answers()) / double(s.predictions) : 0.0;
        eval_share = s.predictions ? double(h->lstm_evaluations()) / double(s.predictions) : 0.0;
      }
      std::printf("%-28s %-14s %8.4f %8.4f %8.4f %8.3f %8.4f %9.1f %8zu %7llu %6llu %9.4f %9.4f\n",
                  t.name.c_str(), kind.c_str(), f.cold_within_2x, f.within_2x,
                  f.marked_warm_within_2x, f.median_abs_log2,
                  f.warm_within_2x, f.ns_per_event, t.events.size(),
                  (unsigned long long)s.retrains, (unsigned long long)s.drift_triggers,
                  lstm_share, eval_share);
      if (checksum) {
        std::uint64_t h = 0;
        for (std::uint64_t v : pred) h = hash_combine(h, v);
        std::printf("  checksum %s %s %016llx\n", t.name.c_str(), kind.c_str(),
                    (unsigned long long)h);
      }
      if (kind == explain_kind) explain(t, marks[ti], truth, pred, warm_from);
      std::fflush(stdout);
    }
  }
  return 0;
}
