// Online predictors: history ring bound, period detection, determinism, drift, concurrent
// weight publication (run under ThreadSanitizer too), factory kinds.
#include <catch2/catch.hpp>

#include <chrono>
#include <cmath>
#include <thread>
#include <vector>

#include "timeshare/predict/history_ring.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/period_detector.h"
#include "timeshare/predict/shape_twin.h"
#include "timeshare/predict/synthetic_trace.h"

using namespace timeshare;
using namespace timeshare::predict;

namespace {

// Every allocation's answer, by allocation id (ids are dense, in allocation order).
std::vector<std::uint64_t> replay(const trace::Trace& t, LifespanPredictor* p) {
  return feed_trace(*p, t.events);
}

double within_2x(const std::vector<std::uint64_t>& pred, const std::vector<std::uint64_t>& truth) {
  std::size_t n = 0, ok = 0;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    if (!truth[i]) continue;
    ++n;
    ok += std::fabs(std::log2(double(pred[i])) - std::log2(double(truth[i]))) <= 1.0;
  }
  return n ? double(ok) / double(n) : 0.0;
}

PredictorOptions small_options() {
  PredictorOptions o;
  o.deterministic = true;
  o.hidden = 16;
  o.head_hidden = 8;
  o.train_steps = 30;
  o.min_train_samples = 300;
  o.retrain_interval_events = 4000;
  o.history_bytes = 256 << 10;
  return o;
}

}  // namespace

TEST_CASE("predict/history: the ring never holds more than its byte bound", "[predict]") {
  const std::size_t bound = 10000;
  HistoryRing ring(bound, 21);
  CHECK(ring.bytes_reserved() <= bound);
  CHECK(ring.capacity_entries() == bound / HistoryRing::bytes_per_entry(21));
  std::vector<float> x(21);
  for (std::uint64_t s = 0; s < 1000; ++s) {
    x[0] = float(s);
    ring.append(s, x.data());
    CHECK(ring.bytes_reserved() <= bound);
    CHECK(ring.size() <= ring.capacity_entries());
  }
  CHECK_FALSE(ring.set_label(0, 3.0f));      // long overwritten
  CHECK(ring.set_label(999, 3.0f));
  HistorySlice s;
  ring.copy_from(0, &s);
  REQUIRE(s.count == ring.capacity_entries());
  CHECK(s.first_seq == 1000 - s.count);
  CHECK(s.x[0] == float(s.first_seq));       // oldest first, in order
  CHECK(s.label.back() == 3.0f);
  CHECK(std::isnan(s.label.front()));
}

TEST_CASE("predict/period: finds the iteration, not the repeated layer", "[predict]") {
  SyntheticTraceOptions so;
  so.noise_share = 0.0;
  so.iterations = 12;
  const trace::Trace t = make_synthetic_trace(so);
  const std::uint64_t per_iteration = t.allocs / std::uint64_t(so.iterations);
  PeriodDetector d;
  for (const auto& e : t.events) {
    if (e.op == trace::Op::kAlloc) d.push(e.bytes);
  }
  CHECK(d.period() == per_iteration);
  CHECK(d.first_confirmed_at() < 3 * per_iteration);
}

TEST_CASE("predict/period: alignment runs ahead of confirmation; none without repetition",
          "[predict]") {
  SyntheticTraceOptions so;
  so.noise_share = 0.0;
  so.iterations = 6;
  so.layers = 32;  // ~390 allocations an iteration; 8 of them would leave too short a trial
  const trace::Trace t = make_synthetic_trace(so);
  const std::uint64_t per_iteration = t.allocs / std::uint64_t(so.iterations);
  REQUIRE(per_iteration > 4 * kProvisionalChecks);
  PeriodDetector d;
  std::uint64_t n = 0, first_aligned = UINT64_MAX, first_active = UINT64_MAX;
  for (const auto& e : t.events) {
    if (e.op != trace::Op::kAlloc) continue;
    d.push(e.bytes);
    ++n;
    // Whatever it says is a period the detector has active or is trying with good matches.
    if (d.alignment_period() != d.period()) CHECK(d.alignment_period() > d.period());
    if (d.alignment_period() == per_iteration && first_aligned == UINT64_MAX) first_aligned = n;
    if (d.period() == per_iteration && first_active == UINT64_MAX) first_active = n;
  }
  CHECK(d.alignment_period() == per_iteration);
  CHECK(d.period() == per_iteration);
  // Inside the second iteration, about kProvisionalChecks allocations after the candidate
  // appears; confirmation comes a full iteration after that.
  CHECK(first_aligned > per_iteration);
  CHECK(first_aligned < per_iteration + per_iteration / 2);
  CHECK(first_active > first_aligned + per_iteration / 2);

  // A sequence with no repetition never gets an alignment period.
  PeriodDetector r;
  for (std::uint64_t i = 0; i < 5000; ++i) {
    r.push(512 * (1 + (i * 2654435761u) % 100003));
    CHECK(r.alignment_period() == 0);
  }
}

TEST_CASE("predict/shape twin: one iteration back although the sizes change", "[predict]") {
  SyntheticTraceOptions so;
  so.noise_share = 0.0;
  so.iterations = 12;
  so.seq_len_min = 128;  // another sequence length every iteration: sizes do not repeat
  so.seq_len_max = 512;
  const trace::Trace t = make_synthetic_trace(so);
  const std::uint64_t per_iteration = t.allocs / std::uint64_t(so.iterations);
  ShapeTwin twin;
  PeriodDetector by_size;
  std::vector<std::uint64_t> seq_of(t.allocs, 0), tick_of(t.allocs, 0);
  std::vector<float> answer(t.allocs, 0.0f);
  std::vector<bool> answered(t.allocs, false);
  std::uint64_t seq = 0;
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const trace::Event& e = t.events[i];
    if (e.op == trace::Op::kAlloc) {
      seq_of[e.id] = seq;
      tick_of[e.id] = i;
      const AlignedAnswer a = twin.on_alloc(seq, i, by_size.alignment_period());
      by_size.push(e.bytes);
      answered[e.id] = a.found && !a.from_live && seq >= 3 * per_iteration;
      answer[e.id] = a.log2_life;
      ++seq;
    } else {
      twin.learn(seq_of[e.id], float(std::log2(double(i - tick_of[e.id]))));
      twin.on_free(seq_of[e.id], seq);
    }
  }
  // The shape detector found the iteration (or a multiple of it); the sizes alone did not.
  REQUIRE(twin.period() > 0);
  CHECK(twin.period() % per_iteration == 0);
  CHECK(by_size.period() % per_iteration != 0);
  const std::vector<std::uint64_t> truth = true_lifespans(t.events);
  std::size_t n = 0, ok = 0, scored = 0;
  for (std::size_t id = 0; id < t.allocs; ++id) {
    if (!truth[id] || seq_of[id] < 3 * per_iteration) continue;
    ++scored;
    if (!answered[id]) continue;
    ++n;
    ok += std::fabs(answer[id] - std::log2(double(truth[id]))) <= 1.0;
  }
  CHECK(double(n) >= 0.8 * double(scored));
  CHECK(double(ok) >= 0.98 * double(n));
  // Either the size detector's period (trial or active) is the iteration as well, or the
  // shape twin overrode it.
  CHECK((twin.overrides_size_period() || by_size.alignment_period() % per_iteration == 0));

  // Fixed shape: the size period is the iteration and the shape twin follows it.
  so.seq_len_min = so.seq_len_max = 256;
  const trace::Trace f = make_synthetic_trace(so);
  ShapeTwin fixed_twin;
  PeriodDetector fixed_size;
  std::uint64_t fseq = 0;
  std::vector<std::uint64_t> fseq_of(f.allocs, 0);
  for (const trace::Event& e : f.events) {
    if (e.op == trace::Op::kAlloc) {
      fseq_of[e.id] = fseq;
      fixed_twin.on_alloc(fseq++, 0, fixed_size.alignment_period());
      fixed_size.push(e.bytes);
    } else {
      fixed_twin.on_free(fseq_of[e.id], fseq);
    }
  }
  CHECK(fixed_size.period() == f.allocs / std::uint64_t(so.iterations));
  CHECK_FALSE(fixed_twin.overrides_size_period());
}

TEST_CASE("predict/determinism: the same trace gives the same predictions", "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 25;
  const trace::Trace t = make_synthetic_trace(so);
  for (const char* kind : {"hybrid", "lstm"}) {
    PredictorOptions o = small_options();
    o.kind = kind;
    auto a = make_predictor(o);
    auto b = make_predictor(o);
    const auto pa = replay(t, a.get());
    const auto pb = replay(t, b.get());
    CHECK(a->stats().retrains >= 1);
    CHECK(a->stats().model_active);
    CHECK(pa == pb);
  }
}

TEST_CASE("predict/drift: fires when the pattern changes, not on a steady trace", "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 40;
  so.noise_share = 0.0;
  PredictorOptions o = small_options();
  o.kind = "hybrid";
  o.retrain_interval_events = 1u << 30;   // only drift (and the first training) retrains
  o.drift_window_frees = 60;
  o.drift_threshold = 0.15;
  {
    auto p = make_predictor(o);
    replay(make_synthetic_trace(so), p.get());
    CHECK(p->stats().drift_triggers == 0);
    CHECK(p->stats().retrains == 1);
  }
  {
    so.change_at_iteration = 20;
    auto p = make_predictor(o);
    replay(make_synthetic_trace(so), p.get());
    CHECK(p->stats().drift_triggers >= 1);
    CHECK(p->stats().retrains >= 2);
  }
}

TEST_CASE("predict/retrain: the schedule backs off on a steady trace; a drift brings it back",
          "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 60;
  so.noise_share = 0.0;
  const trace::Trace steady = make_synthetic_trace(so);
  CAPTURE(steady.events.size());
  const auto retrains = [](const trace::Trace& t, std::uint64_t backoff_max) {
    PredictorOptions o = small_options();
    o.kind = "hybrid";
    o.retrain_interval_events = 1000;
    o.retrain_backoff_max = backoff_max;
    auto p = make_predictor(o);
    replay(t, p.get());
    return p->stats().retrains;
  };
  const std::uint64_t every = retrains(steady, 1);
  const std::uint64_t backing_off = retrains(steady, 16);
  CAPTURE(every, backing_off);
  // Every 1000 ticks after the first training, against 1000, 2000, 4000, ... after it.
  REQUIRE(steady.events.size() > 10000);
  CHECK(every >= steady.events.size() / 1000 - 3);
  CHECK(backing_off >= 3);
  CHECK(backing_off <= 2 + static_cast<std::uint64_t>(
                               std::log2(double(steady.events.size()) / 1000.0 + 1.0)));
  // A drift resets the interval: more retrainings than on the steady trace.
  so.change_at_iteration = 30;
  PredictorOptions o = small_options();
  o.kind = "hybrid";
  o.retrain_interval_events = 1000;
  o.drift_window_frees = 60;
  o.drift_threshold = 0.15;
  auto changed = make_predictor(o);
  replay(make_synthetic_trace(so), changed.get());
  CHECK(changed->stats().drift_triggers >= 1);
  CHECK(changed->stats().retrains > backing_off);
}

TEST_CASE("predict/hybrid: beats the plain baselines on a periodic trace", "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 25;
  const trace::Trace t = make_synthetic_trace(so);
  const auto truth = true_lifespans(t.events);
  PredictorOptions o = small_options();
  auto hybrid = make_predictor(o);
  const double h = within_2x(replay(t, hybrid.get()), truth);
  for (const char* kind : {"table", "last_size", "size_mean", "prev_iter", "constant"}) {
    o.kind = kind;
    auto b = make_predictor(o);
    INFO(kind);
    CHECK(h > within_2x(replay(t, b.get()), truth));
  }
  o.kind = "oracle";
  auto oracle = make_predictor(o);
  REQUIRE(set_oracle_truth(oracle.get(), truth));
  CHECK(within_2x(replay(t, oracle.get()), truth) == 1.0);
  o.kind = "no_such_kind";
  CHECK(make_predictor(o) == nullptr);
}

TEST_CASE("predict/trainer: weights publish while the hot path predicts", "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 10;
  const trace::Trace t = make_synthetic_trace(so);
  PredictorOptions o = small_options();
  o.deterministic = false;              // background trainer thread
  o.retrain_interval_events = 500;      // publish often
  o.train_steps = 10;
  o.trainer_nice = 0;                   // this test is about publication, not scheduling
  HybridPredictor p(o, /*lstm_only=*/true);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  std::uint64_t base_id = 0, rounds = 0;
  // Replay the trace repeatedly (fresh ids, advancing clock) until two trainings published.
  while ((p.stats().retrains < 2 || !p.stats().model_active) &&
         std::chrono::steady_clock::now() < deadline) {
    const std::uint64_t clock0 = rounds * t.events.size();
    for (std::size_t i = 0; i < t.events.size(); ++i) {
      const trace::Event& e = t.events[i];
      if (e.op == trace::Op::kAlloc) {
        AllocEvent a;
        a.alloc_id = base_id + e.id;
        a.bytes = e.bytes;
        a.now_events = clock0 + i;
        const std::uint64_t life = p.on_alloc(a);
        REQUIRE(life >= 1);
      } else {
        FreeEvent f;
        f.alloc_id = base_id + e.id;
        f.now_events = clock0 + i;
        p.on_free(f);
      }
    }
    base_id += t.allocs;
    ++rounds;
  }
  CHECK(p.stats().retrains >= 2);
  CHECK(p.stats().model_active);
  CHECK(p.lstm_answers() > 0);
}
