// predict_eval: replays allocation traces through every lifespan predictor kind, online from the
// first event, and prints per trace and kind: within-2x share, median |log2 error|, within-2x
// after the first detected iteration ("warm"), and ns per event (on_alloc + on_free).
//
//   predict_eval [options] [trace.tsev ...]
//     --synthetic          add three synthetic traces (fixed shape, varying length, drift)
//     --iterations N       training iterations per synthetic trace (default 30)
//     --kinds a,b,c        kinds to run (default: all)
//     --realtime           background trainer thread instead of deterministic replay
//     --hidden N --context-k K --retrain-events N --seed S --lag N --train-steps N
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/period_detector.h"
#include "timeshare/predict/synthetic_trace.h"
#include "timeshare/trace/events.h"

using namespace timeshare;
using namespace timeshare::predict;

namespace {

struct Figures {
  double within_2x = 0.0;
  double median_abs_log2 = 0.0;
  double warm_within_2x = 0.0;
  double ns_per_event = 0.0;
  std::size_t scored = 0;
};

std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

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
               std::uint64_t warm_from, LifespanPredictor* p) {
  std::vector<std::uint64_t> pred(truth.size(), 0);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = 0; i < events.size(); ++i) {
    const trace::Event& e = events[i];
    if (e.op == trace::Op::kAlloc) {
      AllocEvent a;
      a.alloc_id = e.id;
      a.bytes = e.bytes;
      a.stream = e.stream;
      a.now_events = i;
      a.now_us = e.time_us;
      pred[e.id] = p->on_alloc(a);
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
  }
  f.scored = err.size();
  if (!err.empty()) {
    std::nth_element(err.begin(), err.begin() + err.size() / 2, err.end());
    f.median_abs_log2 = err[err.size() / 2];
    f.within_2x = double(within) / double(err.size());
  }
  f.warm_within_2x = warm ? double(warm_within) / double(warm) : 0.0;
  return f;
}

}  // namespace

int main(int argc, char** argv) {
  PredictorOptions base;
  base.deterministic = true;
  std::vector<std::string> kinds = kPredictorKinds;
  std::vector<trace::Trace> traces;
  bool synthetic = false;
  int synthetic_iterations = SyntheticTraceOptions{}.iterations;
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
    else if (a == "--hidden") base.hidden = std::atoi(next().c_str());
    else if (a == "--context-k") base.context_k = std::atoi(next().c_str());
    else if (a == "--retrain-events") base.retrain_interval_events = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--seed") base.seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--lag") base.lag_allocs = std::atoi(next().c_str());
    else if (a == "--train-steps") base.train_steps = std::atoi(next().c_str());
    else if (a == "--help" || a == "-h") {
      std::printf("usage: predict_eval [--synthetic] [--kinds a,b] [--realtime] [--hidden N] "
                  "[--context-k K] [--retrain-events N] [--seed S] [--lag N] [--train-steps N] "
                  "[trace.tsev ...]\n");
      return 0;
    } else {
      trace::Trace t;
      std::string error;
      if (!trace::read_tsev(a, &t.events, &error)) {
        std::fprintf(stderr, "predict_eval: %s\n", error.c_str());
        return 1;
      }
      const std::string problem = trace::validate(t.events.data(), t.events.size(), &t.allocs);
      if (!problem.empty()) {
        std::fprintf(stderr, "predict_eval: %s: %s\n", a.c_str(), problem.c_str());
        return 1;
      }
      const std::size_t slash = a.find_last_of('/');
      t.name = slash == std::string::npos ? a : a.substr(slash + 1);
      traces.push_back(std::move(t));
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
  std::printf("%-28s %-10s %8s %8s %8s %9s %8s %7s %6s %9s\n", "trace", "kind", "within2x",
              "med_err", "warm2x", "ns/event", "events", "retrain", "drift", "lstm_ans");
  for (const trace::Trace& t : traces) {
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
      const Figures f = replay(t.events, truth, warm_from, p.get());
      const PredictorStats s = p->stats();
      double lstm_share = 0.0;
      if (auto* h = dynamic_cast<HybridPredictor*>(p.get())) {
        lstm_share = s.predictions ? double(h->lstm_answers()) / double(s.predictions) : 0.0;
      }
      std::printf("%-28s %-10s %8.4f %8.3f %8.4f %9.1f %8zu %7llu %6llu %9.4f\n",
                  t.name.c_str(), kind.c_str(), f.within_2x, f.median_abs_log2,
                  f.warm_within_2x, f.ns_per_event, t.events.size(),
                  (unsigned long long)s.retrains, (unsigned long long)s.drift_triggers,
                  lstm_share);
      std::fflush(stdout);
    }
  }
  return 0;
}
