// OraclePlanner — the near-limit reference: an offline planner that knows every lifetime.
//
// It sees the whole trace at once, so every allocation is an interval in time (allocation to
// free; never freed = to the end) with a size, and it places all of them in ONE flat arena,
// greedy by size: largest first (ties: earlier allocation first), each at the lowest offset
// where it overlaps in address no already-placed block whose lifetime overlaps its own. Sizes
// are rounded up to 512 bytes, like the pools. The arena's high-water mark is the policy's peak
// reserved bytes, reserved with one device call. No online allocator can know what it knows,
// so it shows how much of the gap between a policy and peak live bytes is avoidable.
//
// Index. Time is counted in allocation ordinals: allocation k lives over [k, A) where A is the
// number of allocations made before its free (two lifetimes overlap exactly when these ranges
// do). Ordinals are grouped into buckets of kOracleBucketAllocs, and a segment tree over the
// buckets keeps, per node, two merged address-interval sets: `cover` (blocks whose lifetime
// spans the whole node) and `sub` (every block stored in the node's subtree, i.e. meeting the
// node's time range). A query for a lifetime unions O(log B) node sets plus an exact scan of at
// most two boundary buckets, and the lowest gap is found by jumping over occupied intervals.
// Placing n blocks costs O(n log n) for the sort plus O(log^2 n + b) per block for the
// index (b = bucket size) and O(j log^2 n) for the gap search, j = occupied intervals jumped
// over; j is small on training traces, where placed blocks pack densely (worst case O(n)
// per block, so O(n^2) overall, on adversarial traces with many small holes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "timeshare/trace/events.h"

namespace timeshare::trace {

inline constexpr std::size_t kOracleAlignmentBytes = 512;
inline constexpr std::size_t kOracleBucketAllocs = 64;

struct OraclePlan {
  std::uint64_t arena_bytes = 0;            // high-water mark of the arena: peak reserved
  std::vector<std::uint64_t> offset_bytes;  // per allocation id
  std::vector<std::uint64_t> size_bytes;    // per allocation id, rounded
  std::uint64_t gap_jumps = 0;              // occupied intervals jumped over (cost diagnostic)
  double plan_ns = 0.0;                     // wall time of planning
};

// Plans `events` (which must be valid, see trace::validate).
OraclePlan plan_oracle(const Event* events, std::size_t n);

// True when no two blocks of `plan` that are live at the same time overlap in address
// (O(n log n) sweep; for tests and debug checks).
bool oracle_plan_is_valid(const Event* events, std::size_t n, const OraclePlan& plan);

}  // namespace timeshare::trace
