// AlignedHistory (the twin one period back) and its use in the hybrid and the "aligned" kind.
#include <catch2/catch.hpp>

#include <cmath>
#include <string>
#include <vector>

#include "timeshare/predict/aligned_history.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/synthetic_trace.h"

using namespace timeshare;
using namespace timeshare::predict;

namespace {

constexpr std::uint64_t kPeriod = 6;
// Two identical "layers" (same sizes, same neighbours) with different lifespans: a size-context
// table cannot tell them apart, the position in the iteration can.
constexpr std::uint64_t kSizes[kPeriod] = {10, 20, 30, 10, 20, 30};
constexpr float kLives[kPeriod] = {1.0f, 2.0f, 3.0f, 5.0f, 6.0f, 7.0f};

double within_2x(const std::vector<std::uint64_t>& pred, const std::vector<std::uint64_t>& truth) {
  std::size_t n = 0, ok = 0;
  for (std::size_t i = 0; i < truth.size(); ++i) {
    if (!truth[i]) continue;
    ++n;
    ok += std::fabs(std::log2(double(pred[i])) - std::log2(double(truth[i]))) <= 1.0;
  }
  return n ? double(ok) / double(n) : 0.0;
}

std::vector<std::uint64_t> replay(const trace::Trace& t, LifespanPredictor* p) {
  std::vector<std::uint64_t> pred(t.allocs, 0);
  for (std::size_t i = 0; i < t.events.size(); ++i) {
    const trace::Event& e = t.events[i];
    if (e.op == trace::Op::kAlloc) {
      AllocEvent a;
      a.alloc_id = e.id;
      a.bytes = e.bytes;
      a.stream = e.stream;
      a.now_events = i;
      pred[e.id] = p->on_alloc(a);
    } else {
      FreeEvent f;
      f.alloc_id = e.id;
      f.now_events = i;
      p->on_free(f);
    }
  }
  return pred;
}

}  // namespace

TEST_CASE("predict/aligned: answers the lifespan at the same position one period back",
          "[predict]") {
  AlignedHistory h;
  std::uint64_t seq = 0;
  for (int it = 0; it < 4; ++it) {
    for (std::uint64_t q = 0; q < kPeriod; ++q, ++seq) {
      const AlignedAnswer a = h.on_alloc(seq, kSizes[q], seq * 10, it == 0 ? 0 : kPeriod);
      if (it == 0) {
        CHECK_FALSE(a.found);
      } else {
        REQUIRE(a.found);
        CHECK_FALSE(a.from_live);
        CHECK(a.log2_life == kLives[q]);
      }
      h.learn(seq, kLives[q]);
    }
  }
}

TEST_CASE("predict/aligned: re-finds the alignment after an inserted allocation", "[predict]") {
  AlignedHistory h;
  std::uint64_t seq = 0;
  for (std::uint64_t q = 0; q < kPeriod; ++q, ++seq) {
    h.on_alloc(seq, kSizes[q], seq, 0);   // first iteration: no period detected yet
    h.learn(seq, kLives[q]);
  }
  h.on_alloc(seq, 999, seq, kPeriod);  // noise: shifts everything after it by one
  h.learn(seq++, 9.0f);
  for (std::uint64_t q = 0; q < kPeriod; ++q, ++seq) {
    const AlignedAnswer a = h.on_alloc(seq, kSizes[q], seq, kPeriod);
    REQUIRE(a.found);
    CHECK(a.log2_life == kLives[q]);
    h.learn(seq, kLives[q]);
  }
  CHECK(h.shift() == 1);
}

TEST_CASE("predict/aligned: a live twin answers twice its age or its own twin", "[predict]") {
  AlignedHistory h;
  constexpr std::uint64_t kPer = 4;
  // Iteration 0: allocation 0 lives 64 ticks (known); iteration 1: its twin is still live.
  h.on_alloc(0, 7, 0, 0);
  h.learn(0, 6.0f);
  for (std::uint64_t s = 1; s < kPer; ++s) h.on_alloc(s, 100 + s, s, 0);
  AlignedAnswer a = h.on_alloc(kPer, 7, 10, kPer);
  REQUIRE(a.found);
  CHECK_FALSE(a.from_live);
  CHECK(a.log2_life == 6.0f);
  for (std::uint64_t s = kPer + 1; s < 2 * kPer; ++s) h.on_alloc(s, 100 + s - kPer, s, kPer);
  // Twin (seq 4, allocated at tick 10) is live at tick 26: age 16 < 64, its twin answers 64.
  a = h.on_alloc(2 * kPer, 7, 26, kPer);
  REQUIRE(a.found);
  CHECK(a.log2_life == 6.0f);
  // A size with no known lifespan in the chain: 2 x the live twin's age.
  AlignedHistory g;
  g.on_alloc(0, 7, 0, 0);
  for (std::uint64_t s = 1; s < kPer; ++s) g.on_alloc(s, 100 + s, s, 0);
  a = g.on_alloc(kPer, 7, 32, kPer);
  REQUIRE(a.found);
  CHECK(a.from_live);
  CHECK(a.log2_life == Approx(std::log2(32.0) + 1.0));
}

TEST_CASE("predict/aligned: the hybrid uses it and beats table_cycle on a fixed-shape trace",
          "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 20;
  const trace::Trace t = make_synthetic_trace(so);
  const auto truth = true_lifespans(t.events);
  PredictorOptions o;
  o.deterministic = true;
  o.min_train_samples = UINT64_MAX;  // no LSTM: the table and the aligned twin only
  o.kind = "hybrid";
  auto hybrid = make_predictor(o);
  const double hybrid_share = within_2x(replay(t, hybrid.get()), truth);
  o.kind = "table_cycle";
  auto table = make_predictor(o);
  const double table_share = within_2x(replay(t, table.get()), truth);
  o.kind = "aligned";
  auto aligned = make_predictor(o);
  const double aligned_share = within_2x(replay(t, aligned.get()), truth);
  const auto* h = dynamic_cast<const HybridPredictor*>(hybrid.get());
  REQUIRE(h);
  CHECK(h->aligned_answers() > h->stats().predictions / 2);
  CHECK(hybrid_share > table_share);
  CHECK(aligned_share > table_share);
}

TEST_CASE("predict/aligned: hybrid_nolstm is deterministic and needs no trainer", "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 10;
  const trace::Trace t = make_synthetic_trace(so);
  PredictorOptions o;
  o.kind = "hybrid_nolstm";   // real-time mode: must not depend on a thread either
  auto a = make_predictor(o);
  auto b = make_predictor(o);
  REQUIRE(std::string(a->name()) == "hybrid_nolstm");
  CHECK(replay(t, a.get()) == replay(t, b.get()));
  CHECK(a->stats().retrains == 0);
  CHECK_FALSE(a->stats().model_active);
}
