#include "timeshare/common/units.h"

#include <fmt/format.h>

namespace timeshare {

std::string format_bytes(std::size_t bytes) {
  if (bytes <= kKiB) return fmt::format("{} bytes", bytes);
  if (bytes <= kMiB) return fmt::format("{:.2f} KiB", static_cast<double>(bytes) / kKiB);
  if (bytes <= kGiB) return fmt::format("{:.2f} MiB", static_cast<double>(bytes) / kMiB);
  return fmt::format("{:.2f} GiB", static_cast<double>(bytes) / kGiB);
}

}  // namespace timeshare
