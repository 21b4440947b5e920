// ContextTable: the memorising predictor. Keyed by (size, stream, sizes of the previous k
// allocations) for k = K..0, and, once the iteration period is known, one more specific level
// above them: (size, stream, how many allocations of this size came before it in this
// iteration). That occurrence level tells apart identical layers (same sizes, same neighbours,
// different lifespans) and does not shift when noise allocations are inserted. It answers from
// the most specific context it knows and learns a context's lifespan (log2) when its block is
// freed. An entry is "stable" when its last two lifespans
// agree within 2x; the hybrid trusts stable entries without asking the LSTM. Each full-context
// entry also carries a small gate counter: +1 when the LSTM was within 2x and the table was not,
// -1 for the reverse, so the hybrid learns per context which of the two to believe.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "timeshare/predict/hashing.h"
#include "timeshare/predict/predictor_options.h"

namespace timeshare::predict {

inline constexpr int kTableMaxProbe = 16;
inline constexpr int kGateMax = 8;
inline constexpr std::size_t kOccurrenceSlots = 4096;

struct ContextKeys {
  // key[k]: k previous sizes (k <= K); key[K + 1]: occurrence level when a period is known
  std::array<std::uint64_t, kMaxContextK + 2> key{};
  int levels = 0;                                     // K + 1, or K + 2 with the occurrence
};

struct ContextEntry {
  std::uint64_t key = 0;     // 0 = empty
  float last_log2 = 0.0f;
  float prev_log2 = 0.0f;
  std::uint32_t count = 0;
  std::int8_t gate = 0;      // > 0: the LSTM has been the better answer here
};

struct ContextAnswer {
  float log2_life = 0.0f;
  int level = -1;            // -1: nothing known
  bool stable = false;
  ContextEntry* full = nullptr;   // the level-K entry, when it exists
};

class ContextTable {
 public:
  ContextTable(int context_k, std::size_t entries);

  // Keys of an allocation of `bytes` on `stream` given the sizes seen so far. `cycle` is the
  // period detector's iteration index (0: no period yet, no occurrence level). Counts the
  // occurrence, so call once per allocation.
  ContextKeys keys(std::uint64_t bytes, std::uint64_t stream, std::uint64_t cycle) noexcept;
  // Occurrence index of the last keys() call (0 for the first of its size in the iteration).
  std::uint32_t last_occurrence() const noexcept { return last_occurrence_; }
  // Records an allocation's size as context for the next ones.
  void push_size(std::uint64_t bytes) noexcept;

  // Starts loading the home slot of every level of `keys` (the probes below then miss the
  // cache in parallel, not one after the other). No effect on any result.
  void prefetch(const ContextKeys& keys) const noexcept {
    for (int k = 0; k < keys.levels; ++k) __builtin_prefetch(&entries_[mix64(keys.key[k]) & mask_]);
  }
  ContextAnswer lookup(const ContextKeys& keys) noexcept;
  void learn(const ContextKeys& keys, float log2_life) noexcept;
  ContextEntry* find(std::uint64_t key) noexcept;

  int context_k() const noexcept { return k_; }

 private:
  ContextEntry* slot_for(std::uint64_t key) noexcept;  // find or claim

  int k_;
  std::vector<ContextEntry> entries_;
  std::size_t mask_;
  std::array<std::uint64_t, kMaxContextK> recent_{};   // recent_[0] = the last size
  struct Occurrence {
    std::uint64_t key = 0;
    std::uint64_t cycle = 0;
    std::uint32_t count = 0;
  };
  std::vector<Occurrence> occ_;   // direct-mapped by hash(size, stream)
  std::uint32_t last_occurrence_ = 0;
};

}  // namespace timeshare::predict
