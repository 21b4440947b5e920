// AsyncPredictor: the wrapped predictor sees the same events in the same order as on the malloc
// path; the malloc path never waits; the queue is bounded; the allocator uses it by default.
#include <catch2/catch.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "timeshare/allocator/allocator.h"
#include "timeshare/common/page_faults.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/predict/async_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/synthetic_trace.h"

using namespace timeshare;
using namespace timeshare::predict;

namespace {

std::unique_ptr<LifespanPredictor> table_predictor() {
  PredictorOptions o;
  o.kind = "table";
  o.deterministic = true;
  return make_predictor(o);
}

// Feeds a trace's events to `p` in order; returns what on_alloc answered.
std::vector<std::uint64_t> feed(LifespanPredictor& p, const trace::Trace& t) {
  return feed_trace(p, t.events);
}

// A predictor that blocks in on_alloc until released (a worker that has fallen behind).
class GatedPredictor final : public LifespanPredictor {
 public:
  const char* name() const noexcept override { return "gated"; }
  std::uint64_t on_alloc(const AllocEvent&) override {
    std::unique_lock lock(mu_);
    ++entered_;
    entered_cv_.notify_all();
    open_cv_.wait(lock, [this] { return open_; });
    ++stats_.predictions;
    return 1;
  }
  void on_free(const FreeEvent&) override {}
  PredictorStats stats() const override {
    std::lock_guard lock(mu_);
    return stats_;
  }
  void wait_entered() {
    std::unique_lock lock(mu_);
    entered_cv_.wait(lock, [this] { return entered_ > 0; });
  }
  void open() {
    std::lock_guard lock(mu_);
    open_ = true;
    open_cv_.notify_all();
  }

 private:
  mutable std::mutex mu_;
  std::condition_variable entered_cv_, open_cv_;
  int entered_ = 0;
  bool open_ = false;
  PredictorStats stats_;
};

}  // namespace

TEST_CASE("async predictor: same events, same order, same figures as synchronous", "[predict][async]") {
  SyntheticTraceOptions so;
  so.iterations = 12;
  const trace::Trace t = make_synthetic_trace(so);
  auto sync = table_predictor();
  feed(*sync, t);
  AsyncPredictor async(table_predictor());
  feed(async, t);
  const PredictorStats s = sync->stats();
  const PredictorStats a = async.stats();
  CHECK(a.predictions == s.predictions);
  CHECK(a.observed == s.observed);
  CHECK(a.rolling_within_2x == s.rolling_within_2x);
  CHECK(async.dropped() == 0);
  CHECK(std::string(async.name()) == "table (async)");
}

namespace {

// Answers 1000 + the allocation's id: which allocation an answer was made for is visible.
class EchoPredictor final : public LifespanPredictor {
 public:
  const char* name() const noexcept override { return "echo"; }
  std::uint64_t on_alloc(const AllocEvent& e) override {
    ++stats_.predictions;
    return 1000 + e.alloc_id;
  }
  void on_free(const FreeEvent&) override { ++stats_.observed; }
  PredictorStats stats() const override { return stats_; }

 private:
  PredictorStats stats_;
};

}  // namespace

TEST_CASE("answer board: an answer is read back for its own context only", "[predict][async]") {
  AnswerBoard board;
  AnswerBoard::Context c1, c2;
  const std::uint64_t k = c1.next(4096, 0);
  CHECK(board.lookup(k) == 0);
  board.publish(k, 77);
  CHECK(board.lookup(k) == 77);
  CHECK(c2.next(4096, 0) == k);          // same size, stream and (no) sizes before it
  CHECK(c2.next(4096, 0) != k);          // ... but after a 4096: another context
  CHECK(c1.next(4096, 1) != c2.next(4096, 0));  // another stream
  // Another key in the same slot (same low bits, other tag) reads as no answer.
  const std::uint64_t other = k ^ (std::uint64_t{1} << 40);
  CHECK(board.lookup(other) == 0);
  board.publish(other, 5);
  CHECK(board.lookup(k) == 0);
  board.publish(k, std::uint64_t{1} << 45);
  CHECK(board.lookup(k) == AnswerBoard::kPermanent);
  board.publish(k, 0);
  CHECK(board.lookup(k) == 0);
}

TEST_CASE("async predictor: answers come from the board, published for the last allocation of "
          "the context, never the allocation's own", "[predict][async]") {
  // A loop of four distinct sizes, each allocation freed before the next: from the third
  // iteration on every context (size and the two before it) was seen one iteration earlier.
  AsyncPredictor async(std::make_unique<EchoPredictor>(),
                       {.local_batch = 4, .inline_feed = true});
  const std::size_t sizes[4] = {512, 4096, 65536, 1 << 20};
  std::vector<std::uint64_t> answers;
  std::uint64_t tick = 0;
  for (std::uint64_t id = 0; id < 40; ++id) {
    AllocEvent a;
    a.alloc_id = id;
    a.bytes = sizes[id % 4];
    a.now_events = tick++;
    answers.push_back(async.on_alloc(a));
    async.on_free({id, tick++, 0});
  }
  for (std::uint64_t id = 0; id < 4; ++id) CHECK(answers[id] == 0);  // nothing published yet
  for (std::uint64_t id = 8; id < 40; ++id) {
    CAPTURE(id);
    CHECK(answers[id] == 1000 + id - 4);  // the same context one iteration back
  }
  CHECK(async.answered() + async.unanswered() == 40);
  CHECK(async.unanswered() >= 4);
  CHECK(async.stats().predictions == 40);
}

TEST_CASE("async predictor: threads push while others read stats", "[predict][async][threads]") {
  AsyncPredictor async(table_predictor());
  constexpr int kThreads = 4, kPerThread = 20000;
  std::atomic<bool> done{false};
  std::thread reader([&] {
    while (!done.load()) (void)async.stats();
  });
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; ++i) {
        const std::uint64_t id = static_cast<std::uint64_t>(t) * kPerThread + i;
        AllocEvent e;
        e.alloc_id = id;
        e.bytes = 4096u * static_cast<std::size_t>(1 + i % 7);
        async.on_alloc(e);
        async.on_free({id, 0, 0});
      }
    });
  }
  for (auto& th : ts) th.join();
  done = true;
  reader.join();
  CHECK(async.stats().predictions == std::uint64_t{kThreads} * kPerThread);
}

TEST_CASE("async predictor: a stuck predictor never blocks the caller; the queue is bounded",
          "[predict][async]") {
  auto gated = std::make_unique<GatedPredictor>();
  GatedPredictor* g = gated.get();
  {
    AsyncPredictor async(std::move(gated), {.max_pending = 64, .local_batch = 1});
    AllocEvent first;
    async.on_alloc(first);
    g->wait_entered();  // the worker holds the first event and is stuck in the predictor
    for (int i = 1; i < 300; ++i) {
      AllocEvent e;
      e.alloc_id = static_cast<std::uint64_t>(i);
      async.on_alloc(e);  // returns at once although the predictor is stuck
    }
    CHECK(async.dropped() == 299 - 64);  // 64 queued, the rest dropped and counted
    g->open();
    const PredictorStats s = async.stats();
    CHECK(s.predictions == 1 + 64);
  }
}

TEST_CASE("async predictor: the callers write memory made at construction, not fresh pages",
          "[predict][async]") {
  // The feed grew vectors (the inbox, swapped with the worker's batch): a fresh process, and a
  // worker behind by more than they had held, wrote new pages on the malloc path, page faults
  // that were most of its cost in bench_hotpath.
  auto gated = std::make_unique<GatedPredictor>();
  GatedPredictor* g = gated.get();
  AsyncPredictor async(std::move(gated), {.local_batch = 64});
  for (std::uint64_t i = 0; i < 64; ++i) {  // one batch, handed over
    AllocEvent e;
    e.alloc_id = i;
    async.on_alloc(e);
  }
  g->wait_entered();  // the worker is stuck: everything pushed now stays queued
  const std::uint64_t before = minor_page_faults();
  for (std::uint64_t i = 64; i < 8000; ++i) {
    AllocEvent e;
    e.alloc_id = i;
    async.on_alloc(e);
  }
  const std::uint64_t faults = minor_page_faults() - before;
  CHECK(faults < 16);  // 8000 events are 375 KiB: 94 pages if they were new
  g->open();
  CHECK(async.stats().predictions == 8000);
}

TEST_CASE("async predictor: batches are recycled; the feed's memory stays bounded",
          "[predict][async]") {
  AsyncPredictor async(table_predictor(), {.local_batch = 64});
  const std::size_t initial = async.chunks();
  for (std::uint64_t round = 0; round < 50; ++round) {
    for (std::uint64_t i = 0; i < 20000; ++i) {
      AllocEvent e;
      e.alloc_id = round * 20000 + i;
      e.bytes = 4096;
      async.on_alloc(e);
      async.on_free({e.alloc_id, 0, 0});
    }
    async.drain();
  }
  CHECK(async.stats().predictions == 50u * 20000u);
  CHECK(async.dropped() == 0);
  // 40000 events between drains: at most that many queued, in chunks of 64, and the callers'.
  CHECK(async.chunks() <= std::max<std::size_t>(initial, 40000 / 64 + 2));
}

TEST_CASE("allocator: the predictor is fed asynchronously unless predict_sync", "[allocator][async]") {
  for (const bool sync : {false, true}) {
    auto r = parse_options(sync ? "policy:timeshare,predict_sync:true" : "policy:timeshare");
    REQUIRE(r.options);
    device::SimOptions so;
    so.capacity_bytes = 1 * kGiB;
    Allocator a(*r.options, std::make_unique<device::SimBackend>(so));
    CHECK((std::string(a.predictor_name()).find("(async)") != std::string::npos) == !sync);
    std::vector<void*> ps;
    for (int i = 0; i < 100; ++i) ps.push_back(a.malloc(static_cast<std::size_t>(1 + i) * kKiB, 0));
    for (void* p : ps) REQUIRE(a.free(p));
    const PredictorStats s = a.predictor_stats();
    CHECK(s.predictions == 100);
    CHECK(s.observed == 100);
  }
}
