// Minor page faults of the whole process so far (getrusage): how the hot path's benchmark and
// the tests see memory first touched under a timed or checked section.
#pragma once

#include <cstdint>

#include <sys/resource.h>

namespace timeshare {

inline std::uint64_t minor_page_faults() noexcept {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<std::uint64_t>(u.ru_minflt);
}

}  // namespace timeshare
