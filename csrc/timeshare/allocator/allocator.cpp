#include "timeshare/allocator/allocator.h"

#include <cstdio>

#include "timeshare/common/log.h"
#include "timeshare/common/units.h"
#include "timeshare/pool/temporal_pool.h"
#include "timeshare/spill/make_room.h"

namespace timeshare {

namespace {

constexpr std::uint64_t kUnknownFreeLogEvery = 1000;  // log the 1st, 1001st, ... unknown free

std::string mib(std::int64_t bytes) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.2f MiB", static_cast<double>(bytes) / kMiB);
  return buf;
}

}  // namespace

Allocator::Allocator(const Options& options, std::unique_ptr<device::Backend> backend)
    : options_(options), backend_(std::move(backend)) {
  set_log_level(options_.log_level);
  pool_ = make_pool(options_, *backend_);
  std::shared_ptr<pool::PlanBoard> board;
  if (auto* temporal = dynamic_cast<pool::TemporalPool*>(pool_.get()); temporal && options_.plan) {
    board = std::make_shared<pool::PlanBoard>();
    temporal->set_plan_board(board);
  }
  predictor_ = make_predictor_for(options_, /*deterministic=*/false, board);
  if (options_.budget_bytes > 0) pool_->set_limit_bytes(options_.budget_bytes);
  log().info("allocator for {} device {}: pool {}, predictor {}", backend_->name(),
             backend_->device_index(), pool_->name(), predictor_name());
}

Allocator::~Allocator() = default;

const char* Allocator::predictor_name() const noexcept {
  return predictor_ ? predictor_->name() : "none";
}

void* Allocator::malloc(std::size_t bytes, device::Stream stream) {
  pool::AllocHint hint;
  {
    std::lock_guard lock(mu_);
    if (bytes == 0) {
      ++counters_.zero_size_mallocs;
      return nullptr;
    }
    hint.now_events = counters_.clock_events++;
    hint.alloc_id = next_alloc_id_++;
    if (predictor_) {
      predict::AllocEvent e;
      e.alloc_id = hint.alloc_id;
      e.bytes = bytes;
      e.stream = stream;
      e.device = backend_->device_index();
      e.now_events = hint.now_events;
      e.now_us = backend_->now_ns() / 1000;
      hint.predicted_lifespan = predictor_->on_alloc(e);
    }
    if (void* p = pool_->allocate(bytes, stream, hint)) {
      live_.emplace(p, Live{hint.alloc_id, bytes});
      return p;
    }
  }
  // Conflict spill: under a budget, ask the holders of spillable data (the offload hooks) to
  // make room. Called with no allocator lock held, because they free through this allocator.
  if (options_.budget_bytes > 0) {
    const std::size_t freed = spill::make_room(backend_->device_index(), bytes);
    std::lock_guard lock(mu_);
    if (freed > 0) {
      ++counters_.spill_retries;
      if (void* p = pool_->allocate(bytes, stream, hint)) {
        live_.emplace(p, Live{hint.alloc_id, bytes});
        return p;
      }
    }
  }
  std::lock_guard lock(mu_);
  last_oom_ = oom_message(bytes, stream);
  log().error("{}", last_oom_);
  if (predictor_) {
    predictor_->on_free({hint.alloc_id, hint.now_events, backend_->now_ns() / 1000});
  }
  return nullptr;
}

bool Allocator::free(void* ptr) {
  if (!ptr) return true;
  std::lock_guard lock(mu_);
  auto it = live_.find(ptr);
  if (it == live_.end()) {
    if (counters_.unknown_frees++ % kUnknownFreeLogEvery == 0) {
      log().warn("free of pointer {} that timeshare did not allocate: ignored ({} so far)", ptr,
                 counters_.unknown_frees);
    }
    return false;
  }
  const std::uint64_t now = counters_.clock_events++;
  const Live live = it->second;
  live_.erase(it);
  if (pool_->deallocate(ptr, now) != pool::FreeResult::kOk) {
    log().error("pool {} did not know block {} that the allocator handed out", pool_->name(), ptr);
  }
  if (predictor_) predictor_->on_free({live.alloc_id, now, backend_->now_ns() / 1000});
  return true;
}

bool Allocator::record_stream(void* ptr, device::Stream stream) {
  std::lock_guard lock(mu_);
  if (!live_.count(ptr)) return false;
  ++counters_.record_streams;
  pool_->record_stream(ptr, stream);
  return true;
}

void Allocator::empty_cache() {
  std::lock_guard lock(mu_);
  ++counters_.empty_cache_calls;
  pool_->empty_cache();
}

void Allocator::set_memory_fraction(double fraction) {
  if (!(fraction > 0.0 && fraction <= 1.0)) {
    log().warn("memory fraction {} is outside (0, 1]: ignored", fraction);
    return;
  }
  const auto total = backend_->mem_info().total_bytes;
  std::lock_guard lock(mu_);
  std::size_t limit = static_cast<std::size_t>(fraction * static_cast<double>(total));
  if (options_.budget_bytes > 0 && options_.budget_bytes < limit) limit = options_.budget_bytes;
  pool_->set_limit_bytes(limit);
}

DeviceStats Allocator::stats() const {
  std::lock_guard lock(mu_);
  return pool_->stats();
}

predict::PredictorStats Allocator::predictor_stats() const {
  std::lock_guard lock(mu_);
  return predictor_ ? predictor_->stats() : predict::PredictorStats{};
}

AllocatorCounters Allocator::counters() const {
  std::lock_guard lock(mu_);
  return counters_;
}

pool::ReleaseStats Allocator::release_stats() const {
  std::lock_guard lock(mu_);
  return pool_->release_stats();
}

void Allocator::reset_peak_stats() {
  std::lock_guard lock(mu_);
  pool_->reset_peak_stats();
}

void Allocator::reset_accumulated_stats() {
  std::lock_guard lock(mu_);
  pool_->reset_accumulated_stats();
}

std::string Allocator::last_oom_message() const {
  std::lock_guard lock(mu_);
  return last_oom_;
}

std::vector<std::pair<std::uintptr_t, std::size_t>> Allocator::live_blocks() const {
  std::lock_guard lock(mu_);
  std::vector<std::pair<std::uintptr_t, std::size_t>> out;
  out.reserve(live_.size());
  for (const auto& [p, l] : live_) out.emplace_back(reinterpret_cast<std::uintptr_t>(p), l.bytes);
  return out;
}

std::string Allocator::oom_message(std::size_t bytes, device::Stream stream) const {
  const DeviceStats& s = pool_->stats();
  const auto info = backend_->mem_info();
  const std::int64_t allocated = s.allocated_bytes[kAggregate].current;
  const std::int64_t reserved = s.reserved_bytes[kAggregate].current;
  std::string msg = "CUDA out of memory (timeshare). Tried to allocate " +
                    mib(static_cast<std::int64_t>(bytes)) + " on stream " +
                    std::to_string(stream) + ". Device " +
                    std::to_string(backend_->device_index()) + " (" + backend_->name() +
                    ") has a total capacity of " +
                    mib(static_cast<std::int64_t>(info.total_bytes)) + " of which " +
                    mib(static_cast<std::int64_t>(info.free_bytes)) + " is free. " +
                    std::to_string(live_.size()) + " live blocks hold " + mib(allocated) +
                    "; timeshare reserves " + mib(reserved) + " (" + mib(reserved - allocated) +
                    " reserved but unallocated).";
  if (pool_->limit_bytes() > 0) {
    msg += " The budget/limit is " + mib(static_cast<std::int64_t>(pool_->limit_bytes())) +
           ": raise it (TIMESHARE_CONF=budget:...) or let activations spill "
           "(spill:host).";
  } else {
    msg += " Reduce the batch size, set a budget with spill:host to offload activations, or "
           "call timeshare.empty_cache().";
  }
  msg += " Pool: " + pool_->describe();
  return msg;
}

}  // namespace timeshare
