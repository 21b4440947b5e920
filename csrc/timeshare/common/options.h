// Options — the one table of user-facing settings, and the one pure function that parses them.
//
// Users set options as `TIMESHARE_CONF="budget:20GiB,spill:host"` (the same `key:value,...`
// form as PYTORCH_CUDA_ALLOC_CONF), as keyword arguments of `timeshare.enable(...)` (which the
// Python side turns into the same string), or from C++ (`timeshare::enable(...)`). The table
// (kOptionTable) names every key with its default and meaning; docs/usage.md is generated from
// it, so code and documentation cannot disagree.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>

namespace timeshare {

enum class PolicyKind : std::uint8_t { kTimeshare, kTorch };
enum class SpillTier : std::uint8_t { kNone, kHost, kHostSsd };
enum class BackendKind : std::uint8_t { kAuto, kCuda, kSim };

struct Options {
  // Allocation policy
  PolicyKind policy = PolicyKind::kTimeshare;
  BackendKind backend = BackendKind::kAuto;
  std::size_t sim_capacity_bytes = std::size_t{80} << 30;
  std::string route = "auto";                    // auto, native, pluggable (python/timeshare/_native.py)
  bool expandable_segments = false;              // torch policy only
  std::size_t max_split_size_bytes = SIZE_MAX;   // torch policy only
  double garbage_collection_threshold = 0.0;     // torch policy only
  // Budget and spill
  std::size_t budget_bytes = 0;                  // 0 = no budget
  SpillTier spill = SpillTier::kNone;
  std::string spill_dir;                         // empty = a temporary directory
  std::size_t pinned_bytes = std::size_t{2} << 30;
  std::size_t prefetch_bytes = std::size_t{512} << 20;
  std::size_t min_spill_bytes = std::size_t{1} << 20;
  // Predictor
  std::string predictor = "hybrid";
  bool predict_sync = false;  // ask the predictor on the malloc path (else: fed asynchronously)
  // Test of the sim's fault detector only: unmap granules without waiting for their streams.
  bool unsafe_unmap = false;
  // Follow the layout plans the predictor's thread builds (pool/layout_plan.h). Off by
  // default: measured, it makes more device calls than the default placement, at as much or
  // more peak reserved, on every shipped trace (docs/temporal_pool.md, "Layout plans").
  bool plan = false;
  // Temporal pool: at a new peak of demand, map this much beyond the block (fewer device calls
  // while memory grows, for at most this much more peak reserved; 0 = map only what blocks use).
  std::size_t map_ahead_bytes = std::size_t{18} << 20;
  // Temporal pool: at growth, map ahead less by the bytes the live blocks are predicted to free
  // within this many allocator events (pool/temporal/free_forecast.h; 0 = off).
  std::uint64_t free_forecast_events = 0;
  // Temporal pool: free granules stay mapped up to this fraction of the observed peak of demand
  // above it (fewer map/unmap calls in the steady state, up to this much more peak reserved;
  // 0 = give back everything above the peak).
  double cache_slack = 0.0;
  std::size_t history_bytes = std::size_t{8} << 20;
  int hidden = 32;
  std::uint64_t retrain_interval_events = 40'000;
  double drift_threshold = 0.10;
  std::uint64_t seed = 0x7153;
  // Misc
  std::string log_level = "warn";
};

struct OptionInfo {
  const char* key;
  const char* type;         // "bytes", "int", "float", "bool", "choice", "path", "string"
  const char* default_text;
  const char* meaning;
};

std::span<const OptionInfo> option_table() noexcept;

struct ParseResult {
  std::optional<Options> options;  // set on success
  std::string error;               // one line when options is empty
};

// Parses `conf` ("key:value,key:value"; whitespace around items ignored; empty = defaults) on
// top of `base`. Pure: no environment, no I/O. An unknown key or bad value gives one error line
// naming the key, what was expected, and (for unknown keys) the valid keys.
ParseResult parse_options(std::string_view conf, const Options& base = {});

// Parses sizes such as "512", "64KiB", "20GiB", "1.5GB", "300MB", "2M". Binary units for
// KiB/MiB/GiB/TiB and the torch-style short forms K/M/G; decimal for KB/MB/GB/TB.
std::optional<std::size_t> parse_bytes(std::string_view text);

// Renders options back into the `key:value,...` form (round-trips through parse_options).
std::string to_conf_string(const Options& o);

const char* to_string(PolicyKind p) noexcept;
const char* to_string(SpillTier t) noexcept;
const char* to_string(BackendKind b) noexcept;

}  // namespace timeshare
