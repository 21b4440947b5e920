// ShapeTwin: the aligned twin for training loops whose sizes change from one iteration to the
// next (a varying batch or sequence length, a varying number of detection proposals).
//
// AlignedHistory finds "the same allocation one iteration back" by the allocation-size sequence,
// so it needs the sizes to repeat. With a varying sequence length they do not (gpt2_varlen: 74%
// of the allocations one marked iteration apart have the same size; the size-based detector
// finds no period at all), yet the program is the same: every iteration makes the same number
// of allocations and frees in the same order, and on the shipped traces the allocation at
// position q of iteration j has a lifespan within 2x of the one at position q of iteration j-1
// in 100% of the cases (gpt2_varlen, fasterrcnn_mobilenet; measured against the captures'
// iteration marks, which predictors never see).
//
// So this describes each allocation not by its size but by the frees that came just before it:
// its shape key is a hash of how many frees happened since the previous allocation and, in
// order, how many allocations back each freed block had been allocated. That sequence repeats
// whatever the sizes are. A PeriodDetector of its own runs on the shape keys, and an
// AlignedHistory keyed by them answers from the twin one (provisional or confirmed) period back,
// with the same live-twin rules as the size twin.
#pragma once

#include <array>
#include <cstdint>

#include "timeshare/predict/aligned_history.h"
#include "timeshare/predict/period_detector.h"

namespace timeshare::predict {

// The twin must match this many shape keys (this allocation's and the ones before it): a single
// key is often the common "no free since the last allocation".
inline constexpr int kShapeContext = 4;

class ShapeTwin {
 public:
  // Allocation `seq` (0, 1, 2, ... in allocation order) at `now_tick`: the twin's answer, then
  // the allocation is recorded. Call before on_free of anything later. `size_period`: the
  // size-based detector's alignment period (0: none). The twin is looked up with the size
  // period unless this detector's own is longer and not a multiple of it (within the
  // detector's shift tolerance): a shape period shorter than the size period is a repeated
  // layer's, a multiple of it is the same iteration, and a longer other one means the sizes
  // changed between iterations, so that the size period is a layer's.
  AlignedAnswer on_alloc(std::uint64_t seq, std::uint64_t now_tick,
                         std::uint64_t size_period) noexcept;
  // The last on_alloc used this detector's own period instead of the size period.
  bool overrides_size_period() const noexcept { return overrides_; }
  // Allocation `alloc_seq` was freed when `allocs_so_far` allocations had been made.
  void on_free(std::uint64_t alloc_seq, std::uint64_t allocs_so_far) noexcept;
  // The lifespan of allocation `seq` became known.
  void learn(std::uint64_t seq, float log2_life) noexcept { aligned_.learn(seq, log2_life); }

  std::uint64_t period() const noexcept { return detector_.alignment_period(); }

 private:
  static constexpr std::uint64_t kSeed = 0x6a09e667f3bcc909ull;
  std::uint64_t acc_ = kSeed;    // hash of the frees since the last allocation
  std::uint64_t frees_ = 0;      // their number
  bool overrides_ = false;
  std::array<std::uint64_t, kShapeContext> recent_{};  // the last shape keys, newest first
  PeriodDetector detector_{/*prefer_longer=*/true};
  AlignedHistory aligned_;
};

}  // namespace timeshare::predict
