// One line to timeshare's logger, for code that must not include spdlog: the native layer
// (csrc/timeshare/torch/) compiles against torch's headers, whose bundled fmt differs from the
// one spdlog is built with.
#pragma once

#include <string>

namespace timeshare {

enum class LogLevel : int { kDebug, kInfo, kWarn, kError };

void log_line(LogLevel level, const std::string& message);

}  // namespace timeshare
