// AnswerBoard — the predictor thread's answers, published per allocation context, read by the
// malloc path without waiting.
//
// AsyncPredictor takes the predictor off the malloc path, so when a block is placed its own
// prediction does not exist yet. A training loop repeats its allocations, though: the same
// size on the same stream after the same sizes comes back every iteration, and the predictor's
// answer for the last allocation of that context is the best guess for the next one. So the
// worker, as it feeds each allocation to the predictor, publishes the answer under the
// allocation's context; the caller, at the next allocation of that context, reads it with one
// relaxed atomic load. A context not seen yet, an entry taken by another context, or a worker
// still behind reads as 0, "no prediction": never a stall.
//
// Context: requested bytes, stream and the requested sizes of the two allocations before it
// (the callers' own order, which is the order the predictor sees). Entries: 2^14 slots of one
// 64-bit word, the upper half a tag from the context hash, the lower half the answer in ticks
// (answers of 2^32 - 1 ticks or more read as kPermanent). Publishing is a relaxed store; a
// reader sees either the old or the new word, both whole.
#pragma once

#include <array>
#include <atomic>
#include <bit>
#include <cstddef>
#include <cstdint>

#include "timeshare/predict/hashing.h"

namespace timeshare::predict {

class AnswerBoard {
 public:
  static constexpr std::size_t kEntries = std::size_t{1} << 14;
  // What a permanent answer reads as (the temporal pool's kPermanentLifespanEvents).
  static constexpr std::uint64_t kPermanent = std::uint64_t{1} << 40;

  // The context hashes of a sequence of allocations, one per call, in order.
  class Context {
   public:
    std::uint64_t next(std::uint64_t bytes, std::uint64_t stream) noexcept {
      // One mix on the malloc path: the rotations keep the order of the sizes apart.
      const std::uint64_t key = mix64(bytes ^ std::rotl(prev1_, 21) ^ std::rotl(prev2_, 42) ^
                                      (stream * 0x9e3779b97f4a7c15ull));
      prev2_ = prev1_;
      prev1_ = bytes;
      return key;
    }

   private:
    std::uint64_t prev1_ = 0;
    std::uint64_t prev2_ = 0;
  };

  // The answer last published for `key`, 0 when none.
  std::uint64_t lookup(std::uint64_t key) const noexcept {
    const std::uint64_t w = slots_[key & (kEntries - 1)].load(std::memory_order_relaxed);
    if ((w >> 32) != tag(key)) return 0;
    const std::uint64_t v = w & 0xffffffffu;
    return v == 0xffffffffu ? kPermanent : v;
  }

  // Publishes `lifespan` (ticks; 0 clears) for `key`. One writer: the predictor's thread.
  void publish(std::uint64_t key, std::uint64_t lifespan) noexcept {
    const std::uint64_t v = lifespan >= 0xffffffffu ? 0xffffffffu : lifespan;
    slots_[key & (kEntries - 1)].store(v == 0 ? 0 : (tag(key) << 32) | v,
                                       std::memory_order_relaxed);
  }

 private:
  // Never 0, so that an empty slot (0) matches no key.
  static std::uint64_t tag(std::uint64_t key) noexcept { return (key >> 32) | 1u; }

  std::array<std::atomic<std::uint64_t>, kEntries> slots_{};
};

}  // namespace timeshare::predict
