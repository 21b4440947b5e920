// The factory: maps the user-facing Options onto the parts' own option structs, and assembles
// the pool and predictor stack the allocator (and every replay and tool) runs.
#include <cmath>
#include <string_view>

#include "timeshare/allocator/allocator.h"
#include "timeshare/allocator/layout_planner.h"
#include "timeshare/common/log.h"
#include "timeshare/pool/caching/caching_pool.h"
#include "timeshare/pool/temporal/temporal_pool.h"
#include "timeshare/predict/async_predictor.h"
#include "timeshare/predict/online_predictor.h"

namespace timeshare {

Stack make_stack(const Options& options, device::Backend& backend, bool deterministic) {
  Stack s;
  std::shared_ptr<pool::PlanBoard> board;
  if (options.policy == PolicyKind::kTorch || !backend.supports_virtual_memory()) {
    s.pool = make_pool(options, backend);
  } else {
    std::unique_ptr<pool::TemporalPool> temporal = make_temporal_pool(options, backend);
    if (options.plan) {
      board = std::make_shared<pool::PlanBoard>();
      temporal->set_plan_board(board);
    }
    s.pool = std::move(temporal);
  }
  s.predictor = make_predictor_for(options, deterministic, std::move(board));
  return s;
}

std::unique_ptr<pool::Pool> make_pool(const Options& options, device::Backend& backend) {
  const bool temporal = options.policy != PolicyKind::kTorch;
  if (temporal && backend.supports_virtual_memory()) return make_temporal_pool(options, backend);
  pool::CachingPoolOptions o;
  if (temporal) {
    // The temporal pool maps granules under a fixed address range: without virtual memory
    // PyTorch's policy serves, and says so in its name.
    o.label = "temporal(fallback:torch)";
    log().info("the {} backend has no virtual memory: PyTorch's policy serves the temporal "
               "policy's requests", backend.name());
  } else {
    o.expandable_segments = options.expandable_segments && backend.supports_virtual_memory();
    if (options.max_split_size_bytes != SIZE_MAX) {
      o.max_split_size_bytes = options.max_split_size_bytes;
    }
    o.garbage_collection_threshold = options.garbage_collection_threshold;
  }
  return std::make_unique<pool::CachingPool>(backend, o);
}

std::unique_ptr<pool::TemporalPool> make_temporal_pool(const Options& options,
                                                       device::Backend& backend) {
  return std::make_unique<pool::TemporalPool>(&backend, temporal_pool_options(options, backend));
}

std::unique_ptr<pool::Pool> make_private_pool(const Options& options, device::Backend& backend) {
  if (options.policy == PolicyKind::kTorch || !backend.supports_virtual_memory()) {
    return make_pool(options, backend);
  }
  pool::TemporalPoolOptions to = temporal_pool_options(options, backend);
  // Free granules are cached up to the observed need plus this slack: with it no trim ever
  // unmaps one (empty_cache and the destructor still do).
  to.slack_granules = std::size_t{1} << 40;
  return std::make_unique<pool::TemporalPool>(&backend, to);
}

pool::TemporalPoolOptions temporal_pool_options(const Options& options,
                                                const device::Backend& backend) {
  pool::TemporalPoolOptions to;
  const std::size_t granule = backend.granule_bytes();
  to.map_ahead_granules = granule == 0 ? 0 : (options.map_ahead_bytes + granule - 1) / granule;
  to.forecast_window_events = options.free_forecast_events;
  to.slack_permille = static_cast<std::size_t>(std::lround(options.cache_slack * 1000.0));
  // The detector test only ever runs on the sim: a GPU would fault (illegal address).
  to.unsafe_unmap = options.unsafe_unmap && std::string_view(backend.name()) == "sim";
  if (options.unsafe_unmap && !to.unsafe_unmap) {
    log().warn("unsafe_unmap is a test of the sim's fault detector; ignored on the {} backend",
               backend.name());
  }
  return to;
}

predict::PredictorOptions predictor_options(const Options& options, bool deterministic) {
  predict::PredictorOptions p;
  p.kind = options.predictor;
  p.history_bytes = options.history_bytes;
  p.hidden = options.hidden;
  p.retrain_interval_events = options.retrain_interval_events;
  p.drift_threshold = options.drift_threshold;
  p.seed = options.seed;
  p.deterministic = deterministic;
  return p;
}

std::unique_ptr<predict::LifespanPredictor> make_predictor_for(
    const Options& options, bool deterministic, std::shared_ptr<pool::PlanBoard> board) {
  if (options.policy == PolicyKind::kTorch) return nullptr;
  // Off the malloc path unless asked (predict_sync); a deterministic predictor (replays, tests)
  // stays synchronous, since its answers must follow the events one by one.
  return make_predictor_stack(predict::make_predictor(predictor_options(options, deterministic)),
                              options, std::move(board),
                              /*async=*/!options.predict_sync && !deterministic);
}

std::unique_ptr<predict::LifespanPredictor> make_predictor_stack(
    std::unique_ptr<predict::LifespanPredictor> predictor, const Options& options,
    std::shared_ptr<pool::PlanBoard> board, bool async) {
  if (!predictor) return predictor;
  if (board && options.plan) {
    predictor = std::make_unique<PlanningPredictor>(std::move(predictor), std::move(board));
  }
  if (async) {
    predictor = std::make_unique<predict::AsyncPredictor>(std::move(predictor),
                                                          async_feed_options(options));
  }
  return predictor;
}

predict::AsyncFeedOptions async_feed_options(const Options& options) {
  predict::AsyncFeedOptions feed;
  feed.answers = options.free_forecast_events != 0;  // the pool's only option that reads them
  return feed;
}

}  // namespace timeshare
