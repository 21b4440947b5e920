// LayoutPlan and PlanBoard — a predicted layout of one training iteration, and the board on
// which the predictor's thread publishes it for the pool to read without waiting.
//
// A training loop repeats its allocation sequence every iteration. Once the predictor has seen
// one period of it, with a predicted lifespan for each allocation, it can plan where every
// allocation of the *next* iterations goes: a 2-D packing of (predicted lifetime x bytes) on a
// cycle, like the offline planner's, so that what dies together shares granules and the same
// addresses serve every iteration (allocator/layout_planner.h builds it). The pool then places
// allocation `alloc_id` at slot (alloc_id - start_alloc_id) mod period of the plan when the size
// matches and the planned range is free, and keeps the granules the plan uses mapped: in steady
// state no device call at all, and memory close to the packing's footprint.
//
// A plan is a prediction, never a promise: the pool checks that a planned range is free before
// it takes it (a block that lives longer than planned makes the next claimant of its slot fall
// back to best fit), and stops following a plan whose slots keep missing (TemporalPool).
//
// PlanBoard: the planner publishes whole immutable plans; the pool polls `version()` (one
// relaxed atomic load per allocation) and takes the new plan under a mutex only when it moved.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace timeshare::pool {

// Blocks in a plan are rounded to this many bytes (TemporalPoolOptions::align_bytes' default;
// a pool with another alignment matches no slot and places as without a plan).
inline constexpr std::size_t kPlanAlignBytes = 512;
inline constexpr std::uint64_t kNoPlanOffset = UINT64_MAX;

struct PlanSlot {
  std::uint64_t bytes = 0;                 // rounded to kPlanAlignBytes
  std::uint64_t offset = kNoPlanOffset;    // from the plan region's base; kNoPlanOffset: unplanned
};

struct LayoutPlan {
  std::uint64_t period = 0;          // allocations per iteration (slots.size())
  std::uint64_t start_alloc_id = 0;  // allocation id that slot 0 was planned from
  std::uint64_t stream = 0;          // the stream whose allocations are planned
  std::uint64_t footprint_bytes = 0; // top of the packing
  std::uint64_t planned = 0;         // slots with an offset
  std::vector<PlanSlot> slots;
};

class PlanBoard {
 public:
  // Replaces the current plan (nullptr: no plan).
  void publish(std::shared_ptr<const LayoutPlan> plan) {
    std::lock_guard lock(mu_);
    plan_ = std::move(plan);
    version_.fetch_add(1, std::memory_order_release);
  }
  std::uint64_t version() const noexcept { return version_.load(std::memory_order_acquire); }
  std::shared_ptr<const LayoutPlan> current() const {
    std::lock_guard lock(mu_);
    return plan_;
  }

 private:
  mutable std::mutex mu_;
  std::shared_ptr<const LayoutPlan> plan_;
  std::atomic<std::uint64_t> version_{0};
};

}  // namespace timeshare::pool
