// NeedOrder — when will each spilled entry be needed again, learned from the previous iteration.
//
// Entries carry a key: their pack position in the iteration (0, 1, 2, ... in forward order).
// Every restore records its key; end_iteration() makes this iteration's restore order the
// prediction for the next one. rank(key) is the predicted position of need (lower = sooner).
// Before any history, or for a key the last iteration never restored, the rank follows the
// backward pass's usual last-in-first-out order: the later the pack, the sooner the need.
// Not thread-safe: the SpillEngine's mutex guards it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <unordered_map>
#include <vector>

namespace timeshare::spill {

class NeedOrder {
 public:
  void record_restore(std::uint64_t key);
  void end_iteration();
  std::uint64_t rank(std::uint64_t key) const noexcept;
  bool has_history() const noexcept { return !previous_.empty(); }
  std::size_t iterations() const noexcept { return iterations_; }
  const std::vector<std::uint64_t>& current_order() const noexcept { return current_; }

 private:
  std::vector<std::uint64_t> current_;                     // keys restored this iteration
  std::unordered_map<std::uint64_t, std::uint64_t> previous_;  // key -> position of need
  std::size_t iterations_ = 0;
};

}  // namespace timeshare::spill
