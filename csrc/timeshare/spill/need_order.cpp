#include "timeshare/spill/need_order.h"

#include <limits>

namespace timeshare::spill {

namespace {
// Ranks of keys without history sit above every learned rank, in last-in-first-out order.
constexpr std::uint64_t kUnlearnedRankBase = std::uint64_t{1} << 62;
}  // namespace

void NeedOrder::record_restore(std::uint64_t key) { current_.push_back(key); }

void NeedOrder::end_iteration() {
  if (current_.empty()) return;
  previous_.clear();
  for (std::size_t i = 0; i < current_.size(); ++i) previous_.try_emplace(current_[i], i);
  current_.clear();
  ++iterations_;
}

std::uint64_t NeedOrder::rank(std::uint64_t key) const noexcept {
  if (auto it = previous_.find(key); it != previous_.end()) return it->second;
  const std::uint64_t lifo = key < kUnlearnedRankBase ? kUnlearnedRankBase - 1 - key : 0;
  return kUnlearnedRankBase + lifo;
}

}  // namespace timeshare::spill
