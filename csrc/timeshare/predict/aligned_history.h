// AlignedHistory: "the allocation at the same position in the previous iteration lived L ticks".
//
// A fixed-shape training loop repeats its allocation sequence exactly, and on the real traces
// the allocation at position q of iteration j has the same size as, and a lifespan within 2x
// of, the one at position q of iteration j-1 in 100% of the cases from the second marked
// iteration on (predict_eval --explain; docs/predictor.md). The context table cannot see this
// directly: identical layers share size contexts, and its occurrence level counts per size
// from a detector cycle start that moves. So this keeps a ring of the last kMaxPeriodAllocs
// allocations (size key, allocation tick, log2 lifespan once freed) and answers an allocation
// from its twin one detected period back: seq - (period + shift), where the shift (|shift| <=
// kMaxAlignShift) is re-found when a few inserted or missing allocations move the sequence and
// then kept, so later allocations stay aligned. The twin must have the same size.
//
// Lifespans longer than an iteration (gradients freed at the next zero_grad, tensors kept across
// a step) have a twin that is still live: then the twin's own twin, one more period back, answers
// if it is known and not shorter than the live twin's age; otherwise the answer is twice that age
// (the truth is at least the age, so this is within 2x of anything up to four times the age).
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

#include "timeshare/predict/period_detector.h"

namespace timeshare::predict {

inline constexpr int kMaxAlignShift = 4;          // allocations inserted/missing per iteration
inline constexpr int kAlignLookbackPeriods = 3;   // periods back tried for a live twin
inline constexpr float kLiveTwinFactorLog2 = 1.0f;  // live twin: answer 2^1 x its age

struct AlignedAnswer {
  bool found = false;        // a twin of the same size exists
  bool from_live = false;    // no known lifespan in the chain: 2 x the live twin's age
  float log2_life = 0.0f;
};

class AlignedHistory {
 public:
  AlignedHistory();

  // Answer for allocation `seq` (0, 1, 2, ... in allocation order) of `size_key` at `now_tick`,
  // given the detected period in allocations (0: none). Then records the allocation.
  AlignedAnswer on_alloc(std::uint64_t seq, std::uint64_t size_key, std::uint64_t now_tick,
                         std::uint64_t period) noexcept;
  // Starts loading the record on_alloc(seq, ..., period) will read first, and the one
  // learn(seq) will write (no effect on any result).
  void prefetch(std::uint64_t seq, std::uint64_t period) const noexcept {
    if (period != 0 && period == period_) {
      const std::int64_t b = std::int64_t(period) + shift_;
      if (b > 0 && std::uint64_t(b) <= seq) __builtin_prefetch(&ring_[(seq - std::uint64_t(b)) & (kMaxPeriodAllocs - 1)]);
    }
    __builtin_prefetch(&ring_[seq & (kMaxPeriodAllocs - 1)]);
  }
  void prefetch_learn(std::uint64_t seq) const noexcept {
    __builtin_prefetch(&ring_[seq & (kMaxPeriodAllocs - 1)]);
  }
  // The lifespan of allocation `seq` became known.
  void learn(std::uint64_t seq, float log2_life) noexcept;

  int shift() const noexcept { return shift_; }

 private:
  struct Record {
    std::uint64_t seq = UINT64_MAX;
    std::uint64_t size_key = 0;
    std::uint64_t alloc_tick = 0;
    float life_log2 = std::numeric_limits<float>::quiet_NaN();
  };
  const Record* at(std::uint64_t seq, std::uint64_t back) const noexcept;

  std::vector<Record> ring_;   // kMaxPeriodAllocs, indexed by seq
  std::uint64_t period_ = 0;   // the period the shift belongs to
  int shift_ = 0;
};

}  // namespace timeshare::predict
