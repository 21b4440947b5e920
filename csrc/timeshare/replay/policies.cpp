#include "timeshare/replay/policies.h"

#include <algorithm>
#include <memory>
#include <random>
#include <stdexcept>

#include "timeshare/allocator/allocator.h"
#include "timeshare/common/options.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/pool/temporal/temporal_options.h"
#include "timeshare/pool/temporal/temporal_pool.h"
#include "timeshare/predict/async_predictor.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/predictor.h"
#include "timeshare/predict/predictor_options.h"
#include "timeshare/replay/oracle_planner.h"

namespace timeshare::trace {

namespace {

constexpr std::string_view kTorch = "torch";
constexpr std::string_view kTorchExpandable = "torch-expandable";
constexpr std::string_view kTimeshare = "timeshare";
constexpr std::string_view kOracle = "oracle";
constexpr std::string_view kTimeshareTrue = "timeshare-true";
constexpr std::string_view kTimeshareConst = "timeshare-const";
// True lifespans dealt to the wrong allocations (a seeded shuffle): what wrong predictions cost.
constexpr std::string_view kTimeshareShuffled = "timeshare-shuffled";
// "timeshare+KIND": the temporal pool with predictor KIND instead of the default, trained online
// in the same deterministic replay (the baselines and ablations the predictor is measured against).
constexpr std::string_view kWithPredictor = "timeshare+";
constexpr std::string_view kBaselineKinds[] = {"hybrid_nolstm", "hybrid_scratch", "lstm",
                                               "lstm_pre", "aligned", "table",
                                               "table_cycle", "prev_iter", "last_size",
                                               "size_mean"};

// A perfect predictor for the `timeshare-true` ablation: answers with the exact lifespan the
// trace really has, and marks allocations never freed as permanent (predict/'s "oracle" kind
// answers in log2 steps and leaves never-freed allocations unpredicted).
class TruthPredictor final : public predict::LifespanPredictor {
 public:
  explicit TruthPredictor(std::vector<std::uint64_t> lifespans)
      : lifespans_(std::move(lifespans)) {}
  const char* name() const noexcept override { return "truth"; }
  std::uint64_t on_alloc(const predict::AllocEvent& e) override {
    ++stats_.predictions;
    const std::uint64_t t = e.alloc_id < lifespans_.size() ? lifespans_[e.alloc_id] : kNoIndex;
    return t == kNoIndex ? pool::kPermanentLifespanEvents : std::max<std::uint64_t>(t, 1);
  }
  void on_free(const predict::FreeEvent&) override { ++stats_.observed; }
  predict::PredictorStats stats() const override { return stats_; }

 private:
  std::vector<std::uint64_t> lifespans_;
  predict::PredictorStats stats_;
};

// Forwards to a predictor it does not own and keeps each allocation's answer: the replay of
// the allocator's path (AsyncPredictor's board in front) scores the predictor itself by these.
class RecordingPredictor final : public predict::LifespanPredictor {
 public:
  RecordingPredictor(predict::LifespanPredictor& inner, std::size_t allocs)
      : inner_(inner), answers_(allocs, 0) {}
  const char* name() const noexcept override { return inner_.name(); }
  std::uint64_t on_alloc(const predict::AllocEvent& e) override {
    const std::uint64_t p = inner_.on_alloc(e);
    if (e.alloc_id < answers_.size()) answers_[e.alloc_id] = p;
    return p;
  }
  void on_free(const predict::FreeEvent& e) override { inner_.on_free(e); }
  predict::PredictorStats stats() const override { return inner_.stats(); }
  const std::vector<std::uint64_t>& answers() const noexcept { return answers_; }

 private:
  predict::LifespanPredictor& inner_;
  std::vector<std::uint64_t> answers_;
};

device::SimOptions sim_options(const PolicyOptions& o) {
  device::SimOptions s;
  s.capacity_bytes = o.capacity_bytes;
  s.backing = false;
  return s;
}

ReplayResult run_pool(std::string_view policy, pool::Pool& pool,
                      predict::LifespanPredictor* predictor, device::SimBackend& backend,
                      const Event* events, std::size_t n, const ReplayOptions& ro,
                      const PolicyOptions& po) {
  if (po.limit_bytes) pool.set_limit_bytes(po.limit_bytes);
  ReplayResult r = replay(events, n, pool, predictor, &backend, ro);
  r.policy = std::string(policy);
  return r;
}

ReplayResult run_caching(std::string_view policy, bool expandable, const Event* events,
                         std::size_t n, const ReplayOptions& ro, const PolicyOptions& po) {
  device::SimBackend backend(sim_options(po));
  Options options;
  options.policy = PolicyKind::kTorch;
  options.expandable_segments = expandable;
  std::unique_ptr<pool::Pool> pool = make_pool(options, backend);
  return run_pool(policy, *pool, nullptr, backend, events, n, ro, po);
}

// The conf string of a replay, parsed (defaults when empty).
Options parse_conf(const PolicyOptions& po) {
  ParseResult r = parse_options(po.conf);
  if (!r.options) throw std::invalid_argument("--conf: " + r.error);
  return *r.options;
}

// The board a replay's temporal pool follows: one per run under option `plan` (the predictor
// stack's layout planner publishes on it, pool/layout_plan.h), else none.
std::shared_ptr<pool::PlanBoard> plan_board(const Options& conf) {
  return conf.plan ? std::make_shared<pool::PlanBoard>() : nullptr;
}

// `predictor`: a stack from make_predictor_stack, which feeds a layout planner publishing on
// `board` when there is one (as the allocator runs it).
ReplayResult run_temporal(std::string_view policy, predict::LifespanPredictor& predictor,
                          const Event* events, std::size_t n, const ReplayOptions& ro,
                          const PolicyOptions& po, const Options& conf,
                          const std::shared_ptr<pool::PlanBoard>& board) {
  device::SimBackend backend(sim_options(po));
  std::unique_ptr<pool::TemporalPool> pool = make_temporal_pool(conf, backend);
  PolicyOptions limited = po;
  if (limited.limit_bytes == 0) limited.limit_bytes = conf.budget_bytes;
  if (!board) return run_pool(policy, *pool, &predictor, backend, events, n, ro, limited);
  pool->set_plan_board(board);
  ReplayResult r = run_pool(policy, *pool, &predictor, backend, events, n, ro, limited);
  const pool::TemporalPool::PlanStats ps = pool->plan_stats();
  r.plan_hits = ps.hits;
  r.plan_misses = ps.misses;
  r.plans = ps.plans;
  r.plans_dropped = ps.dropped;
  return r;
}

ReplayResult run_oracle(const Event* events, std::size_t n, const ReplayOptions& ro) {
  ReplayResult r;
  r.policy = std::string(kOracle);
  r.events = n;
  const OraclePlan plan = plan_oracle(events, n);
  r.allocs = plan.offset_bytes.size();
  r.frees = n - r.allocs;
  r.peak_reserved_bytes = plan.arena_bytes;
  r.backend_peak_reserved_bytes = plan.arena_bytes;
  r.device_reserve_calls = plan.arena_bytes ? 1 : 0;
  r.device_calls = r.device_reserve_calls;
  r.backend_reserve_calls = r.device_reserve_calls;
  r.loop_ns = plan.plan_ns;
  r.ns_per_event = n ? plan.plan_ns / static_cast<double>(n) : 0.0;
  r.events_per_second = plan.plan_ns > 0 ? static_cast<double>(n) * 1e9 / plan.plan_ns : 0.0;
  // Timeline: the arena grows to cover every block placed so far, in allocation order.
  TimelineSampler sampler(n, ro.timeline_points);
  std::uint64_t live = 0;
  std::uint64_t top = 0;
  std::uint64_t peak_live = 0;
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (e.op == Op::kAlloc) {
      live += e.bytes;
      peak_live = std::max(peak_live, live);
      top = std::max(top, plan.offset_bytes[e.id] + plan.size_bytes[e.id]);
    } else {
      live -= e.bytes;
    }
    sampler.add(i, live, top);
  }
  r.timeline = sampler.finish(n ? n - 1 : 0);
  r.peak_live_bytes = peak_live;
  return r;
}

}  // namespace

std::vector<std::string> default_policies() {
  return {std::string(kTorch), std::string(kTorchExpandable), std::string(kTimeshare),
          std::string(kOracle)};
}

std::vector<std::string> ablation_policies() {
  return {std::string(kTimeshareTrue), std::string(kTimeshareConst)};
}

std::vector<std::string> wrong_prediction_policies() {
  return {std::string(kTimeshareShuffled)};
}

std::vector<std::string> predictor_policies() {
  std::vector<std::string> out;
  for (std::string_view k : kBaselineKinds) out.push_back(std::string(kWithPredictor) + std::string(k));
  return out;
}

std::vector<std::string> policy_names() {
  std::vector<std::string> all = default_policies();
  for (std::string& a : ablation_policies()) all.push_back(std::move(a));
  for (std::string& a : wrong_prediction_policies()) all.push_back(std::move(a));
  for (std::string& a : predictor_policies()) all.push_back(std::move(a));
  return all;
}

bool is_policy(std::string_view name) {
  for (const std::string& p : policy_names()) {
    if (p == name) return true;
  }
  return false;
}

bool policy_predicts(std::string_view name) {
  return name == kTimeshare || name == kTimeshareTrue || name == kTimeshareConst ||
         name == kTimeshareShuffled ||
         name.starts_with(kWithPredictor);
}

ReplayResult run_policy(std::string_view policy, const Event* events, std::size_t n,
                        const ReplayOptions& replay_options,
                        const PolicyOptions& policy_options) {
  if (!is_policy(policy)) {
    std::string known;
    for (const std::string& p : policy_names()) known += (known.empty() ? "" : ", ") + p;
    throw std::invalid_argument("unknown policy '" + std::string(policy) + "' (expected one of " +
                                known + ")");
  }
  std::size_t allocs = 0;
  if (std::string why = validate(events, n, &allocs); !why.empty()) {
    throw std::invalid_argument("invalid trace: " + why);
  }
  if (policy == kTorch || policy == kTorchExpandable) {
    return run_caching(policy, policy == kTorchExpandable, events, n, replay_options,
                       policy_options);
  }
  if (policy == kOracle) return run_oracle(events, n, replay_options);
  const Options conf = parse_conf(policy_options);
  if (policy == kTimeshareTrue || policy == kTimeshareShuffled) {
    std::vector<std::uint64_t> lifespans = true_lifespans(events, n, allocs);
    if (policy == kTimeshareShuffled) {
      std::mt19937_64 rng(policy_options.seed);
      std::shuffle(lifespans.begin(), lifespans.end(), rng);
    }
    const std::shared_ptr<pool::PlanBoard> board = plan_board(conf);
    const std::unique_ptr<predict::LifespanPredictor> predictor = make_predictor_stack(
        std::make_unique<TruthPredictor>(std::move(lifespans)), conf, board, /*async=*/false);
    return run_temporal(policy, *predictor, events, n, replay_options, policy_options, conf,
                        board);
  }
  // Training happens at fixed events (deterministic): one trace, one answer.
  predict::PredictorOptions options = predictor_options(conf, /*deterministic=*/true);
  // An explicit replay seed wins; else the conf's (both default to kReplaySeed).
  options.seed = policy_options.seed != kReplaySeed ? policy_options.seed : conf.seed;
  options.kind = policy == kTimeshareConst ? "constant"
                 : policy.starts_with(kWithPredictor)
                     ? std::string(policy.substr(kWithPredictor.size()))
                     : conf.predictor;
  options.constant_lifespan_events = policy_options.constant_lifespan_events;
  std::unique_ptr<predict::LifespanPredictor> predictor = predict::make_predictor(options);
  if (!predictor) {
    throw std::invalid_argument("policy '" + std::string(policy) + "': predictor kind '" +
                                options.kind + "' is not available");
  }
  ReplayOptions ro = replay_options;
  if (const auto* hybrid = dynamic_cast<const predict::HybridPredictor*>(predictor.get())) {
    ro.detected_cycle_alloc = [hybrid] { return hybrid->detector().first_confirmed_at(); };
  }
  ReplayResult r;
  if ((policy == kTimeshare || policy == kTimeshareConst) && !conf.plan) {
    // The allocator's path: the pool gets what AsyncPredictor's board answers (the answer
    // published for the allocation's context), fed inline a batch at a time so that one trace
    // gives one result; the predictor's own answers are kept for its figures.
    auto recording = std::make_unique<RecordingPredictor>(*predictor, allocs);
    RecordingPredictor* rec = recording.get();
    predict::AsyncPredictor answered(std::move(recording), {.inline_feed = true});
    ro.own_answers = &rec->answers();
    r = run_temporal(policy, answered, events, n, ro, policy_options, conf, nullptr);
  } else {
    // The hybrid pointer above stays valid: the stack owns the predictor.
    const std::shared_ptr<pool::PlanBoard> board = plan_board(conf);
    predictor = make_predictor_stack(std::move(predictor), conf, board, /*async=*/false);
    r = run_temporal(policy, *predictor, events, n, ro, policy_options, conf, board);
  }
  if (policy == kTimeshare) {
    // The deterministic pass trains synchronously inside the loop. Time the hot path as it runs
    // in real use instead: a second pass as the allocator runs by default, the predictor fed
    // through AsyncPredictor (its own thread; its trainer on another), the pool not waiting.
    predict::PredictorOptions realtime = options;
    realtime.deterministic = false;
    // Always through the feed (even under predict_sync): the timing of the default path.
    const std::shared_ptr<pool::PlanBoard> board = plan_board(conf);
    const std::unique_ptr<predict::LifespanPredictor> timed = make_predictor_stack(
        predict::make_predictor(realtime), conf, board, /*async=*/true);
    ReplayOptions timing = replay_options;
    timing.detected_cycle_alloc = nullptr;
    const ReplayResult t =
        run_temporal(policy, *timed, events, n, timing, policy_options, conf, board);
    r.ns_per_event_deterministic = r.ns_per_event;
    r.loop_ns = t.loop_ns;
    r.ns_per_event = t.ns_per_event;
    r.events_per_second = t.events_per_second;
  }
  return r;
}

}  // namespace timeshare::trace
