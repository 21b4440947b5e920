// Replayer, oracle planner and policies: hand-made traces whose answers are worked out by hand.
#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <catch2/catch.hpp>

#include "timeshare/common/units.h"
#include "timeshare/replay/oracle_planner.h"
#include "timeshare/replay/policies.h"
#include "timeshare/replay/replayer.h"

using namespace timeshare;
using namespace timeshare::trace;

namespace {

// Builds a valid trace: alloc() returns the new id, free(id) frees it.
class TraceBuilder {
 public:
  std::uint64_t alloc(std::uint64_t bytes, std::uint32_t stream = 0) {
    const std::uint64_t id = bytes_.size();
    bytes_.push_back(bytes);
    push(Op::kAlloc, id, bytes, stream);
    return id;
  }
  void free(std::uint64_t id, std::uint32_t stream = 0) { push(Op::kFree, id, bytes_[id], stream); }
  const std::vector<Event>& events() const { return events_; }
  std::size_t size() const { return events_.size(); }

 private:
  void push(Op op, std::uint64_t id, std::uint64_t bytes, std::uint32_t stream) {
    Event e{};
    e.op = op;
    e.stream = stream;
    e.id = id;
    e.bytes = bytes;
    e.time_us = events_.size() * 10;
    events_.push_back(e);
  }
  std::vector<std::uint64_t> bytes_;
  std::vector<Event> events_;
};

ReplayResult run(std::string_view policy, const TraceBuilder& t, PolicyOptions po = {}) {
  return run_policy(policy, t.events().data(), t.size(), {}, po);
}

// A random trace with stack-like and long-lived allocations, like training.
TraceBuilder random_trace(std::uint32_t seed, int allocs) {
  std::mt19937 rng(seed);
  TraceBuilder t;
  std::vector<std::uint64_t> live;
  std::uniform_int_distribution<int> size_pick(0, 5);
  const std::uint64_t sizes[] = {512, 3000, 300 * kKiB, 2 * kMiB, 5 * kMiB + 7, 24 * kMiB};
  for (int i = 0; i < allocs; ++i) {
    live.push_back(t.alloc(sizes[size_pick(rng)], rng() % 4 == 0 ? 1 : 0));
    while (!live.empty() && rng() % 3 == 0) {
      const std::size_t k = rng() % live.size();
      std::uint64_t id = live[k];
      live.erase(live.begin() + static_cast<std::ptrdiff_t>(k));
      // Stream of a free is the alloc's stream in real traces; the replayer ignores it.
      t.free(id);
    }
  }
  return t;
}

// Brute-force greedy-by-size, O(n^2): the definition the planner's index must match.
std::uint64_t brute_force_oracle(const std::vector<Event>& ev) {
  struct Iv { std::uint64_t a, f, bytes, off; };
  std::vector<Iv> iv;
  for (std::size_t i = 0; i < ev.size(); ++i) {
    if (ev[i].op == Op::kAlloc) {
      iv.push_back({i, ev.size(), round_up(std::max<std::uint64_t>(ev[i].bytes, 1), 512), 0});
    } else {
      iv[ev[i].id].f = i;
    }
  }
  std::vector<std::size_t> order(iv.size());
  for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(),
                   [&](std::size_t a, std::size_t b) { return iv[a].bytes > iv[b].bytes; });
  std::vector<std::size_t> placed;
  std::uint64_t arena = 0;
  for (std::size_t id : order) {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> busy;
    for (std::size_t p : placed) {
      if (iv[p].a < iv[id].f && iv[id].a < iv[p].f) busy.push_back({iv[p].off, iv[p].off + iv[p].bytes});
    }
    std::sort(busy.begin(), busy.end());
    std::uint64_t off = 0;
    for (auto [b, e] : busy) {
      if (b >= off + iv[id].bytes) break;
      off = std::max(off, e);
    }
    iv[id].off = off;
    placed.push_back(id);
    arena = std::max(arena, off + iv[id].bytes);
  }
  return arena;
}

}  // namespace

TEST_CASE("torch policy: three small allocations share one 2 MiB segment", "[replayer]") {
  TraceBuilder t;
  for (int i = 0; i < 3; ++i) t.alloc(300 * kKiB);
  const ReplayResult r = run("torch", t);
  CHECK(r.peak_reserved_bytes == 2 * kMiB);
  CHECK(r.device_reserve_calls == 1);
  CHECK(r.peak_live_bytes == 900 * kKiB);
  CHECK(r.backend_peak_reserved_bytes == r.peak_reserved_bytes);
}

TEST_CASE("torch policy: segment sizes of large requests", "[replayer]") {
  SECTION("5 MiB takes a 20 MiB segment") {
    TraceBuilder t;
    t.alloc(5 * kMiB);
    CHECK(run("torch", t).peak_reserved_bytes == 20 * kMiB);
  }
  SECTION("12 MiB + 1 rounds to 512 B, its segment to 2 MiB: 14 MiB") {
    TraceBuilder t;
    t.alloc(12 * kMiB + 1);
    const ReplayResult r = run("torch", t);
    CHECK(r.peak_reserved_bytes == 14 * kMiB);
    CHECK(r.device_reserve_calls == 1);
  }
  SECTION("small and large pools never share a segment: 2 + 20 MiB") {
    TraceBuilder t;
    t.alloc(300 * kKiB);
    t.alloc(5 * kMiB);
    CHECK(run("torch", t).peak_reserved_bytes == 22 * kMiB);
  }
}

TEST_CASE("torch policy: splitting and reuse", "[replayer]") {
  SECTION("a free then a same-size allocation reuses the block") {
    TraceBuilder t;
    t.free(t.alloc(5 * kMiB));
    t.alloc(5 * kMiB);
    const ReplayResult r = run("torch", t);
    CHECK(r.peak_reserved_bytes == 20 * kMiB);
    CHECK(r.device_reserve_calls == 1);
  }
  SECTION("two 5 MiB blocks split one 20 MiB segment; 11 MiB needs a new 12 MiB one") {
    TraceBuilder t;
    t.alloc(5 * kMiB);
    t.alloc(5 * kMiB);
    CHECK(run("torch", t).peak_reserved_bytes == 20 * kMiB);
    t.alloc(11 * kMiB);
    const ReplayResult r = run("torch", t);
    CHECK(r.peak_reserved_bytes == 32 * kMiB);
    CHECK(r.device_reserve_calls == 2);
  }
  SECTION("a block freed on one stream is not reused on another") {
    TraceBuilder t;
    t.free(t.alloc(5 * kMiB, 0), 0);
    t.alloc(5 * kMiB, 1);
    CHECK(run("torch", t).peak_reserved_bytes == 40 * kMiB);
  }
}

TEST_CASE("replayer: out of memory is counted and the free is skipped", "[replayer]") {
  TraceBuilder t;
  t.alloc(5 * kMiB);                   // 20 MiB segment
  const auto big = t.alloc(16 * kMiB);  // needs a 16 MiB segment: over a 30 MiB device
  t.free(big);
  t.alloc(1 * kMiB + 512);             // fits in the first segment
  PolicyOptions po;
  po.capacity_bytes = 30 * kMiB;
  const ReplayResult r = run("torch", t, po);
  CHECK(r.ooms == 1);
  CHECK(r.skipped_frees == 1);
  CHECK(r.peak_reserved_bytes == 20 * kMiB);
  CHECK(r.peak_live_bytes == 21 * kMiB);  // the trace's own peak
}

TEST_CASE("replayer: live-bytes peak and timeline", "[replayer]") {
  TraceBuilder t;
  const auto a = t.alloc(1000);
  const auto b = t.alloc(3000);
  t.free(a);
  t.alloc(500);
  t.free(b);
  CHECK(peak_live_bytes(t.events().data(), t.size()) == 4000);
  const ReplayResult r = run("torch", t);
  CHECK(r.peak_live_bytes == 4000);
  CHECK(r.events == 5);
  CHECK(r.allocs == 3);
  CHECK(r.frees == 2);
  REQUIRE(!r.timeline.empty());
  CHECK(r.timeline.back().event == 4);
  std::uint64_t live_max = 0;
  for (const TimelinePoint& p : r.timeline) live_max = std::max(live_max, p.live_bytes);
  CHECK(live_max == 4000);

  const TraceBuilder big = random_trace(3, 5000);
  ReplayOptions ro;
  ro.timeline_points = 100;
  const ReplayResult rb = run_policy("torch", big.events().data(), big.size(), ro);
  CHECK(rb.timeline.size() <= 101);
  CHECK(rb.timeline.size() >= 50);
  std::uint64_t reserved_max = 0;
  live_max = 0;
  for (const TimelinePoint& p : rb.timeline) {
    reserved_max = std::max(reserved_max, p.reserved_bytes);
    live_max = std::max(live_max, p.live_bytes);
  }
  CHECK(reserved_max == rb.peak_reserved_bytes);  // bucket maxima keep the peak
  CHECK(live_max == rb.peak_live_bytes);
}

TEST_CASE("oracle: tiny cases", "[oracle]") {
  SECTION("two intervals overlapping in time: the sum") {
    TraceBuilder t;
    const auto a = t.alloc(1 * kMiB);
    const auto b = t.alloc(2 * kMiB);
    t.free(a);
    t.free(b);
    CHECK(run("oracle", t).peak_reserved_bytes == 3 * kMiB);
  }
  SECTION("disjoint in time: the max") {
    TraceBuilder t;
    t.free(t.alloc(1 * kMiB));
    t.free(t.alloc(2 * kMiB));
    const ReplayResult r = run("oracle", t);
    CHECK(r.peak_reserved_bytes == 2 * kMiB);
    CHECK(r.device_reserve_calls == 1);
  }
  SECTION("sizes round up to 512 bytes") {
    TraceBuilder t;
    t.alloc(100);
    t.alloc(513);
    CHECK(run("oracle", t).peak_reserved_bytes == 512 + 1024);
  }
  SECTION("a hole left by a freed block is filled by a smaller later one") {
    TraceBuilder t;
    const auto a = t.alloc(4 * kMiB);
    const auto b = t.alloc(4 * kMiB);  // above a
    t.free(a);
    t.alloc(3 * kMiB);                 // fits where a was
    t.free(b);
    CHECK(run("oracle", t).peak_reserved_bytes == 8 * kMiB);
  }
}

TEST_CASE("oracle: matches brute-force greedy-by-size and never overlaps", "[oracle]") {
  for (std::uint32_t seed = 1; seed <= 6; ++seed) {
    const TraceBuilder t = random_trace(seed, 300 + 200 * static_cast<int>(seed));
    const OraclePlan plan = plan_oracle(t.events().data(), t.size());
    CHECK(oracle_plan_is_valid(t.events().data(), t.size(), plan));
    CHECK(plan.arena_bytes == brute_force_oracle(t.events()));
    CHECK(plan.arena_bytes >= peak_live_bytes(t.events().data(), t.size()));
  }
}

TEST_CASE("prediction scoring", "[replayer]") {
  TraceBuilder t;
  const auto a = t.alloc(512);  // event 0, freed at 2: lifespan 2
  const auto b = t.alloc(512);  // event 1, freed at 5: lifespan 4
  t.free(a);
  const auto c = t.alloc(512);  // event 3, freed at 4: lifespan 1
  t.free(c);
  t.free(b);
  t.alloc(512);                 // never freed: not scored
  const auto truth = true_lifespans(t.events().data(), t.size(), 4);
  CHECK(truth == std::vector<std::uint64_t>{2, 4, 1, kNoIndex});
  // predictions: 2 (exact), 16 (4x off), 2 (2x off: within), 7 (unscored)
  const PredictionFigures f = score_predictions(t.events().data(), t.size(), {2, 16, 2, 7},
                                                truth, 3, WarmSource::kIterations);
  CHECK(f.available);
  CHECK(f.scored == 3);
  CHECK(f.within_2x == Approx(2.0 / 3.0));
  CHECK(f.log2_median_abs_error == Approx(1.0));   // errors 0, 2, 1
  CHECK(f.log2_mean_abs_error == Approx(1.0));
  CHECK(f.warm_scored == 1);                        // only c (event 3)
  CHECK(f.within_2x_warm == Approx(1.0));

  CHECK(warm_start_from_iterations({0, 100, 200}, 1000) == 100);
  CHECK(warm_start_from_iterations({40}, 1000) == 40);
  CHECK(warm_start_from_iterations({0}, 1000) == kNoIndex);
  CHECK(warm_start_from_iterations({}, 1000) == kNoIndex);

  // Cold: the allocations before the warm start (a: exact, b: 4x off), from event 0.
  CHECK(f.cold_from_event == 0);
  CHECK(f.cold_scored == 2);
  CHECK(f.within_2x_cold == Approx(0.5));
  // A cold window from event 1 holds b alone (4x off).
  const PredictionFigures g = score_predictions(t.events().data(), t.size(), {2, 16, 2, 7},
                                                truth, 3, WarmSource::kIterations, 1);
  CHECK(g.cold_scored == 1);
  CHECK(g.within_2x_cold == Approx(0.0));
  CHECK(g.within_2x_warm == Approx(1.0));
  CHECK(cold_start_from_iterations({0, 100, 200}, 1000) == 0);
  CHECK(cold_start_from_iterations({30, 100, 200}, 1000) == 30);
  CHECK(cold_start_from_iterations({100, 30}, 1000) == 30);
  CHECK(cold_start_from_iterations({40}, 1000) == 0);
  CHECK(cold_start_from_iterations({}, 1000) == 0);
}

TEST_CASE("policies: names, unknown policy, invalid trace", "[policies]") {
  CHECK(is_policy("torch"));
  CHECK(is_policy("oracle"));
  CHECK_FALSE(is_policy("tourch"));
  TraceBuilder t;
  t.alloc(512);
  CHECK_THROWS_WITH(run("tourch", t), Catch::Contains("unknown policy 'tourch'"));
  std::vector<Event> bad = t.events();
  bad[0].id = 5;
  CHECK_THROWS_WITH(run_policy("torch", bad.data(), bad.size()),
                    Catch::Contains("invalid trace"));
}

TEST_CASE("replays are deterministic", "[replayer]") {
  const TraceBuilder t = random_trace(11, 3000);
  for (const std::string& p : policy_names()) {
    ReplayResult a;
    ReplayResult b;
    try {
      a = run(p, t);
      b = run(p, t);
    } catch (const std::invalid_argument&) {
      continue;  // policy not in this build yet
    }
    INFO(p);
    CHECK(a.peak_reserved_bytes == b.peak_reserved_bytes);
    CHECK(a.device_reserve_calls == b.device_reserve_calls);
    CHECK(a.prediction.within_2x == b.prediction.within_2x);
    REQUIRE(a.timeline.size() == b.timeline.size());
    for (std::size_t i = 0; i < a.timeline.size(); ++i) {
      CHECK(a.timeline[i].reserved_bytes == b.timeline[i].reserved_bytes);
    }
    CHECK(a.peak_reserved_bytes >= a.peak_live_bytes);
  }
}

TEST_CASE("timeshare-true predicts exactly", "[policies]") {
  const TraceBuilder t = random_trace(5, 2000);
  const ReplayResult r = run("timeshare-true", t);
  CHECK(r.prediction.available);
  CHECK(r.prediction.within_2x == Approx(1.0));
  CHECK(r.prediction.log2_median_abs_error == Approx(0.0));
  CHECK(r.peak_reserved_bytes >= r.peak_live_bytes);
}
