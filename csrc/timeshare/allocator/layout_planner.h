// LayoutPlanner — turns one detected period of allocations, with the lifespans the predictor
// predicted for them, into a LayoutPlan for the iterations to come (pool/layout_plan.h).
//
// It is fed every allocation with the answer of the wrapped predictor (PlanningPredictor, below)
// on the predictor's own thread (AsyncPredictor's worker; in a deterministic replay,
// synchronously). It runs its own PeriodDetector (predict/) over the sizes. Once a period P is
// known and P allocations have passed since the last plan, the last P allocations become a
// cycle of intervals: allocation k lives over [t_k, t_k + L_k) ticks, modulo the cycle's
// length T in ticks. Allocations without a prediction, predicted to live a whole cycle or more
// (parameters, optimizer state), or on another stream than most of the cycle's are left out
// (the pool places them as without a plan). The rest are packed greedy by size: largest first
// (ties: longer lifespan first), each at the lowest offset where it overlaps in address no
// placed block whose cyclic lifetime overlaps its own (O(n^2) for n planned allocations, off the
// malloc path; a period longer than kMaxPlanAllocs is not planned).
//
// A new plan is published only when it differs from the last one in more than
// kReplanChangedShare of its slots (sizes or offsets), so a fixed-shape loop publishes once and
// the pool's layout stays put.
//
// The plan is exactly as good as the lifespans it was given: with the true lifespans a
// training loop's layout packs to within a few percent of peak live memory; with a constant
// answer it is useless, and the pool stops following it (temporal_pool.h).
//
// It lives in allocator/, above both predict/ (whose answers it reads) and pool/ (whose plan it
// writes), so that neither of those depends on the other; the factory (allocator.h,
// make_predictor_stack) puts it in a predictor stack when option `plan` is on.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "timeshare/pool/layout_plan.h"
#include "timeshare/predict/period_detector.h"
#include "timeshare/predict/predictor.h"

namespace timeshare {

inline constexpr std::uint64_t kMaxPlanAllocs = 16384;
inline constexpr std::uint64_t kMinPlanAllocs = 64;
// A plan is published only when at least this share of the period's allocations is planned.
inline constexpr double kMinPlannedShare = 0.9;
inline constexpr double kReplanChangedShare = 0.02;

class LayoutPlanner {
 public:
  explicit LayoutPlanner(std::shared_ptr<pool::PlanBoard> board);
  // One allocation and the lifespan predicted for it (0: none).
  void on_alloc(const predict::AllocEvent& e, std::uint64_t predicted_lifespan);
  // Plans the last `period` allocations now (tests; on_alloc calls it when due).
  std::shared_ptr<pool::LayoutPlan> build(std::uint64_t period) const;

 private:
  struct Rec {
    std::uint64_t alloc_id = 0;
    std::uint64_t bytes = 0;   // rounded
    std::uint64_t stream = 0;
    std::uint64_t tick = 0;
    std::uint64_t life = 0;    // predicted, ticks (0: none)
  };
  const Rec& rec(std::uint64_t seq) const noexcept { return ring_[seq & (ring_.size() - 1)]; }
  // The stream most allocations from sequence number `first` on are on (the lowest on a tie).
  std::uint64_t dominant_stream(std::uint64_t first) const;
  bool changed(const pool::LayoutPlan& plan) const;

  std::shared_ptr<pool::PlanBoard> board_;
  predict::PeriodDetector detector_;
  std::vector<Rec> ring_;
  std::uint64_t count_ = 0;
  std::uint64_t last_plan_at_ = 0;  // count_ when the last plan was built
  std::uint64_t prev_period_ = 0;   // period of the last plan built
  std::shared_ptr<const pool::LayoutPlan> last_;
};

// Wraps a predictor: forwards every call and feeds the wrapped predictor's answers to a
// LayoutPlanner. Put it inside AsyncPredictor so that planning runs on the predictor's thread.
class PlanningPredictor final : public predict::LifespanPredictor {
 public:
  PlanningPredictor(std::unique_ptr<predict::LifespanPredictor> inner,
                    std::shared_ptr<pool::PlanBoard> board)
      : owned_(std::move(inner)), inner_(owned_.get()), planner_(std::move(board)) {}
  // Not owning: `inner` must outlive this.
  PlanningPredictor(predict::LifespanPredictor* inner, std::shared_ptr<pool::PlanBoard> board)
      : inner_(inner), planner_(std::move(board)) {}
  const char* name() const noexcept override { return inner_->name(); }
  std::uint64_t on_alloc(const predict::AllocEvent& e) override {
    const std::uint64_t life = inner_->on_alloc(e);
    planner_.on_alloc(e, life);
    return life;
  }
  void on_free(const predict::FreeEvent& e) override { inner_->on_free(e); }
  predict::PredictorStats stats() const override { return inner_->stats(); }

 private:
  std::unique_ptr<predict::LifespanPredictor> owned_;
  predict::LifespanPredictor* inner_;
  LayoutPlanner planner_;
};

}  // namespace timeshare
