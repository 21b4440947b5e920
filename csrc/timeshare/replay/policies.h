// Policies — the named allocation policies a replay compares, side by side.
//
//   torch             CachingPool, default options: PyTorch's CUDACachingAllocator policy.
//   torch-expandable  CachingPool with expandable segments (expandable_segments:True).
//   timeshare         TemporalPool driven by the hybrid LifespanPredictor, learning online.
//   oracle            The offline planner (oracle_planner.h): knows every lifetime.
// Ablations (replayed on request):
//   timeshare-true    TemporalPool driven by the TRUE lifespans (a perfect predictor).
//   timeshare-const   TemporalPool with one constant prediction for every allocation.
//
// Every policy runs on a fresh SimBackend with fake addresses, so runs are independent and
// the same trace always gives the same figures (predictors run in deterministic mode).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "timeshare/common/units.h"
#include "timeshare/trace/events.h"
#include "timeshare/replay/replayer.h"

namespace timeshare::trace {

// Replays never run out of memory unless asked to: the simulated device is this large.
inline constexpr std::size_t kReplayCapacityBytes = std::size_t{1} << 40;  // 1 TiB
// The constant lifespan of `timeshare-const`, in allocator ticks.
inline constexpr std::uint64_t kConstantLifespanEvents = 256;
inline constexpr std::uint64_t kReplaySeed = 0x7153;

struct PolicyOptions {
  std::size_t capacity_bytes = kReplayCapacityBytes;  // simulated device memory
  std::size_t limit_bytes = 0;                        // pool cap (memory fraction); 0 = none
  std::uint64_t constant_lifespan_events = kConstantLifespanEvents;
  std::uint64_t seed = kReplaySeed;                   // predictor seed (deterministic mode)
  // TIMESHARE_CONF options ("key:value,...") for the timeshare policies of the replay: the
  // predictor's (predictor, hidden, history, retrain_interval, drift_threshold, seed; the kind
  // of policies that name one stays theirs), unsafe_unmap, and budget (a limit, where
  // limit_bytes is 0). Empty = defaults. A bad string throws std::invalid_argument.
  std::string conf;
};

// The main policies, in table order.
std::vector<std::string> default_policies();
// The ablation policies.
std::vector<std::string> ablation_policies();
// Wrong predictions on purpose: "timeshare-shuffled", the true lifespans dealt to the wrong
// allocations (seeded by PolicyOptions::seed). Not in the default tables.
std::vector<std::string> wrong_prediction_policies();
// "timeshare+KIND" for every other predictor kind: the same pool and replay with that predictor
// (the online baselines of docs/benchmarks.md).
std::vector<std::string> predictor_policies();
// Every policy `run_policy` accepts.
std::vector<std::string> policy_names();
bool is_policy(std::string_view name);
// True for policies that ask a predictor (their results carry prediction figures).
bool policy_predicts(std::string_view name);

// Replays `events` (n records) through `policy`. Throws std::invalid_argument with one line for
// an unknown policy or an invalid trace.
ReplayResult run_policy(std::string_view policy, const Event* events, std::size_t n,
                        const ReplayOptions& replay_options = {},
                        const PolicyOptions& policy_options = {});

}  // namespace timeshare::trace
