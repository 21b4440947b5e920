#include "timeshare/common/log.h"
#include "timeshare/common/log_line.h"

#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>

#include <spdlog/sinks/stdout_color_sinks.h>

namespace timeshare {

namespace {

std::optional<spdlog::level::level_enum> level_from(std::string_view name) {
  if (name == "trace") return spdlog::level::trace;
  if (name == "debug") return spdlog::level::debug;
  if (name == "info") return spdlog::level::info;
  if (name == "warn" || name == "warning") return spdlog::level::warn;
  if (name == "error") return spdlog::level::err;
  if (name == "off") return spdlog::level::off;
  return std::nullopt;
}

std::optional<spdlog::level::level_enum> env_level() {
  const char* env = std::getenv("TIMESHARE_LOG");
  if (!env || !*env) return std::nullopt;
  return level_from(env);
}

}  // namespace

spdlog::logger& log() {
  static std::shared_ptr<spdlog::logger> logger = [] {
    auto sink = std::make_shared<spdlog::sinks::stderr_color_sink_mt>();
    auto l = std::make_shared<spdlog::logger>("timeshare", sink);
    l->set_pattern("[timeshare] %^%l%$: %v");
    l->set_level(env_level().value_or(spdlog::level::warn));
    l->flush_on(spdlog::level::warn);
    return l;
  }();
  return *logger;
}

bool set_log_level(std::string_view level) {
  auto l = level_from(level);
  if (!l) return false;
  if (!env_level()) log().set_level(*l);
  return true;
}

}  // namespace timeshare

namespace timeshare {

void log_line(LogLevel level, const std::string& message) {
  switch (level) {
    case LogLevel::kDebug: log().debug("{}", message); break;
    case LogLevel::kInfo: log().info("{}", message); break;
    case LogLevel::kWarn: log().warn("{}", message); break;
    case LogLevel::kError: log().error("{}", message); break;
  }
}

}  // namespace timeshare
