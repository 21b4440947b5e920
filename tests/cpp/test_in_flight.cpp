// Work in flight: the strict sim counts a device fault where a GPU would crash (unmapping memory
// that queued kernels still use), and the pools never cause one. The temporal pool tests here
// failed before granules were quarantined (the `unsafe_unmap` option keeps that behaviour as a
// test of the detector).
#include <catch2/catch.hpp>

#include <cstring>
#include <memory>
#include <vector>

#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/pool/caching/caching_pool.h"
#include "timeshare/pool/temporal/temporal_pool.h"
#include "timeshare/replay/policies.h"

using namespace timeshare;
using namespace timeshare::pool;
using device::SimBackend;
using device::SimOptions;

namespace {

constexpr std::uint64_t kUs = 1000;  // ns
constexpr device::Stream kSide = 7;

SimOptions sim_of(std::size_t capacity_bytes, bool backing = false) {
  SimOptions o;
  o.capacity_bytes = capacity_bytes;
  o.backing = backing;
  return o;
}

// Allocates `bytes` on `stream`, then frees it while work on `stream` still uses it for
// `busy_ns` (the host drops the tensor before the GPU is done with it).
void free_in_flight(SimBackend& sim, Pool& pool, void* p, std::size_t bytes,
                    device::Stream stream, std::uint64_t busy_ns, std::uint64_t tick) {
  sim.touch(stream, p, bytes, sim.now_ns() + busy_ns);
  REQUIRE(pool.deallocate(p, tick) == FreeResult::kOk);
}

}  // namespace

TEST_CASE("sim: unmapping memory that queued work uses is a device fault", "[sim][in_flight]") {
  SimBackend sim(sim_of(kGiB, /*backing=*/true));
  void* base = nullptr;
  REQUIRE(sim.va_reserve(8 * kMiB, &base) == device::Status::kOk);
  auto* p = static_cast<char*>(base);
  REQUIRE(sim.map(p, 8 * kMiB) == device::Status::kOk);
  sim.touch(3, p + 2 * kMiB + 100, 4096, sim.now_ns() + 50 * kUs);
  CHECK(sim.stream_tail_ns(3) == 50 * kUs);  // the stream's queue ends no earlier

  SECTION("an unmap of an idle granule is fine") {
    CHECK(sim.unmap(p, 2 * kMiB) == device::Status::kOk);
    CHECK(sim.counters().device_faults == 0);
  }
  SECTION("an unmap under the work faults, with what, where and whose work") {
    CHECK(sim.unmap(p + 2 * kMiB, 2 * kMiB) == device::Status::kOk);  // a GPU does not refuse
    CHECK(sim.counters().device_faults == 1);
    const auto faults = sim.faults();
    REQUIRE(faults.size() == 1);
    CHECK(std::string(faults[0].what) == "unmap");
    CHECK(faults[0].addr == reinterpret_cast<std::uintptr_t>(p + 2 * kMiB));
    CHECK(faults[0].stream == 3);
    CHECK(faults[0].busy_until_ns == 50 * kUs);
  }
  SECTION("after an event recorded behind the work completes, the unmap is fine") {
    device::Event e = device::kNoEvent;
    REQUIRE(sim.create_event(&e) == device::Status::kOk);
    REQUIRE(sim.record(e, 3) == device::Status::kOk);
    CHECK_FALSE(sim.query(e));
    REQUIRE(sim.synchronize_event(e) == device::Status::kOk);
    CHECK(sim.counters().waits == 1);
    CHECK(sim.unmap(p + 2 * kMiB, 6 * kMiB) == device::Status::kOk);
    CHECK(sim.counters().device_faults == 0);
    REQUIRE(sim.unmap(p, 2 * kMiB) == device::Status::kOk);
  }
  SECTION("a copy uses its device range until it completes") {
    std::vector<char> host(kMiB, 'x');
    REQUIRE(sim.copy_async(p + 6 * kMiB, host.data(), host.size(),
                           device::CopyKind::kHostToDevice, 4) == device::Status::kOk);
    CHECK(sim.unmap(p + 6 * kMiB, 2 * kMiB) == device::Status::kOk);
    CHECK(sim.counters().device_faults == 1);
    sim.advance(kGiB);  // the dropped copy must not write into the unmapped range
    CHECK(sim.counters().device_faults == 1);
  }
  SECTION("cudaFree waits for the device, so releasing a reservation never faults") {
    void* r = nullptr;
    REQUIRE(sim.reserve(4 * kMiB, &r) == device::Status::kOk);
    sim.touch(5, r, 4 * kMiB, sim.now_ns() + 80 * kUs);
    REQUIRE(sim.release(r, 4 * kMiB) == device::Status::kOk);
    CHECK(sim.counters().device_faults == 0);
    CHECK(sim.counters().waits == 1);
    CHECK(sim.now_ns() >= 80 * kUs);
  }
}

TEST_CASE("temporal: a granule freed on one stream is not unmapped for another under its work",
          "[temporal][in_flight]") {
  SimBackend sim(sim_of(kGiB));
  TemporalPoolOptions o;
  o.map_ahead_granules = 0;  // granules counted one by one below
  SECTION("default (quarantine)") {}
  SECTION("unsafe_unmap: the detector sees the old behaviour") { o.unsafe_unmap = true; }
  TemporalPool pool(&sim, o);
  void* a = pool.allocate(8 * kMiB, 1, {0, 10, 0});
  REQUIRE(a);
  free_in_flight(sim, pool, a, 8 * kMiB, 1, 100 * kUs, 1);
  // Another stream's arena needs four granules: over the mark, cached ones would go first.
  void* b = pool.allocate(8 * kMiB, kSide, {2, 10, 1});
  REQUIRE(b);
  if (o.unsafe_unmap) {
    CHECK(sim.counters().device_faults > 0);
    return;
  }
  CHECK(sim.counters().device_faults == 0);
  CHECK(pool.mapped_granules() == 8);  // safety costs memory while stream 1 is busy
  CHECK(pool.quarantined_granules() == 4);
  CHECK(pool.device_waits() == 0);     // and no wait: nothing forced memory back
  // Once stream 1 is past the free, its granules go back at the next trim.
  sim.advance(200 * kUs);
  REQUIRE(pool.deallocate(b, 3) == FreeResult::kOk);
  void* c = pool.allocate(16 * kMiB, kSide, {4, 10, 2});
  REQUIRE(c);
  CHECK(pool.quarantined_granules() == 0);
  CHECK(sim.counters().device_faults == 0);
  CHECK(pool.mapped_granules() <= 12);
}

TEST_CASE("temporal: the same stream reuses its quarantined granules at once",
          "[temporal][in_flight]") {
  SimBackend sim(sim_of(kGiB));
  TemporalPool pool(&sim);
  void* a = pool.allocate(8 * kMiB, 1, {0, 10, 0});
  free_in_flight(sim, pool, a, 8 * kMiB, 1, 100 * kUs, 1);
  CHECK(pool.quarantined_granules() == 4);
  void* b = pool.allocate(8 * kMiB, 1, {2, 10, 1});  // stream order makes this safe
  CHECK(b == a);
  CHECK(pool.quarantined_granules() == 0);
  CHECK(sim.counters().reserve_calls == 1);  // no new map
  CHECK(sim.counters().device_faults == 0);
}

TEST_CASE("temporal: at the limit the pool waits for the stream, then unmaps",
          "[temporal][in_flight]") {
  SimBackend sim(sim_of(kGiB));
  TemporalPoolOptions o;
  o.map_ahead_granules = 0;  // granules counted one by one below
  SECTION("default (quarantine)") {}
  SECTION("unsafe_unmap") { o.unsafe_unmap = true; }
  TemporalPool pool(&sim, o);
  pool.set_limit_bytes(8 * kMiB);
  void* a = pool.allocate(8 * kMiB, 1, {0, 10, 0});
  free_in_flight(sim, pool, a, 8 * kMiB, 1, 100 * kUs, 1);
  void* b = pool.allocate(8 * kMiB, kSide, {2, 10, 1});
  REQUIRE(b != nullptr);
  CHECK(pool.mapped_granules() == 4);
  if (o.unsafe_unmap) {
    CHECK(sim.counters().device_faults > 0);
  } else {
    CHECK(sim.counters().device_faults == 0);
    CHECK(pool.device_waits() == 1);
    CHECK(sim.now_ns() >= 100 * kUs);  // the host waited for stream 1
  }
}

TEST_CASE("temporal: empty_cache and teardown wait for work in flight", "[temporal][in_flight]") {
  SimBackend sim(sim_of(kGiB, /*backing=*/true));
  {
    TemporalPool pool(&sim);
    std::vector<void*> blocks;
    for (std::uint64_t i = 0; i < 6; ++i) blocks.push_back(pool.allocate(3 * kMiB, 1, {i, 50, i}));
    void* keep = pool.allocate(4096, 2, {6, kPermanentLifespanEvents, 6});
    std::uint64_t t = 7;
    for (void* p : blocks) free_in_flight(sim, pool, p, 3 * kMiB, 1, 30 * kUs, t++);
    pool.empty_cache();
    CHECK(pool.cached_granules() == 0);
    CHECK(pool.device_waits() >= 1);
    CHECK(sim.counters().device_faults == 0);
    std::memset(keep, 1, 4096);
    void* last = pool.allocate(2 * kMiB, 2, {t, 10, 7});
    free_in_flight(sim, pool, last, 2 * kMiB, 2, 30 * kUs, t + 1);
  }  // teardown unmaps the rest only after stream 2's work
  CHECK(sim.counters().device_faults == 0);
}

TEST_CASE("caching pool: releases never fault (expandable unmaps sync, cudaFree syncs)",
          "[caching_pool][in_flight]") {
  for (bool expandable : {false, true}) {
    SimBackend sim(sim_of(kGiB));
    CachingPoolOptions o;
    o.expandable_segments = expandable;
    CachingPool pool(sim, o);
    std::vector<void*> blocks;
    for (std::uint64_t i = 0; i < 4; ++i) blocks.push_back(pool.allocate(30 * kMiB, 1, {i, 0, i}));
    std::uint64_t t = 4;
    for (void* p : blocks) free_in_flight(sim, pool, p, 30 * kMiB, 1, 40 * kUs, t++);
    pool.empty_cache();
    CHECK(sim.counters().device_faults == 0);
    CHECK(sim.counters().waits >= 1);
    CHECK(pool.stats().reserved_bytes[kAggregate].current == 0);
  }
}

namespace {

// A periodic two-stream trace: per iteration, parameters stay, activations grow then shrink,
// a side stream allocates and frees copies between, and sizes change every third iteration so
// that granules must move between arenas.
std::vector<trace::Event> two_stream_trace(int iterations) {
  std::vector<trace::Event> ev;
  std::uint64_t id = 0;
  std::uint64_t t = 0;
  auto alloc = [&](std::uint32_t stream, std::uint64_t bytes) {
    ev.push_back({trace::Op::kAlloc, {}, stream, id, bytes, t});
    t += 40;
    return id++;
  };
  auto free = [&](std::uint64_t which, std::uint32_t stream, std::uint64_t bytes) {
    ev.push_back({trace::Op::kFree, {}, stream, which, bytes, t});
    t += 40;
  };
  alloc(0, 64 * kMiB);  // parameters, never freed
  for (int it = 0; it < iterations; ++it) {
    const std::uint64_t act = (it % 3 == 2 ? 9 : 5) * kMiB + 4096;
    std::vector<std::uint64_t> saved;
    for (int l = 0; l < 12; ++l) saved.push_back(alloc(0, act));
    const std::uint64_t side = alloc(1, (it % 2 ? 40 : 24) * kMiB);
    free(side, 1, (it % 2 ? 40 : 24) * kMiB);
    for (int l = 11; l >= 0; --l) free(saved[static_cast<std::size_t>(l)], 0, act);
  }
  return ev;
}

}  // namespace

TEST_CASE("replay: no policy faults; unsafe_unmap makes the detector fire", "[replayer][in_flight]") {
  const std::vector<trace::Event> ev = two_stream_trace(30);
  for (const std::string& policy : trace::default_policies()) {
    const trace::ReplayResult r = trace::run_policy(policy, ev.data(), ev.size());
    INFO(policy << ": " << r.first_fault);
    CHECK(r.device_faults == 0);
  }
  trace::PolicyOptions unsafe;
  unsafe.conf = "unsafe_unmap:true";
  const trace::ReplayResult bad = trace::run_policy("timeshare-true", ev.data(), ev.size(), {}, unsafe);
  CHECK(bad.device_faults > 0);
  CHECK(bad.first_fault.find("unmap of granule") == 0);
  // Without work in flight (the old, permissive sim) the same policy shows nothing.
  trace::ReplayOptions permissive;
  permissive.gpu_lag_events = 0;
  CHECK(trace::run_policy("timeshare-true", ev.data(), ev.size(), permissive, unsafe).device_faults == 0);
  trace::PolicyOptions bad_conf;
  bad_conf.conf = "unsafe_unmap:maybe";
  CHECK_THROWS_AS(trace::run_policy("timeshare", ev.data(), ev.size(), {}, bad_conf),
                  std::invalid_argument);
}

TEST_CASE("temporal: memory moves to another region of the same stream without a wait",
          "[temporal][in_flight]") {
  SimBackend sim(sim_of(kGiB, /*backing=*/true));
  TemporalPoolOptions o;
  o.map_ahead_granules = 0;  // granules counted one by one below
  TemporalPool pool(&sim, o);
  // Activations (a finite lifespan) die; then a request of another region (permanent) needs
  // as many granules while the stream still runs the kernels that used the activations.
  void* act = pool.allocate(8 * kMiB, 1, {0, 10, 0});
  REQUIRE(act);
  free_in_flight(sim, pool, act, 8 * kMiB, 1, 100 * kUs, 1);
  void* param = pool.allocate(8 * kMiB, 1, {2, kPermanentLifespanEvents, 1});
  REQUIRE(param);
  CHECK(param != act);                           // another region's addresses
  CHECK(sim.counters().reserved_bytes == 8 * kMiB);  // the same physical memory, moved
  CHECK(pool.mapped_granules() == 4);
  CHECK(pool.device_waits() == 0);
  CHECK(sim.counters().device_faults == 0);
  std::memset(param, 0x5a, 8 * kMiB);            // usable at once
  // The old addresses are unmapped only once the stream has passed the free.
  sim.advance(200 * kUs);
  void* scratch = pool.allocate(2 * kMiB, 1, {3, 10, 2});
  REQUIRE(scratch);
  REQUIRE(pool.deallocate(scratch, 4) == FreeResult::kOk);
  pool.empty_cache();
  CHECK(sim.counters().device_faults == 0);
  CHECK(sim.counters().reserved_bytes == 8 * kMiB);
  REQUIRE(pool.deallocate(param, 5) == FreeResult::kOk);
}

TEST_CASE("pools: a block used on another stream (record_stream) is released only after both",
          "[temporal][caching_pool][in_flight]") {
  for (int kind = 0; kind < 3; ++kind) {
    SimBackend sim(sim_of(kGiB));
    std::unique_ptr<Pool> pool;
    if (kind == 0) {
      pool = std::make_unique<TemporalPool>(&sim);
    } else {
      CachingPoolOptions o;
      o.expandable_segments = kind == 2;
      pool = std::make_unique<CachingPool>(sim, o);
    }
    INFO("pool " << pool->name() << " kind " << kind);
    void* a = pool->allocate(24 * kMiB, 1, {0, 10, 0});
    REQUIRE(a);
    pool->record_stream(a, kSide);
    sim.touch(kSide, a, 24 * kMiB, sim.now_ns() + 300 * kUs);  // the side stream reads it
    free_in_flight(sim, *pool, a, 24 * kMiB, 1, 50 * kUs, 1);
    // Pressure from a third stream, then everything cached goes back.
    void* b = pool->allocate(24 * kMiB, 9, {2, 10, 1});
    REQUIRE(b);
    pool->empty_cache();
    CHECK(sim.counters().device_faults == 0);
    sim.advance(kGiB);
    REQUIRE(pool->deallocate(b, 3) == FreeResult::kOk);
    pool->empty_cache();
    CHECK(sim.counters().device_faults == 0);
  }
}
