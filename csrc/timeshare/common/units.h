// Byte-size constants and helpers shared by every layer (the one byte formatter: format_bytes).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace timeshare {

inline constexpr std::size_t kKiB = std::size_t{1} << 10;
inline constexpr std::size_t kMiB = std::size_t{1} << 20;
inline constexpr std::size_t kGiB = std::size_t{1} << 30;

// Round `n` up to a multiple of `to` (`to` > 0, not necessarily a power of two).
constexpr std::size_t round_up(std::size_t n, std::size_t to) noexcept {
  return (n + to - 1) / to * to;
}

// `bytes` for people, as PyTorch's own messages write sizes (its format_size): "512 bytes" up
// to 1 KiB, then KiB, MiB or GiB with two decimals ("40.00 MiB"). The one formatter of the
// out-of-memory messages and summaries.
std::string format_bytes(std::size_t bytes);

}  // namespace timeshare
