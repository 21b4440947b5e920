// Private pools (CUDA graphs, MemPool) and the allocator's view of what is mapped, on the sim.
#include <catch2/catch.hpp>

#include <algorithm>
#include <vector>

#include "timeshare/allocator/allocator.h"
#include "timeshare/device/sim/sim_backend.h"

using namespace timeshare;

namespace {

std::unique_ptr<Allocator> make(const std::string& conf) {
  auto r = parse_options(conf);
  REQUIRE(r.options);
  device::SimOptions so;
  so.capacity_bytes = 2 * kGiB;
  so.backing = true;
  return std::make_unique<Allocator>(*r.options, std::make_unique<device::SimBackend>(so));
}

const PoolId kGraph{0, 3};

std::size_t mapped_in(const Allocator& a, PoolId id) {
  std::size_t bytes = 0;
  for (const auto& s : a.segments()) {
    if (s.pool == id) bytes += s.bytes;
  }
  return bytes;
}

}  // namespace

TEST_CASE("pools: a private pool's freed blocks are reused only inside it", "[allocator][pools]") {
  const std::string conf = GENERATE(as<std::string>{}, "policy:timeshare", "policy:torch");
  INFO(conf);
  auto a = make(conf);
  REQUIRE(a->begin_allocate_to_pool(kGraph, [](device::Stream) { return true; }).empty());
  std::vector<void*> inside;
  for (int i = 0; i < 4; ++i) inside.push_back(a->malloc(3 * kMiB, 0));
  REQUIRE(a->end_allocate_to_pool(kGraph).empty());
  for (void* p : inside) REQUIRE(a->free(p));
  std::vector<void*> outside;
  for (int i = 0; i < 8; ++i) outside.push_back(a->malloc(3 * kMiB, 0));
  for (void* p : outside) CHECK(std::find(inside.begin(), inside.end(), p) == inside.end());
  // The same pool again (a second capture into it) gets its own memory back.
  REQUIRE(a->begin_allocate_to_pool(kGraph, [](device::Stream) { return true; }).empty());
  void* again = a->malloc(3 * kMiB, 0);
  CHECK(std::find(inside.begin(), inside.end(), again) != inside.end());
  REQUIRE(a->end_allocate_to_pool(kGraph).empty());
  REQUIRE(a->free(again));
  CHECK(a->pool_use_count(kGraph) == 2);
  for (void* p : outside) a->free(p);
}

TEST_CASE("pools: a private pool keeps its mapped memory until released, then gives it back",
          "[allocator][pools]") {
  auto a = make("policy:timeshare");
  REQUIRE(a->create_or_incref_pool(kGraph).empty());
  REQUIRE(a->begin_allocate_to_pool(kGraph, [](device::Stream) { return true; }).empty());
  std::vector<void*> inside;
  for (int i = 0; i < 6; ++i) inside.push_back(a->malloc(5 * kMiB, 0));
  REQUIRE(a->end_allocate_to_pool(kGraph).empty());
  for (void* p : inside) a->free(p);
  const std::size_t kept = mapped_in(*a, kGraph);
  CHECK(kept >= 30 * kMiB);
  // Long after (well past the hysteresis windows) and after empty_cache, still mapped: a
  // graph replays into these addresses.
  for (int i = 0; i < 300'000; ++i) a->free(a->malloc(64 * kKiB, 0));
  a->empty_cache();
  CHECK(mapped_in(*a, kGraph) == kept);
  // releasePool by both holders (MemPool and the capture): the pool and its memory go.
  REQUIRE(a->release_pool(kGraph).empty());
  CHECK(a->pool_use_count(kGraph) == 1);
  CHECK(mapped_in(*a, kGraph) == kept);
  REQUIRE(a->release_pool(kGraph).empty());
  CHECK(a->pool_use_count(kGraph) == 0);
  CHECK(mapped_in(*a, kGraph) == 0);
  CHECK(!a->release_pool(kGraph).empty());  // no such pool any more: one clear line
}

TEST_CASE("pools: a released pool with live blocks goes when its last block is freed",
          "[allocator][pools]") {
  auto a = make("policy:timeshare");
  REQUIRE(a->begin_allocate_to_pool(kGraph, [](device::Stream) { return true; }).empty());
  void* p = a->malloc(4 * kMiB, 0);
  REQUIRE(a->end_allocate_to_pool(kGraph).empty());
  REQUIRE(a->release_pool(kGraph).empty());
  CHECK(mapped_in(*a, kGraph) > 0);
  const auto during = a->stats();
  CHECK(during.allocated_bytes[kAggregate].current == static_cast<std::int64_t>(4 * kMiB));
  REQUIRE(a->free(p));
  CHECK(mapped_in(*a, kGraph) == 0);
  const auto after = a->stats();
  CHECK(after.allocated_bytes[kAggregate].current == 0);
  CHECK(after.allocated_bytes[kAggregate].peak == static_cast<std::int64_t>(4 * kMiB));
  CHECK(after.allocated_bytes[kAggregate].freed == static_cast<std::int64_t>(4 * kMiB));
}

TEST_CASE("pools: statistics cover every pool, with peaks of the whole", "[allocator][pools]") {
  auto a = make("policy:timeshare");
  void* d = a->malloc(8 * kMiB, 0);
  REQUIRE(a->begin_allocate_to_pool(kGraph, [](device::Stream s) { return s == 7; }).empty());
  void* g = a->malloc(2 * kMiB, 7);   // routed (stream 7)
  void* h = a->malloc(2 * kMiB, 0);   // not routed
  REQUIRE(a->end_allocate_to_pool(kGraph).empty());
  CHECK(a->pool_live_blocks(kGraph) == std::vector<void*>{g});
  auto s = a->stats();
  CHECK(s.allocated_bytes[kAggregate].current == static_cast<std::int64_t>(12 * kMiB));
  CHECK(s.allocated_bytes[kAggregate].peak == static_cast<std::int64_t>(12 * kMiB));
  a->free(d);
  a->reset_peak_stats();
  s = a->stats();
  CHECK(s.allocated_bytes[kAggregate].peak == static_cast<std::int64_t>(4 * kMiB));
  CHECK(s.reserved_bytes[kAggregate].current >= s.allocated_bytes[kAggregate].current);
  const auto by_pool = a->private_pool_reserved();
  REQUIRE(by_pool.size() == 1);
  CHECK(by_pool[0].first == kGraph);
  a->free(g);
  a->free(h);
}

TEST_CASE("pools: during a capture no event is queried and no host waits", "[allocator][pools]") {
  auto a = make("policy:timeshare");
  device::Stream side = 0;
  REQUIRE(a->backend().create_stream(&side) == device::Status::kOk);
  void* p = a->malloc(4 * kMiB, 0);
  REQUIRE(a->record_stream(p, side));
  a->set_capturing(true);
  a->free(p);  // a pending block: its event on `side` must not be queried now
  for (int i = 0; i < 20; ++i) a->free(a->malloc(1 * kMiB, 0));
  const std::uint64_t held = a->calls_held_for_capture();
  CHECK(held > 0);
  a->set_capturing(false);
  a->free(a->malloc(1 * kMiB, 0));
  CHECK(a->calls_held_for_capture() == held);  // after the capture, queries reach the device
}

TEST_CASE("segments: mapped runs with their blocks and free gaps; largest cached run",
          "[allocator][pools]") {
  auto a = make("policy:timeshare,map_ahead:0");
  void* p = a->malloc(3 * kMiB, 0);
  void* q = a->malloc(1 * kMiB, 0);
  const auto segs = a->segments();
  REQUIRE(!segs.empty());
  std::size_t live = 0;
  for (const auto& s : segs) {
    std::size_t covered = 0;
    for (const auto& b : s.blocks) {
      covered += b.bytes;
      if (b.allocated) ++live;
    }
    CHECK(covered == s.bytes);
  }
  CHECK(live == 2);
  std::uintptr_t base = 0;
  std::size_t bytes = 0;
  REQUIRE(a->base_allocation(static_cast<char*>(p) + 100, &base, &bytes));
  CHECK(base <= reinterpret_cast<std::uintptr_t>(p));
  CHECK(a->largest_cached_bytes() < bytes);
  a->free(p);
  a->free(q);
  a->empty_cache();
  CHECK(a->largest_cached_bytes() == 0);
  CHECK(!a->base_allocation(p, &base, &bytes));
}
