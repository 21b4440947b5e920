// Logging through spdlog: one logger named "timeshare", level from TIMESHARE_LOG (trace, debug,
// info, warn, error, off; default warn), or from the `log` option. Messages go to stderr with a
// "[timeshare]" prefix so they are easy to tell from PyTorch's.
#pragma once

#include <memory>
#include <string_view>

#include <spdlog/spdlog.h>

namespace timeshare {

// The process-wide logger; created on first use with the level from TIMESHARE_LOG.
spdlog::logger& log();

// Sets the level by name; returns false (and changes nothing) for an unknown name. TIMESHARE_LOG,
// when set, wins over this call, so a user can always turn logging up from the environment.
bool set_log_level(std::string_view level);

}  // namespace timeshare
