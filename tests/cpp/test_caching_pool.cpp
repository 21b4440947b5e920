// CachingPool: hand-made traces whose answers follow from PyTorch's caching-allocator rules,
// a seeded random run checked after every step, failure paths and the hot-path speed.
#include <catch2/catch.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <map>
#include <random>
#include <vector>

#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/pool/caching/caching_pool.h"

using namespace timeshare;
using namespace timeshare::pool;
using device::SimBackend;
using device::SimOptions;
using device::Stream;

namespace {

constexpr AllocHint kNoHint{};

std::uintptr_t addr_of(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
std::int64_t cur(const StatArray& a, StatType t = kAggregate) { return a[t].current; }
std::int64_t i64(std::size_t n) { return static_cast<std::int64_t>(n); }

struct Live {
  std::size_t size_bytes;
  std::size_t requested_bytes;
  Stream stream;
};

// Checks every invariant the pool promises, against the pool's own snapshot and the sim's
// independent count of reserved bytes.
void check_invariants(const CachingPool& pool, SimBackend& sim,
                      const std::map<std::uintptr_t, Live>& live) {
  const DeviceStats& s = pool.stats();
  const auto segments = pool.snapshot();

  // Segments are disjoint, their blocks tile them, and they sum to the reserved bytes.
  std::size_t reserved = 0;
  std::int64_t plain_segments = 0;
  std::uintptr_t prev_end = 0;
  for (const SegmentInfo& seg : segments) {
    REQUIRE(seg.addr >= prev_end);
    prev_end = seg.addr + seg.total_bytes;
    std::uintptr_t at = seg.addr;
    for (const BlockInfo& b : seg.blocks) {
      REQUIRE(b.addr == at);
      REQUIRE(b.size_bytes % kMinBlockSize == 0);
      at += b.size_bytes;
    }
    REQUIRE(at == prev_end);
    reserved += seg.total_bytes;
    if (!seg.is_expandable) ++plain_segments;
  }
  REQUIRE(reserved == sim.counters().reserved_bytes);
  REQUIRE(cur(s.reserved_bytes) == i64(reserved));
  REQUIRE(cur(s.reserved_bytes, kSmallPool) + cur(s.reserved_bytes, kLargePool) == i64(reserved));
  if (!pool.options().expandable_segments) REQUIRE(cur(s.segment) == plain_segments);

  // Live blocks: aligned, disjoint, each inside a segment; stats add up.
  std::size_t allocated = 0;
  std::uintptr_t live_end = 0;
  for (const auto& [addr, l] : live) {
    REQUIRE(addr % kMinBlockSize == 0);
    REQUIRE(addr >= live_end);
    live_end = addr + l.size_bytes;
    REQUIRE(pool.block_size(reinterpret_cast<void*>(addr)) == l.size_bytes);
    auto seg = std::upper_bound(segments.begin(), segments.end(), addr,
                                [](std::uintptr_t a, const SegmentInfo& g) { return a < g.addr; });
    REQUIRE(seg != segments.begin());
    --seg;
    REQUIRE(addr + l.size_bytes <= seg->addr + seg->total_bytes);
    allocated += l.size_bytes;
  }
  REQUIRE(cur(s.allocated_bytes) == i64(allocated));
  REQUIRE(cur(s.allocation) == i64(live.size()));
  REQUIRE(cur(s.allocated_bytes, kSmallPool) + cur(s.allocated_bytes, kLargePool) ==
          i64(allocated));
  REQUIRE(cur(s.active_bytes) >= cur(s.allocated_bytes));
  REQUIRE(cur(s.active_bytes) + i64(pool.cached_free_bytes()) == i64(reserved));
  for (const StatArray* a : {&s.allocation, &s.segment, &s.active, &s.inactive_split,
                             &s.allocated_bytes, &s.reserved_bytes, &s.active_bytes,
                             &s.inactive_split_bytes, &s.requested_bytes}) {
    for (const Stat& st : *a) {
      REQUIRE(st.current >= 0);
      REQUIRE(st.peak >= st.current);
    }
  }
}

}  // namespace

TEST_CASE("caching pool: size rules", "[caching_pool]") {
  CachingPoolOptions plain;
  CHECK(caching_round_size(1, plain) == 512);
  CHECK(caching_round_size(512, plain) == 512);
  CHECK(caching_round_size(513, plain) == 1024);
  CHECK(caching_round_size(12 * kMiB + 1, plain) == 12 * kMiB + 512);
  CHECK(caching_segment_size(300 * kKiB) == kSmallBuffer);
  CHECK(caching_segment_size(kMiB) == kSmallBuffer);
  CHECK(caching_segment_size(kMiB + 512) == kLargeBuffer);
  CHECK(caching_segment_size(10 * kMiB - 512) == kLargeBuffer);
  CHECK(caching_segment_size(10 * kMiB) == 10 * kMiB);
  CHECK(caching_segment_size(12 * kMiB + 512) == 14 * kMiB);

  CachingPoolOptions four;
  four.roundup_power2_divisions = {4};
  CHECK(caching_round_size(1200, four) == 1536);             // not above 512 * 4: plain rounding
  CHECK(caching_round_size(3 * kMiB + 1, four) == 3 * kMiB + 512 * kKiB);  // steps of 512 KiB
  CHECK(caching_round_size(4 * kMiB, four) == 4 * kMiB);      // powers of two stay
  CHECK(caching_round_size(5000, four) == 5120);              // 4096 + 1024
  CachingPoolOptions per_interval;
  per_interval.roundup_power2_divisions.assign(kRoundupPower2Intervals, 0);
  per_interval.roundup_power2_divisions[1] = 2;               // [2 MiB, 4 MiB) only
  CHECK(caching_round_size(3 * kMiB + 1, per_interval) == 4 * kMiB);
  CHECK(caching_round_size(5 * kMiB + 1, per_interval) == 5 * kMiB + 512);
}

TEST_CASE("caching pool: small requests pack into one 2 MiB segment", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  CachingPool pool(sim);
  void* a = pool.allocate(300 * kKiB, 0, kNoHint);
  void* b = pool.allocate(300 * kKiB, 0, kNoHint);
  void* c = pool.allocate(300 * kKiB, 0, kNoHint);
  const DeviceStats& s = pool.stats();
  CHECK(cur(s.segment) == 1);
  CHECK(cur(s.segment, kSmallPool) == 1);
  CHECK(cur(s.reserved_bytes) == i64(kSmallBuffer));
  CHECK(addr_of(b) == addr_of(a) + 300 * kKiB);
  CHECK(addr_of(c) == addr_of(b) + 300 * kKiB);
  CHECK(cur(s.inactive_split) == 1);
  CHECK(cur(s.inactive_split_bytes) == i64(kSmallBuffer - 900 * kKiB));
  CHECK(sim.counters().reserve_calls == 1);

  // Coalescing: freed in any order, the segment is one free block again and can be released.
  REQUIRE(pool.deallocate(b, 1) == FreeResult::kOk);
  CHECK(cur(s.inactive_split) == 2);
  REQUIRE(pool.deallocate(a, 2) == FreeResult::kOk);
  REQUIRE(pool.deallocate(c, 3) == FreeResult::kOk);
  CHECK(cur(s.inactive_split) == 0);
  CHECK(cur(s.inactive_split_bytes) == 0);
  CHECK(pool.snapshot().size() == 1);
  CHECK(pool.snapshot()[0].blocks.size() == 1);
  CHECK(pool.largest_free_block_bytes() == kSmallBuffer);
  pool.empty_cache();
  CHECK(cur(s.reserved_bytes) == 0);
  CHECK(sim.counters().reserved_bytes == 0);
  CHECK(s.num_device_alloc == 1);
  CHECK(s.num_device_free == 1);
}

TEST_CASE("caching pool: large requests, segment sizes and splitting", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  CachingPool pool(sim);
  const DeviceStats& s = pool.stats();

  SECTION("5 MiB takes a 20 MiB segment and the rest is reused") {
    void* a = pool.allocate(5 * kMiB, 0, kNoHint);
    CHECK(cur(s.reserved_bytes) == i64(20 * kMiB));
    CHECK(cur(s.segment, kLargePool) == 1);
    CHECK(cur(s.inactive_split_bytes, kLargePool) == i64(15 * kMiB));
    void* b = pool.allocate(5 * kMiB, 0, kNoHint);
    CHECK(addr_of(b) == addr_of(a) + 5 * kMiB);
    CHECK(cur(s.segment) == 1);
    // Best fit: a freed 5 MiB block beats the 10 MiB tail for a 4 MiB request; 1 MiB left
    // over is not more than kSmallSize, so the block is not split.
    REQUIRE(pool.deallocate(a, 0) == FreeResult::kOk);
    void* c = pool.allocate(4 * kMiB, 0, kNoHint);
    CHECK(c == a);
    CHECK(pool.block_size(c) == 5 * kMiB);
    CHECK(cur(s.allocated_bytes) == i64(10 * kMiB));
    CHECK(cur(s.requested_bytes) == i64(9 * kMiB));
    // 3.5 MiB from the 10 MiB tail leaves 6.5 MiB: split.
    void* d = pool.allocate(3 * kMiB + 512 * kKiB, 0, kNoHint);
    CHECK(addr_of(d) == addr_of(a) + 10 * kMiB);
    CHECK(pool.block_size(d) == 3 * kMiB + 512 * kKiB);
    CHECK(cur(s.segment) == 1);
  }

  SECTION("12 MiB + 1 rounds to a 14 MiB segment") {
    void* a = pool.allocate(12 * kMiB + 1, 0, kNoHint);
    REQUIRE(a);
    CHECK(pool.block_size(a) == 12 * kMiB + 512);
    CHECK(cur(s.reserved_bytes) == i64(14 * kMiB));
    CHECK(cur(s.requested_bytes) == i64(12 * kMiB + 1));
    CHECK(cur(s.inactive_split) == 1);  // 2 MiB - 512 B remain: more than 1 MiB, so split
  }

  SECTION("a block is not handed to another stream") {
    Stream s1 = 0;
    REQUIRE(sim.create_stream(&s1) == device::Status::kOk);
    void* a = pool.allocate(kMiB, 0, kNoHint);
    void* b = pool.allocate(kMiB, 0, kNoHint);  // fills the 2 MiB segment
    REQUIRE(pool.deallocate(a, 0) == FreeResult::kOk);
    REQUIRE(pool.deallocate(b, 0) == FreeResult::kOk);
    void* c = pool.allocate(kMiB, s1, kNoHint);
    CHECK(c != a);
    CHECK(cur(s.segment) == 2);
    void* d = pool.allocate(kMiB, 0, kNoHint);
    CHECK(d == a);
    CHECK(cur(s.segment) == 2);
  }
}

TEST_CASE("caching pool: record_stream defers reuse until the other stream is done",
          "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  CachingPool pool(sim);
  const DeviceStats& s = pool.stats();
  Stream s1 = 0;
  REQUIRE(sim.create_stream(&s1) == device::Status::kOk);

  void* p = pool.allocate(kMiB, 0, kNoHint);
  void* q = pool.allocate(kMiB, 0, kNoHint);  // the segment is full
  pool.record_stream(p, s1);
  pool.record_stream(p, 0);  // the allocation stream itself: ignored
  sim.enqueue_work(s1, 1000);
  REQUIRE(pool.deallocate(p, 1) == FreeResult::kOk);
  CHECK(cur(s.allocation) == 1);
  CHECK(cur(s.active) == 2);  // p is still active: waiting for s1
  CHECK(pool.deallocate(p, 1) == FreeResult::kUnknownPointer);

  void* r = pool.allocate(kMiB, 0, kNoHint);
  CHECK(r != p);
  CHECK(cur(s.segment) == 2);
  REQUIRE(pool.deallocate(r, 2) == FreeResult::kOk);

  sim.advance(999);
  void* t = pool.allocate(kMiB, 0, kNoHint);
  CHECK(t == r);  // p's work on s1 is not done yet
  sim.advance(1);
  void* u = pool.allocate(kMiB, 0, kNoHint);
  CHECK(u == p);  // the event completed: p is back in the pool
  CHECK(cur(s.active) == 3);
  (void)q;

  // empty_cache waits for pending events, then releases.
  pool.record_stream(u, s1);
  sim.enqueue_work(s1, 5000);
  REQUIRE(pool.deallocate(u, 3) == FreeResult::kOk);
  REQUIRE(pool.deallocate(t, 3) == FreeResult::kOk);
  REQUIRE(pool.deallocate(q, 3) == FreeResult::kOk);
  pool.empty_cache();
  CHECK(sim.now_ns() >= 6000);
  CHECK(cur(s.reserved_bytes) == 0);
  CHECK(cur(s.active) == 0);
  CHECK(s.num_sync_all_streams == 1);
}

TEST_CASE("caching pool: retry after freeing the cache, and out of memory", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = 40 * kMiB});
  CachingPool pool(sim);
  const DeviceStats& s = pool.stats();

  void* a = pool.allocate(15 * kMiB, 0, kNoHint);  // a 16 MiB segment
  REQUIRE(a);
  REQUIRE(pool.deallocate(a, 1) == FreeResult::kOk);
  CHECK(cur(s.reserved_bytes) == i64(16 * kMiB));
  void* b = pool.allocate(30 * kMiB, 0, kNoHint);  // fits only once the cache is freed
  REQUIRE(b);
  CHECK(s.num_alloc_retries == 1);
  CHECK(s.num_ooms == 0);
  CHECK(cur(s.reserved_bytes) == i64(30 * kMiB));

  void* c = pool.allocate(12 * kMiB, 0, kNoHint);  // 30 + 12 > 40, and nothing is cached
  CHECK(c == nullptr);
  CHECK(s.num_ooms == 1);
  CHECK(s.num_alloc_retries == 2);
  const std::string msg = pool.describe();
  CHECK(msg.find("Tried to allocate 12.00 MiB") != std::string::npos);
  CHECK(msg.find("30.00 MiB is allocated") != std::string::npos);
  CHECK(pool.allocate(0, 0, kNoHint) == nullptr);
  CHECK(pool.allocate(std::size_t{1} << 62, 0, kNoHint) == nullptr);  // absurd: refused
  CHECK(s.num_ooms == 2);
  REQUIRE(pool.deallocate(b, 2) == FreeResult::kOk);
  CHECK(pool.allocate(12 * kMiB, 0, kNoHint) != nullptr);  // room again (after a retry)
}

TEST_CASE("caching pool: injected device failures give a clean retry or nullptr",
          "[caching_pool]") {
  SimBackend sim({.capacity_bytes = 64 * kMiB});
  CachingPool pool(sim);
  const DeviceStats& s = pool.stats();
  sim.fail_reserve_at(1);
  void* a = pool.allocate(kMiB, 0, kNoHint);  // first reserve fails, the retry succeeds
  REQUIRE(a);
  CHECK(s.num_alloc_retries == 1);
  CHECK(s.num_ooms == 0);
  CHECK(cur(s.segment) == 1);

  // With the device full, a failure leaves the pool consistent and usable.
  void* big = pool.allocate(62 * kMiB, 0, kNoHint);
  REQUIRE(big);
  sim.fail_reserve_at(1);
  CHECK(pool.allocate(4 * kMiB, 0, kNoHint) == nullptr);
  CHECK(s.num_ooms == 1);
  REQUIRE(pool.deallocate(big, 1) == FreeResult::kOk);
  void* c = pool.allocate(4 * kMiB, 0, kNoHint);  // from the cached 62 MiB block, split
  CHECK(c == big);
  CHECK(pool.block_size(c) == 4 * kMiB);
  CHECK(cur(s.reserved_bytes) == i64(64 * kMiB));

  SECTION("expandable mode") {
    SimBackend vm({.capacity_bytes = 128 * kMiB});
    CachingPool xp(vm, {.expandable_segments = true});
    vm.fail_reserve_at(1);
    void* x = xp.allocate(30 * kMiB, 0, kNoHint);  // needs 2 pages; the first map fails
    REQUIRE(x);
    CHECK(xp.stats().num_alloc_retries == 1);
    CHECK(vm.counters().reserved_bytes == 40 * kMiB);
    // Growing by 2 pages from the 10 MiB free tail: the second map fails, the first is undone,
    // and the retry after freeing the cache maps both.
    vm.fail_reserve_at(2);
    void* y = xp.allocate(50 * kMiB, 0, kNoHint);
    REQUIRE(y);
    CHECK(addr_of(y) == addr_of(x) + 30 * kMiB);
    CHECK(xp.stats().num_alloc_retries == 2);
    CHECK(vm.counters().reserved_bytes == 80 * kMiB);
    CHECK(cur(xp.stats().reserved_bytes) == i64(80 * kMiB));
    CHECK(xp.allocate(100 * kMiB, 0, kNoHint) == nullptr);  // past the device
    CHECK(xp.stats().num_ooms == 1);
    CHECK(vm.counters().reserved_bytes == 80 * kMiB);
    CHECK(cur(xp.stats().reserved_bytes) == i64(80 * kMiB));
  }
}

TEST_CASE("caching pool: limit (memory fraction) and garbage collection", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  SECTION("limit") {
    CachingPool pool(sim);
    pool.set_limit_bytes(30 * kMiB);
    CHECK(pool.limit_bytes() == 30 * kMiB);
    void* a = pool.allocate(5 * kMiB, 0, kNoHint);  // 20 MiB segment
    REQUIRE(a);
    CHECK(pool.allocate(16 * kMiB, 0, kNoHint) == nullptr);  // new 16 MiB: 20 + 16 > 30
    CHECK(pool.stats().num_ooms == 1);
    CHECK(pool.describe().find("30.00 MiB allowed") != std::string::npos);
    void* b = pool.allocate(15 * kMiB, 0, kNoHint);  // the 20 MiB segment's 15 MiB tail
    REQUIRE(b);
    CHECK(addr_of(b) == addr_of(a) + 5 * kMiB);
    CHECK(pool.block_size(b) == 15 * kMiB);
    CHECK(cur(pool.stats().reserved_bytes) == i64(20 * kMiB));
  }
  SECTION("garbage collection releases cached segments unused for longest") {
    CachingPool pool(sim, {.garbage_collection_threshold = 0.5});
    pool.set_limit_bytes(100 * kMiB);
    void* a = pool.allocate(30 * kMiB, 0, kNoHint);
    void* b = pool.allocate(24 * kMiB, 0, kNoHint);
    REQUIRE(pool.deallocate(a, 0) == FreeResult::kOk);
    REQUIRE(pool.deallocate(b, 0) == FreeResult::kOk);
    CHECK(cur(pool.stats().reserved_bytes) == i64(54 * kMiB));  // above 50 MiB
    void* c = pool.allocate(40 * kMiB, 0, kNoHint);  // no fit: GC runs before reserving
    REQUIRE(c);
    CHECK(cur(pool.stats().reserved_bytes) == i64(40 * kMiB));
    CHECK(pool.stats().num_alloc_retries == 0);
  }
}

TEST_CASE("caching pool: max_split_size keeps oversize blocks whole", "[caching_pool]") {
  SECTION("oversize blocks are not split and not taken by smaller requests") {
    SimBackend sim({.capacity_bytes = kGiB});
    CachingPool pool(sim, {.max_split_size_bytes = 40 * kMiB});
    const DeviceStats& s = pool.stats();
    CHECK(s.max_split_size == i64(40 * kMiB));
    void* a = pool.allocate(50 * kMiB, 0, kNoHint);
    CHECK(s.oversize_segments.current == 1);
    CHECK(s.oversize_allocations.current == 1);
    REQUIRE(pool.deallocate(a, 0) == FreeResult::kOk);
    CHECK(s.oversize_allocations.current == 0);
    void* b = pool.allocate(30 * kMiB, 0, kNoHint);  // under the limit: not the 50 MiB block
    CHECK(b != a);
    CHECK(cur(s.segment) == 2);
    void* c = pool.allocate(45 * kMiB, 0, kNoHint);  // oversize, within 20 MiB: taken whole
    CHECK(c == a);
    CHECK(pool.block_size(c) == 50 * kMiB);
    CHECK(cur(s.inactive_split) == 0);
    REQUIRE(pool.deallocate(c, 0) == FreeResult::kOk);
    void* d = pool.allocate(30 * kMiB + 512, 0, kNoHint);  // under the limit: new segment
    CHECK(d != a);
    CHECK(cur(s.segment) == 3);
    void* e = pool.allocate(41 * kMiB, 0, kNoHint);  // 50 < 41 + 20: takes it
    CHECK(e == a);
    REQUIRE(pool.deallocate(e, 0) == FreeResult::kOk);
    void* f = pool.allocate(28 * kMiB, 0, kNoHint);  // 50 >= 28 + 20 ... and under the limit
    CHECK(f != a);
  }
  SECTION("one cached oversize block is released before everything else") {
    SimBackend sim({.capacity_bytes = 100 * kMiB});
    CachingPool pool(sim, {.max_split_size_bytes = 40 * kMiB});
    const DeviceStats& s = pool.stats();
    void* a = pool.allocate(50 * kMiB, 0, kNoHint);
    REQUIRE(pool.deallocate(a, 0) == FreeResult::kOk);
    void* small = pool.allocate(1000, 0, kNoHint);  // a 2 MiB small segment stays cached
    REQUIRE(pool.deallocate(small, 0) == FreeResult::kOk);
    void* b = pool.allocate(30 * kMiB, 0, kNoHint);  // 82 MiB reserved
    void* c = pool.allocate(30 * kMiB, 0, kNoHint);  // 112 > 100: release the 50 MiB block
    REQUIRE(b);
    REQUIRE(c);
    CHECK(s.num_alloc_retries == 0);   // release_available_cached_blocks was enough
    CHECK(s.num_sync_all_streams == 0);
    CHECK(cur(s.reserved_bytes) == i64(62 * kMiB));  // the small segment is still cached
    CHECK(s.oversize_segments.current == 0);
  }
}

TEST_CASE("caching pool: expandable segments grow by pages", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  CachingPool pool(sim, {.expandable_segments = true});
  const DeviceStats& s = pool.stats();
  CHECK(std::string(pool.name()) == "torch-expandable");

  void* a = pool.allocate(5 * kMiB, 0, kNoHint);
  CHECK(cur(s.reserved_bytes) == i64(kLargeBuffer));  // one 20 MiB page of the large pool
  void* b = pool.allocate(18 * kMiB, 0, kNoHint);     // 23 MiB live: a second page
  CHECK(addr_of(b) == addr_of(a) + 5 * kMiB);          // one growing segment
  CHECK(cur(s.reserved_bytes) == i64(2 * kLargeBuffer));
  void* c = pool.allocate(300 * kKiB, 0, kNoHint);      // small pool: 2 MiB pages
  CHECK(cur(s.reserved_bytes, kSmallPool) == i64(kSmallBuffer));
  CHECK(cur(s.segment) == 0);                           // as torch: not counted as segments
  CHECK(s.num_device_alloc == 3);

  REQUIRE(pool.deallocate(a, 0) == FreeResult::kOk);
  REQUIRE(pool.deallocate(b, 0) == FreeResult::kOk);
  REQUIRE(pool.deallocate(c, 0) == FreeResult::kOk);
  pool.empty_cache();
  CHECK(cur(s.reserved_bytes) == 0);
  CHECK(sim.counters().reserved_bytes == 0);

  SECTION("stack-like trace: reserved stays within live bytes rounded up to pages") {
    std::mt19937_64 rng(7);
    std::vector<std::pair<void*, std::size_t>> stack;
    std::size_t live = 0;
    std::size_t peak_live = 0;
    for (int step = 0; step < 3000; ++step) {
      const bool push = stack.empty() || (stack.size() < 40 && rng() % 100 < 55);
      if (push) {
        const std::size_t bytes = kMiB + 512 + rng() % (30 * kMiB);
        void* p = pool.allocate(bytes, 0, kNoHint);
        REQUIRE(p);
        const std::size_t rounded = caching_round_size(bytes, pool.options());
        REQUIRE(pool.block_size(p) == rounded);
        stack.emplace_back(p, rounded);
        live += rounded;
        peak_live = std::max(peak_live, live);
      } else {
        REQUIRE(pool.deallocate(stack.back().first, 0) == FreeResult::kOk);
        live -= stack.back().second;
        stack.pop_back();
      }
      REQUIRE(cur(s.reserved_bytes) <= i64(round_up(peak_live, kLargeBuffer)));
      REQUIRE(i64(sim.counters().reserved_bytes) == cur(s.reserved_bytes));
    }
  }
}

TEST_CASE("caching pool: unknown pointers", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  CachingPool pool(sim);
  int local = 0;
  CHECK(pool.deallocate(&local, 0) == FreeResult::kUnknownPointer);
  void* a = pool.allocate(1000, 0, kNoHint);
  CHECK(pool.deallocate(static_cast<char*>(a) + 512, 0) == FreeResult::kUnknownPointer);
  CHECK(pool.block_size(&local) == 0);
  CHECK(pool.block_size(a) == 1024);
  CHECK(pool.stats().requested_bytes[kAggregate].current == 1000);
  CHECK(pool.deallocate(a, 0) == FreeResult::kOk);
  CHECK(pool.deallocate(a, 0) == FreeResult::kUnknownPointer);
  pool.record_stream(a, 5);  // unknown: ignored
}

TEST_CASE("caching pool: seeded random run keeps every invariant after every step",
          "[caching_pool]") {
  struct Variant {
    const char* name;
    CachingPoolOptions options;
  };
  const Variant variants[] = {
      {"default", {}},
      {"expandable", {.expandable_segments = true}},
      {"max_split", {.max_split_size_bytes = 24 * kMiB}},
      {"roundup", {.roundup_power2_divisions = {4}}},
  };
  for (const Variant& v : variants) {
    DYNAMIC_SECTION(v.name) {
      SimBackend sim({.capacity_bytes = 512 * kMiB});
      CachingPool pool(sim, v.options);
      Stream streams[2] = {0, 0};
      REQUIRE(sim.create_stream(&streams[1]) == device::Status::kOk);
      std::mt19937_64 rng(12345);
      std::map<std::uintptr_t, Live> live;
      std::vector<std::uintptr_t> order;  // for picking a random live block
      struct Guard {
        std::uintptr_t addr;
        std::size_t bytes;
        std::uint64_t until_ns;
      };
      std::vector<Guard> guards;  // blocks another stream may still touch
      std::size_t peak_allocated = 0;
      std::size_t allocated = 0;
      std::int64_t ooms = 0;

      for (int step = 0; step < 4000; ++step) {
        const unsigned roll = static_cast<unsigned>(rng() % 100);
        if (roll < (order.size() < 120 ? 55u : 40u) || order.empty()) {
          std::size_t bytes = 0;
          const unsigned kind = static_cast<unsigned>(rng() % 10);
          if (kind < 6) bytes = 1 + rng() % kMiB;                     // small
          else if (kind < 9) bytes = kMiB + 1 + rng() % (9 * kMiB);   // large, shared segments
          else bytes = 10 * kMiB + rng() % (40 * kMiB);                // own segments
          const Stream stream = streams[rng() % 2];
          void* p = pool.allocate(bytes, stream, kNoHint);
          if (p == nullptr) {
            ++ooms;
            REQUIRE(pool.stats().num_ooms == ooms);
          } else {
            const std::uintptr_t a = addr_of(p);
            const std::size_t size = pool.block_size(p);
            REQUIRE(size >= bytes);
            const std::size_t rounded = caching_round_size(bytes, pool.options());
            REQUIRE(size >= rounded);
            // Splitting rules: exact in the small pool and with expandable segments; a large
            // block keeps a remainder of at most 1 MiB; an oversize one at most 20 MiB.
            if (rounded <= kSmallSize || v.options.expandable_segments) {
              REQUIRE(size == rounded);
            } else if (rounded >= v.options.max_split_size_bytes) {
              REQUIRE(size < rounded + kLargeBuffer);
            } else {
              REQUIRE(size - rounded <= kSmallSize);
            }
            REQUIRE(live.find(a) == live.end());
            for (const Guard& g : guards) {  // never handed out while another stream may use it
              if (a < g.addr + g.bytes && g.addr < a + size) REQUIRE(sim.now_ns() >= g.until_ns);
            }
            live[a] = {size, bytes, stream};
            order.push_back(a);
            allocated += size;
            peak_allocated = std::max(peak_allocated, allocated);
          }
        } else if (roll < 95) {
          const std::size_t i = rng() % order.size();
          const std::uintptr_t a = order[i];
          order[i] = order.back();
          order.pop_back();
          const Live l = live.at(a);
          if (rng() % 8 == 0) {  // used on the other stream too, with work still queued there
            const Stream other = l.stream == streams[0] ? streams[1] : streams[0];
            pool.record_stream(reinterpret_cast<void*>(a), other);
            sim.enqueue_work(other, 1 + rng() % 20'000);
            guards.push_back({a, l.size_bytes, sim.stream_tail_ns(other)});
          }
          REQUIRE(pool.deallocate(reinterpret_cast<void*>(a), step) == FreeResult::kOk);
          live.erase(a);
          allocated -= l.size_bytes;
        } else if (roll < 99) {
          sim.advance(rng() % 5'000);
        } else {
          pool.empty_cache();
        }
        guards.erase(std::remove_if(guards.begin(), guards.end(),
                                    [&](const Guard& g) { return g.until_ns <= sim.now_ns(); }),
                     guards.end());
        check_invariants(pool, sim, live);
        REQUIRE(pool.stats().allocated_bytes[kAggregate].peak == i64(peak_allocated));
        if (!v.options.expandable_segments) {
          REQUIRE(pool.stats().reserved_bytes[kAggregate].peak ==
                  i64(sim.counters().peak_reserved_bytes));
        }
      }
      // Everything freed and the cache emptied: nothing is left on the device.
      for (const std::uintptr_t a : order) {
        REQUIRE(pool.deallocate(reinterpret_cast<void*>(a), 0) == FreeResult::kOk);
      }
      pool.empty_cache();
      CHECK(sim.counters().reserved_bytes == 0);
      CHECK(cur(pool.stats().reserved_bytes) == 0);
      CHECK(cur(pool.stats().active) == 0);
      CHECK(cur(pool.stats().inactive_split) == 0);
      CHECK(cur(pool.stats().requested_bytes) == 0);
    }
  }
}

TEST_CASE("caching pool: destruction gives everything back", "[caching_pool]") {
  SimBackend sim({.capacity_bytes = kGiB});
  {
    CachingPool pool(sim);
    CachingPool xp(sim, {.expandable_segments = true});
    REQUIRE(pool.allocate(3 * kMiB, 0, kNoHint));
    REQUIRE(pool.allocate(100, 0, kNoHint));
    REQUIRE(xp.allocate(50 * kMiB, 0, kNoHint));
    CHECK(sim.counters().reserved_bytes > 0);
  }
  CHECK(sim.counters().reserved_bytes == 0);
}

// Hot path: a replay-like mix of sizes, a few hundred live blocks, two streams.
// Run with: timeshare_tests "[bench]"
TEST_CASE("caching pool: ns per allocate+deallocate pair", "[.][bench]") {
  for (const bool expandable : {false, true}) {
    SimBackend sim({.capacity_bytes = 80 * kGiB});
    CachingPool pool(sim, {.expandable_segments = expandable});
    std::mt19937_64 rng(99);
    constexpr std::size_t kLive = 256;
    constexpr int kPairs = 2'000'000;
    std::vector<std::size_t> sizes(4096);
    for (auto& sz : sizes) {
      const unsigned k = static_cast<unsigned>(rng() % 10);
      sz = k < 6 ? 1 + rng() % kMiB : k < 9 ? kMiB + rng() % (9 * kMiB) : 10 * kMiB + rng() % (90 * kMiB);
    }
    std::vector<void*> ring(kLive, nullptr);
    for (std::size_t i = 0; i < kLive; ++i) ring[i] = pool.allocate(sizes[i], i % 2, kNoHint);
    const auto t0 = std::chrono::steady_clock::now();
    for (int i = 0; i < kPairs; ++i) {
      const std::size_t slot = (static_cast<std::size_t>(i) * 7919) % kLive;
      pool.deallocate(ring[slot], 0);
      ring[slot] = pool.allocate(sizes[static_cast<std::size_t>(i) % sizes.size()], slot % 2, kNoHint);
    }
    const auto t1 = std::chrono::steady_clock::now();
    const double ns = std::chrono::duration<double, std::nano>(t1 - t0).count() / kPairs;
    std::printf("caching pool (%s): %.1f ns per allocate+deallocate pair, %.2f M events/s\n",
                expandable ? "expandable" : "default", ns, 2e3 / ns);
    CHECK(2e3 / ns >= 1.0);  // at least 1 million events per second
  }
}
