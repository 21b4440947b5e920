// Byte-size constants and helpers shared by every layer.
#pragma once

#include <cstddef>
#include <cstdint>

namespace timeshare {

inline constexpr std::size_t kKiB = std::size_t{1} << 10;
inline constexpr std::size_t kMiB = std::size_t{1} << 20;
inline constexpr std::size_t kGiB = std::size_t{1} << 30;

// Round `n` up to a multiple of `to` (`to` > 0, not necessarily a power of two).
constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept {
  return (n + to - 1) / to * to;
}

}  // namespace timeshare
