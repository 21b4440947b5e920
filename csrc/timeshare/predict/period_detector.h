// PeriodDetector: finds the training iteration online from the allocation-size sequence.
//
// Every allocation pushes its size. An n-gram of the last kNgram sizes is hashed; when the same
// n-gram was seen before at distance p, p becomes a candidate period. Each candidate is scored by
// how often size[i] equals one of size[i - p - kShiftTolerance .. i - p + kShiftTolerance] (so a
// few inserted noise allocations do not break the match), as exponentially decayed counts with
// kPriorChecks pseudo-misses so that a candidate checked over few allocations cannot look
// perfect. A candidate is confirmed after one full cycle with >= kConfirmShare matches; the
// active period is the confirmed candidate with the best score (on near-ties the smaller one
// when the larger is a multiple of it, so 2P never beats P). Repeated layers give a shorter
// candidate that matches only inside the layer stack and so scores lower than the iteration.
//
// Position within the iteration is re-anchored, not just counted modulo the period: once a
// period P is active, an n-gram whose previous occurrence was exactly P allocations earlier
// occurs once per iteration; it becomes the anchor, and each time it recurs the position
// restarts at 0 and the cycle index advances. So noise allocations that lengthen one iteration
// do not shift the phase of all later ones. Without the anchor the position wraps at
// P (+ kAnchorSlackShare slack while an anchor is expected).
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace timeshare::predict {

inline constexpr int kNgram = 8;
inline constexpr std::size_t kMaxPeriodAllocs = std::size_t{1} << 16;
inline constexpr int kPeriodCandidates = 8;
inline constexpr int kShiftTolerance = 2;
inline constexpr double kShiftedMatchWeight = 0.9;   // exact alignment wins over shifted
inline constexpr double kPriorChecks = 32.0;
inline constexpr double kActiveScore = 0.5;
inline constexpr double kConfirmShare = 0.85;
inline constexpr double kScoreTieTolerance = 0.02;
inline constexpr double kScoreAlpha = 1.0 / 256.0;
inline constexpr double kAnchorSlackShare = 0.125;
// A trial candidate may serve alignment (alignment_period()) once it has matched this many
// allocations at kConfirmShare or better, before its full first cycle confirms it.
inline constexpr std::uint64_t kProvisionalChecks = 64;

// Whether period `hi` is a multiple of period `lo` (0 < lo <= hi) within kShiftTolerance
// allocations: the same repetition counted over several cycles.
inline bool near_multiple(std::uint64_t lo, std::uint64_t hi) noexcept {
  const std::uint64_t rem = hi % lo;
  return rem <= std::uint64_t(kShiftTolerance) || lo - rem <= std::uint64_t(kShiftTolerance);
}

class PeriodDetector {
 public:
  // prefer_longer: on a near tie between a period and a multiple of it, take the longer one (for
  // keys that repeat per layer as exactly as per iteration, where the layer would win).
  explicit PeriodDetector(bool prefer_longer = false);
  void push(std::uint64_t size_key);
  // Hint: `size_key` is the next push. Starts loading the n-gram slot it will read, so the
  // cache miss overlaps the caller's own work (the table lookups). No effect on any result.
  void prefetch_next(std::uint64_t size_key) const noexcept;

  std::uint64_t period() const noexcept { return period_; }  // 0: none yet
  // The period to align with one iteration back (AlignedHistory): period(), or, while the
  // iteration's own candidate is still in its first (trial) cycle, that candidate once it has
  // matched kProvisionalChecks allocations at kConfirmShare or better and is longer than
  // period() (a shorter active period is then a repeated layer's, not the iteration's). Without
  // it the twin could answer only from the end of the second iteration on. 0: none.
  std::uint64_t alignment_period() const noexcept { return align_period_; }
  // Allocation index within the current cycle (0 .. period-1); valid when period() > 0.
  std::uint64_t position() const noexcept { return position_; }
  // Index of the allocation at which a period was first confirmed (UINT64_MAX: never).
  std::uint64_t first_confirmed_at() const noexcept { return first_confirmed_at_; }
  std::uint64_t pushes() const noexcept { return count_; }
  // Iterations started since the first period was found (advances when position restarts).
  std::uint64_t cycle() const noexcept { return cycle_; }
  // Size key pushed `back` allocations ago (1 = the last one); 0 if too old.
  std::uint64_t size_ago(std::uint64_t back) const noexcept;

 private:
  struct Candidate {
    std::uint64_t period = 0;
    std::uint64_t checked = 0;
    std::uint64_t matches = 0;
    double decayed_matches = 0.0;
    double decayed_checks = 0.0;
    bool confirmed = false;
    double score() const noexcept { return decayed_matches / (decayed_checks + kPriorChecks); }
  };

  struct GramSlot {
    std::uint64_t key = 0;   // n-gram hash | 1 (0: empty)
    std::uint64_t at = 0;    // index of its last occurrence
  };

  void consider(std::uint64_t p);
  void choose();
  // Hash of the last kNgram sizes after `size_key` is pushed onto `gram` (oldest dropped).
  static std::uint64_t gram_hash(const std::array<std::uint64_t, kNgram>& gram,
                                 std::uint64_t size_key) noexcept;

  std::vector<std::uint64_t> sizes_;            // ring, kMaxPeriodAllocs
  std::array<std::uint64_t, kNgram> gram_{};    // last kNgram sizes
  std::vector<GramSlot> grams_;                 // n-gram hash table (one cache line a probe)
  // prefetch_next's hash, reused by the push of the same size.
  mutable std::uint64_t next_size_ = 0;
  mutable std::uint64_t next_hash_ = 0;
  mutable bool next_valid_ = false;
  std::array<Candidate, kPeriodCandidates> cand_{};
  std::uint64_t count_ = 0;
  bool prefer_longer_ = false;
  std::uint64_t period_ = 0;
  std::uint64_t align_period_ = 0;
  std::uint64_t position_ = 0;
  std::uint64_t cycle_ = 0;
  std::uint64_t anchor_gram_ = 0;       // 0: none chosen
  std::uint64_t anchor_seen_at_ = 0;
  std::uint64_t first_confirmed_at_ = UINT64_MAX;
};

}  // namespace timeshare::predict
