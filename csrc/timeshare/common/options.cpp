#include "timeshare/common/options.h"

#include <array>
#include <cctype>
#include <charconv>
#include <cmath>
#include <functional>
#include <limits>

namespace timeshare {

namespace {

constexpr std::array<OptionInfo, 29> kOptionTable{{
    {"policy", "choice", "timeshare", "allocation policy: timeshare (predictor + temporal pool) "
                                      "or torch (model of PyTorch's caching allocator)"},
    {"backend", "choice", "auto", "device backend: auto (cuda where a GPU is present), cuda, sim"},
    {"sim_capacity", "bytes", "80GiB", "device capacity of the sim backend"},
    {"route", "choice", "auto", "how PyTorch reaches timeshare: auto (native where it was built "
                                "for the running torch, else pluggable), native (PyTorch's own "
                                "CUDAAllocator interface: every torch.cuda memory feature), "
                                "pluggable (CUDAPluggableAllocator; the fallback)"},
    {"expandable_segments", "bool", "false", "torch policy: grow segments by mapping 2 MiB "
                                             "granules (PyTorch's expandable_segments)"},
    {"max_split_size_mb", "int", "unlimited", "torch policy: blocks above this size (MiB) are "
                                              "never split"},
    {"garbage_collection_threshold", "float", "0", "torch policy: reclaim cached blocks above this "
                                                   "fraction of the limit (0 = off)"},
    {"budget", "bytes", "0", "device memory budget; above it saved activations are spilled "
                             "(0 = no budget)"},
    {"spill", "choice", "none", "where spilled activations go: none, host, host+ssd"},
    {"spill_dir", "path", "(temporary dir)", "directory for the SSD tier"},
    {"pinned", "bytes", "2GiB", "size of the pinned host arena for spills"},
    {"prefetch", "bytes", "512MiB", "look-ahead in bytes of restores started before need"},
    {"min_spill", "bytes", "1MiB", "tensors smaller than this are never spilled"},
    {"predictor", "choice", "hybrid", "lifespan predictor: hybrid, hybrid_nolstm (no LSTM: "
                                      "same figures on the shipped traces, ~10% cheaper), lstm, "
                                      "aligned, table, table_cycle, last_size, size_mean, "
                                      "prev_iter, constant (cheapest)"},
    {"predict_sync", "bool", "false", "true: the malloc path waits for the prediction and places "
                                       "by it; false: the predictor is fed on its own thread and "
                                       "placement does not wait (same placement on the shipped "
                                       "traces, a fraction of the malloc cost)"},
    {"unsafe_unmap", "bool", "false", "TEST OF THE FAULT DETECTOR ONLY: the temporal pool unmaps "
                                      "a granule as soon as it empties, without waiting for the "
                                      "work its stream queued before the free (a GPU faults; the "
                                      "sim backend counts device faults)"},
    {"plan", "bool", "false", "true: the temporal pool follows the layout of one iteration "
                              "that the predictor's thread plans from its predicted lifespans "
                              "(planned blocks reuse the same addresses every iteration; "
                              "measured: more device calls and as much or more peak memory "
                              "than the default on every shipped trace; an experiment)"},
    {"map_ahead", "bytes", "18MiB", "temporal pool: while memory grows past its peak, map up "
                                    "to this much beyond the block in the same device call: "
                                    "at most a tenth of the observed peak, only up to the "
                                    "next 20 MiB page of the mapped total, not before the "
                                    "peak reaches 48 MiB, and no more than the peak has risen "
                                    "in the current climb of growth (fewer calls, at most part "
                                    "of a page more peak reserved; 0 = off)"},
    {"cache_slack", "float", "0", "temporal pool: keep free memory mapped up to this fraction "
                                  "of the observed peak of demand above it (0.02 = 2 %): "
                                  "fewer map/unmap calls in the steady state, for up to that "
                                  "much more peak reserved (0 = give back all above the peak)"},
    {"free_forecast", "int", "0", "temporal pool: at growth, map ahead less by what the live "
                                  "blocks are predicted to free in the next this many "
                                  "allocator events (0 = off)"},
    {"history", "bytes", "8MiB", "bytes of the rolling history ring the LSTM trains on"},
    {"hidden", "int", "32", "LSTM hidden units (8..256)"},
    {"retrain_interval", "int", "40000", "allocator events from the first training to the "
                                         "first scheduled retraining; each later one waits "
                                         "twice as long (up to 16x) until a drift"},
    {"drift_threshold", "float", "0.1", "retrain when the rolling within-2x share falls this "
                                        "far below its value after the last training"},
    {"seed", "int", "29011", "seed of the predictor's weights and sampling"},
    {"log", "choice", "warn", "log level: trace, debug, info, warn, error, off "
                              "(TIMESHARE_LOG overrides)"},
    // Accepted for PYTORCH_CUDA_ALLOC_CONF compatibility; documented, validated.
    {"roundup_power2_divisions", "int", "0", "torch policy: accepted for compatibility; 0 only"},
    {"pinned_use_cuda_host_register", "bool", "false", "accepted for compatibility; ignored"},
    {"release_thresholds", "bool", "false", "accepted for compatibility; ignored"},
}};

std::string_view trim(std::string_view s) {
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.front()))) s.remove_prefix(1);
  while (!s.empty() && std::isspace(static_cast<unsigned char>(s.back()))) s.remove_suffix(1);
  return s;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::optional<double> parse_double(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  double v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::optional<std::int64_t> parse_int(std::string_view s) {
  s = trim(s);
  if (s.empty()) return std::nullopt;
  std::int64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

std::optional<bool> parse_bool(std::string_view s) {
  const std::string v = lower(trim(s));
  if (v == "1" || v == "true" || v == "yes" || v == "on") return true;
  if (v == "0" || v == "false" || v == "no" || v == "off") return false;
  return std::nullopt;
}

// User text echoed in an error, with control characters escaped so the error stays one line.
std::string printable(std::string_view text) {
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (u < 0x20 || u == 0x7f) out += "\\x" + std::string(1, "0123456789abcdef"[u >> 4]) + "0123456789abcdef"[u & 15];
    else out += c;
  }
  return out;
}

std::string valid_keys() {
  std::string out;
  for (const auto& o : kOptionTable) {
    if (!out.empty()) out += ", ";
    out += o.key;
  }
  return out;
}

using Setter = std::function<std::string(Options&, std::string_view)>;  // "" or "expected ..."

std::string set_bytes(std::size_t& field, std::string_view v) {
  auto b = parse_bytes(v);
  if (!b) return "expected a size such as 512MiB or 20GiB";
  field = *b;
  return {};
}

template <typename T>
std::string set_int(T& field, std::string_view v, std::int64_t lo, std::int64_t hi) {
  auto i = parse_int(v);
  if (!i || *i < lo || *i > hi) {
    return "expected an integer from " + std::to_string(lo) + " to " + std::to_string(hi);
  }
  field = static_cast<T>(*i);
  return {};
}

std::string set_float(double& field, std::string_view v, double lo, double hi) {
  auto d = parse_double(v);
  if (!d || *d < lo || *d > hi) {
    return "expected a number from " + std::to_string(lo).substr(0, 4) + " to " +
           std::to_string(hi).substr(0, 4);
  }
  field = *d;
  return {};
}

std::string set_bool(bool& field, std::string_view v) {
  auto b = parse_bool(v);
  if (!b) return "expected true or false";
  field = *b;
  return {};
}

std::string set_choice(std::string& field, std::string_view v,
                       std::initializer_list<const char*> choices) {
  const std::string s = lower(trim(v));
  std::string list;
  for (const char* c : choices) {
    if (s == c) {
      field = s;
      return {};
    }
    if (!list.empty()) list += ", ";
    list += c;
  }
  return "expected one of " + list;
}

std::optional<Setter> setter_for(std::string_view key) {
  if (key == "policy") {
    return [](Options& o, std::string_view v) {
      std::string s;
      auto err = set_choice(s, v, {"timeshare", "torch"});
      if (err.empty()) o.policy = s == "torch" ? PolicyKind::kTorch : PolicyKind::kTimeshare;
      return err;
    };
  }
  if (key == "backend") {
    return [](Options& o, std::string_view v) {
      std::string s;
      auto err = set_choice(s, v, {"auto", "cuda", "sim"});
      if (err.empty()) {
        o.backend = s == "cuda" ? BackendKind::kCuda : s == "sim" ? BackendKind::kSim
                                                                  : BackendKind::kAuto;
      }
      return err;
    };
  }
  if (key == "sim_capacity") return [](Options& o, std::string_view v) { return set_bytes(o.sim_capacity_bytes, v); };
  if (key == "expandable_segments") return [](Options& o, std::string_view v) { return set_bool(o.expandable_segments, v); };
  if (key == "max_split_size_mb") {
    return [](Options& o, std::string_view v) {
      std::int64_t mb = 0;
      auto err = set_int(mb, v, 20, std::int64_t{1} << 30);
      if (err.empty()) o.max_split_size_bytes = static_cast<std::size_t>(mb) << 20;
      return err;
    };
  }
  if (key == "garbage_collection_threshold") {
    return [](Options& o, std::string_view v) {
      return set_float(o.garbage_collection_threshold, v, 0.0, 0.999);
    };
  }
  if (key == "budget") return [](Options& o, std::string_view v) { return set_bytes(o.budget_bytes, v); };
  if (key == "spill") {
    return [](Options& o, std::string_view v) {
      std::string s;
      auto err = set_choice(s, v, {"none", "host", "host+ssd"});
      if (err.empty()) {
        o.spill = s == "host" ? SpillTier::kHost : s == "host+ssd" ? SpillTier::kHostSsd
                                                                   : SpillTier::kNone;
      }
      return err;
    };
  }
  if (key == "spill_dir") {
    return [](Options& o, std::string_view v) -> std::string {
      if (trim(v).empty()) return "expected a directory path";
      o.spill_dir = std::string(trim(v));
      return {};
    };
  }
  if (key == "pinned") return [](Options& o, std::string_view v) { return set_bytes(o.pinned_bytes, v); };
  if (key == "prefetch") return [](Options& o, std::string_view v) { return set_bytes(o.prefetch_bytes, v); };
  if (key == "min_spill") return [](Options& o, std::string_view v) { return set_bytes(o.min_spill_bytes, v); };
  if (key == "predictor") {
    return [](Options& o, std::string_view v) {
      return set_choice(o.predictor, v, {"hybrid", "hybrid_nolstm", "lstm", "aligned", "table",
                                         "table_cycle", "last_size", "size_mean", "prev_iter",
                                         "constant"});
    };
  }
  if (key == "predict_sync") return [](Options& o, std::string_view v) { return set_bool(o.predict_sync, v); };
  if (key == "unsafe_unmap") return [](Options& o, std::string_view v) { return set_bool(o.unsafe_unmap, v); };
  if (key == "plan") return [](Options& o, std::string_view v) { return set_bool(o.plan, v); };
  if (key == "map_ahead") return [](Options& o, std::string_view v) { return set_bytes(o.map_ahead_bytes, v); };
  if (key == "cache_slack") return [](Options& o, std::string_view v) { return set_float(o.cache_slack, v, 0.0, 1.0); };
  if (key == "free_forecast") {
    return [](Options& o, std::string_view v) {
      return set_int(o.free_forecast_events, v, 0, std::int64_t{1} << 16);
    };
  }
  if (key == "history") return [](Options& o, std::string_view v) { return set_bytes(o.history_bytes, v); };
  if (key == "hidden") return [](Options& o, std::string_view v) { return set_int(o.hidden, v, 8, 256); };
  if (key == "retrain_interval") {
    return [](Options& o, std::string_view v) {
      return set_int(o.retrain_interval_events, v, 100, std::int64_t{1} << 40);
    };
  }
  if (key == "drift_threshold") return [](Options& o, std::string_view v) { return set_float(o.drift_threshold, v, 0.0, 1.0); };
  if (key == "seed") return [](Options& o, std::string_view v) { return set_int(o.seed, v, 0, std::numeric_limits<std::int64_t>::max()); };
  if (key == "route") {
    return [](Options& o, std::string_view v) {
      return set_choice(o.route, v, {"auto", "native", "pluggable"});
    };
  }
  if (key == "log") {
    return [](Options& o, std::string_view v) {
      return set_choice(o.log_level, v, {"trace", "debug", "info", "warn", "error", "off"});
    };
  }
  if (key == "roundup_power2_divisions") {
    return [](Options&, std::string_view v) -> std::string {
      auto i = parse_int(v);
      if (!i || *i != 0) return "expected 0 (power-of-two rounding divisions are not modelled)";
      return {};
    };
  }
  if (key == "pinned_use_cuda_host_register" || key == "release_thresholds") {
    return [](Options&, std::string_view v) -> std::string {
      return parse_bool(v) ? std::string{} : std::string{"expected true or false"};
    };
  }
  return std::nullopt;
}

}  // namespace

std::span<const OptionInfo> option_table() noexcept { return kOptionTable; }

std::optional<std::size_t> parse_bytes(std::string_view text) {
  std::string_view s = trim(text);
  std::size_t i = 0;
  while (i < s.size() && (std::isdigit(static_cast<unsigned char>(s[i])) || s[i] == '.')) ++i;
  auto number = parse_double(s.substr(0, i));
  if (!number || *number < 0) return std::nullopt;
  const std::string unit = lower(trim(s.substr(i)));
  double mult = 1;
  if (unit.empty() || unit == "b") mult = 1;
  else if (unit == "k" || unit == "kib") mult = 1024.0;
  else if (unit == "m" || unit == "mib") mult = 1024.0 * 1024;
  else if (unit == "g" || unit == "gib") mult = 1024.0 * 1024 * 1024;
  else if (unit == "t" || unit == "tib") mult = 1024.0 * 1024 * 1024 * 1024;
  else if (unit == "kb") mult = 1e3;
  else if (unit == "mb") mult = 1e6;
  else if (unit == "gb") mult = 1e9;
  else if (unit == "tb") mult = 1e12;
  else return std::nullopt;
  const double bytes = *number * mult;
  if (bytes > 0x1p62) return std::nullopt;
  return static_cast<std::size_t>(std::llround(bytes));
}

ParseResult parse_options(std::string_view conf, const Options& base) {
  Options o = base;
  std::size_t start = 0;
  while (start <= conf.size()) {
    std::size_t end = conf.find(',', start);
    if (end == std::string_view::npos) end = conf.size();
    const std::string_view item = trim(conf.substr(start, end - start));
    start = end + 1;
    if (item.empty()) continue;
    const std::size_t colon = item.find(':');
    if (colon == std::string_view::npos) {
      return {std::nullopt, "TIMESHARE_CONF item '" + printable(item) +
                                "' is not key:value (valid keys: " + valid_keys() + ")"};
    }
    const std::string key = lower(trim(item.substr(0, colon)));
    const std::string_view value = trim(item.substr(colon + 1));
    auto setter = setter_for(key);
    if (!setter) {
      return {std::nullopt,
              "TIMESHARE_CONF has unknown key '" + printable(key) + "' (valid keys: " +
                  valid_keys() + ")"};
    }
    if (std::string err = (*setter)(o, value); !err.empty()) {
      return {std::nullopt, "TIMESHARE_CONF " + printable(key) + ":" + printable(value) +
                                " is invalid: " + err};
    }
  }
  if (o.spill != SpillTier::kNone && o.budget_bytes == 0) {
    return {std::nullopt, "TIMESHARE_CONF spill:" + std::string(to_string(o.spill)) +
                              " needs a budget (e.g. budget:20GiB)"};
  }
  return {std::move(o), {}};
}

const char* to_string(PolicyKind p) noexcept {
  return p == PolicyKind::kTorch ? "torch" : "timeshare";
}
const char* to_string(SpillTier t) noexcept {
  return t == SpillTier::kHost ? "host" : t == SpillTier::kHostSsd ? "host+ssd" : "none";
}
const char* to_string(BackendKind b) noexcept {
  return b == BackendKind::kCuda ? "cuda" : b == BackendKind::kSim ? "sim" : "auto";
}

std::string to_conf_string(const Options& o) {
  std::string s;
  auto add = [&s](const std::string& k, const std::string& v) {
    if (!s.empty()) s += ",";
    s += k + ":" + v;
  };
  add("policy", to_string(o.policy));
  add("backend", to_string(o.backend));
  add("sim_capacity", std::to_string(o.sim_capacity_bytes));
  add("route", o.route);
  add("expandable_segments", o.expandable_segments ? "true" : "false");
  if (o.max_split_size_bytes != SIZE_MAX) add("max_split_size_mb", std::to_string(o.max_split_size_bytes >> 20));
  add("garbage_collection_threshold", std::to_string(o.garbage_collection_threshold));
  add("budget", std::to_string(o.budget_bytes));
  add("spill", to_string(o.spill));
  if (!o.spill_dir.empty()) add("spill_dir", o.spill_dir);
  add("pinned", std::to_string(o.pinned_bytes));
  add("prefetch", std::to_string(o.prefetch_bytes));
  add("min_spill", std::to_string(o.min_spill_bytes));
  add("predictor", o.predictor);
  add("predict_sync", o.predict_sync ? "true" : "false");
  add("unsafe_unmap", o.unsafe_unmap ? "true" : "false");
  add("plan", o.plan ? "true" : "false");
  add("map_ahead", std::to_string(o.map_ahead_bytes));
  add("cache_slack", std::to_string(o.cache_slack));
  add("free_forecast", std::to_string(o.free_forecast_events));
  add("history", std::to_string(o.history_bytes));
  add("hidden", std::to_string(o.hidden));
  add("retrain_interval", std::to_string(o.retrain_interval_events));
  add("drift_threshold", std::to_string(o.drift_threshold));
  add("seed", std::to_string(o.seed));
  add("log", o.log_level);
  return s;
}

}  // namespace timeshare
