// The pinned arena: one pinned allocation, sub-allocated, coalesced on free.
#include <catch2/catch.hpp>

#include <cstdint>
#include <vector>

#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/spill/need_order.h"
#include "timeshare/spill/pinned_arena.h"

using namespace timeshare;
using namespace timeshare::spill;

TEST_CASE("spill arena: one pinned allocation, aligned sub-ranges, reuse", "[spill]") {
  device::SimBackend b({.pinned_capacity_bytes = 64 * kMiB});
  PinnedArena a(b);
  REQUIRE(a.init(8 * kMiB) == device::Status::kOk);
  CHECK(b.counters().pinned_bytes == 8 * kMiB);
  std::vector<void*> ranges;
  for (int i = 0; i < 8; ++i) {
    void* p = a.allocate(kMiB - 100);
    REQUIRE(p != nullptr);
    CHECK(reinterpret_cast<std::uintptr_t>(p) % kArenaAlignmentBytes == 0);
    ranges.push_back(p);
  }
  CHECK(a.allocate(1) == nullptr);  // full
  CHECK(b.counters().pinned_bytes == 8 * kMiB);  // never a second pinned allocation
  CHECK(a.used_bytes() == 8 * kMiB);
  // Free two neighbours: they coalesce into one range that a 2 MiB request reuses.
  REQUIRE(a.free(ranges[3]));
  REQUIRE(a.free(ranges[4]));
  CHECK_FALSE(a.free(ranges[4]));
  CHECK(a.largest_free_bytes() == 2 * kMiB);
  void* big = a.allocate(2 * kMiB);
  CHECK(big == ranges[3]);
  for (void* p : {ranges[0], ranges[1], ranges[2], big, ranges[5], ranges[6], ranges[7]}) {
    REQUIRE(a.free(p));
  }
  CHECK(a.used_bytes() == 0);
  CHECK(a.largest_free_bytes() == 8 * kMiB);
  CHECK(a.peak_used_bytes() == 8 * kMiB);
  CHECK_FALSE(a.free(reinterpret_cast<void*>(0x1000)));
}

TEST_CASE("spill arena: a failed pinned allocation leaves an empty arena", "[spill]") {
  device::SimBackend b;
  b.fail_pinned_at(1);
  PinnedArena a(b);
  CHECK(a.init(kMiB) == device::Status::kOutOfMemory);
  CHECK(a.capacity_bytes() == 0);
  CHECK(a.allocate(16) == nullptr);
}

TEST_CASE("spill need order: last-in-first-out without history, learned order after", "[spill]") {
  NeedOrder n;
  CHECK(n.rank(5) < n.rank(4));  // packed later, needed sooner
  for (std::uint64_t k : {2, 0, 3, 1}) n.record_restore(k);
  n.end_iteration();
  CHECK(n.has_history());
  CHECK(n.rank(2) < n.rank(0));
  CHECK(n.rank(0) < n.rank(3));
  CHECK(n.rank(3) < n.rank(1));
  CHECK(n.rank(1) < n.rank(99));  // unseen keys after every learned one
}
