// FreeForecast — bytes the live blocks are predicted to give back in the next few ticks.
//
// Each allocation with a finite prediction adds its bytes at its predicted death tick
// (allocation tick + predicted lifespan) in a ring of buckets of `kBucketTicks` ticks that
// reaches `kBuckets * kBucketTicks` ticks ahead; its free takes them out again unless that
// bucket has already passed. due(now, window) sums the buckets from now to now + window. A
// block predicted to live past the ring, without a prediction, or still live after its predicted
// death is not counted: the forecast only ever says "memory is coming back" on the strength of a
// prediction that is still standing.
//
// The temporal pool asks it at growth (TemporalGranules::acquire: a block raises the peak of
// demand and its last granule is mapped fresh), to map ahead only the granules that the blocks
// predicted to die in the window will not give back (docs/temporal_pool.md, "Predicted
// frees"). Updates are O(1) on the malloc path (one add per allocate, one subtract per free,
// the passed buckets zeroed lazily); the query is O(window / kBucketTicks) and runs only at
// growth.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace timeshare::pool {

class FreeForecast {
 public:
  static constexpr std::uint64_t kBucketTicks = 16;
  static constexpr std::uint64_t kBuckets = 4096;  // 65536 ticks ahead

  // Counts `bytes` as predicted to be freed at now + lifespan; returns the tick it was counted
  // at, which the caller keeps with the block for forget(), or 0 when it is not counted
  // (lifespan 0 = no prediction, or beyond the ring).
  std::uint64_t expect(std::uint64_t now, std::uint64_t lifespan, std::size_t bytes) noexcept {
    advance(now);
    if (lifespan == 0 || lifespan >= kBuckets * kBucketTicks - kBucketTicks) return 0;
    const std::uint64_t death = now + lifespan;
    ring_[(death / kBucketTicks) % kBuckets] += bytes;
    return death;
  }

  // The block counted at `death` (expect's answer) was freed at `now`.
  void forget(std::uint64_t now, std::uint64_t death, std::size_t bytes) noexcept {
    advance(now);
    if (death == 0 || death / kBucketTicks < base_) return;  // its bucket has passed
    ring_[(death / kBucketTicks) % kBuckets] -= bytes;
  }

  // Bytes predicted to be freed from `now` to `now + window` ticks (whole buckets).
  std::size_t due(std::uint64_t now, std::uint64_t window) noexcept {
    advance(now);
    const std::uint64_t first = now / kBucketTicks;
    std::uint64_t last = (now + window) / kBucketTicks;
    if (last >= first + kBuckets) last = first + kBuckets - 1;
    std::size_t sum = 0;
    for (std::uint64_t b = first; b <= last; ++b) sum += ring_[b % kBuckets];
    return sum;
  }

 private:
  // Zeroes the buckets that time has passed, so that they can be reused for ticks one ring ahead.
  void advance(std::uint64_t now) noexcept {
    const std::uint64_t b = now / kBucketTicks;
    if (b <= base_) return;
    if (b - base_ >= kBuckets) {
      ring_.fill(0);
    } else {
      for (std::uint64_t i = base_; i < b; ++i) ring_[i % kBuckets] = 0;
    }
    base_ = b;
  }

  std::array<std::size_t, kBuckets> ring_{};
  std::uint64_t base_ = 0;  // bucket of the latest tick seen; earlier ones are zero
};

}  // namespace timeshare::pool
