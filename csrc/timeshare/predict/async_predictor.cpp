#include "timeshare/predict/async_predictor.h"

#include <algorithm>
#include <chrono>
#include <cstddef>
#include <utility>

#include "timeshare/common/log.h"

namespace timeshare::predict {

namespace {
constexpr auto kPoll = std::chrono::milliseconds(1);      // the worker looks at the inbox this often
constexpr auto kIdlePoll = std::chrono::milliseconds(64); // backing off to this while it is empty
constexpr std::size_t kInitialCapacity = 4096;        // events; vectors grow beyond as needed
}  // namespace

AsyncPredictor::AsyncPredictor(std::unique_ptr<LifespanPredictor> inner, std::size_t max_pending,
                               std::size_t local_batch)
    : inner_(std::move(inner)),
      name_(std::string(inner_->name()) + " (async)"),
      max_pending_(max_pending == 0 ? 1 : max_pending),
      local_batch_(local_batch == 0 ? 1 : local_batch) {
  local_.reserve(local_batch_);
  inbox_.reserve(kInitialCapacity);
  batch_.reserve(kInitialCapacity);
  worker_ = std::thread([this] { run(); });
}

AsyncPredictor::~AsyncPredictor() {
  {
    std::lock_guard lock(in_mu_);
    stop_ = true;
  }
  wake_.notify_all();
  if (worker_.joinable()) worker_.join();
  drain();
}

void AsyncPredictor::push(const Item& item) {
  std::lock_guard lock(local_mu_);
  local_.push_back(item);
  if (local_.size() >= local_batch_) flush_local_locked();
}

void AsyncPredictor::flush_local_locked() const {
  if (local_.empty()) return;
  bool wake = false;
  {
    std::lock_guard lock(in_mu_);
    const std::size_t room = max_pending_ > inbox_.size() ? max_pending_ - inbox_.size() : 0;
    const std::size_t take = std::min(room, local_.size());
    if (take < local_.size()) {
      if (dropped_.fetch_add(local_.size() - take, std::memory_order_relaxed) == 0) {
        log().warn("predictor {}: {} events queued, the predictor thread is behind; dropping "
                   "events until it catches up (placement does not wait for it)",
                   inner_->name(), inbox_.size());
      }
    }
    inbox_.insert(inbox_.end(), local_.begin(), local_.begin() + static_cast<std::ptrdiff_t>(take));
    wake = inbox_.size() >= max_pending_ / 2;  // urgent only: the worker polls on its own
  }
  local_.clear();
  if (wake) wake_.notify_one();
}

std::uint64_t AsyncPredictor::on_alloc(const AllocEvent& e) {
  Item item;
  item.alloc = true;
  item.alloc_id = e.alloc_id;
  item.bytes = e.bytes;
  item.stream = e.stream;
  item.device = e.device;
  item.now_events = e.now_events;
  item.now_us = e.now_us;
  push(item);
  return 0;
}

void AsyncPredictor::on_free(const FreeEvent& e) {
  Item item;
  item.alloc_id = e.alloc_id;
  item.now_events = e.now_events;
  item.now_us = e.now_us;
  push(item);
}

void AsyncPredictor::feed_pending_locked() const {
  {
    std::lock_guard lock(in_mu_);
    batch_.swap(inbox_);
  }
  for (const Item& item : batch_) {
    if (item.alloc) {
      AllocEvent a;
      a.alloc_id = item.alloc_id;
      a.bytes = static_cast<std::size_t>(item.bytes);
      a.stream = item.stream;
      a.device = item.device;
      a.now_events = item.now_events;
      a.now_us = item.now_us;
      inner_->on_alloc(a);
    } else {
      inner_->on_free({item.alloc_id, item.now_events, item.now_us});
    }
  }
  batch_.clear();
}

void AsyncPredictor::drain() const {
  std::lock_guard feed(feed_mu_);
  {
    std::lock_guard local(local_mu_);
    flush_local_locked();
  }
  feed_pending_locked();
}

PredictorStats AsyncPredictor::stats() const {
  drain();
  std::lock_guard feed(feed_mu_);
  return inner_->stats();
}

void AsyncPredictor::run() {
  auto poll = kPoll;
  for (;;) {
    {
      std::unique_lock lock(in_mu_);
      wake_.wait_for(lock, poll, [this] { return stop_ || inbox_.size() >= max_pending_ / 2; });
      if (stop_) return;
      if (inbox_.empty()) {  // an idle allocator: wake up less and less often
        poll = std::min(poll * 2, std::chrono::duration_cast<decltype(poll)>(kIdlePoll));
        continue;
      }
    }
    poll = kPoll;
    std::lock_guard feed(feed_mu_);
    feed_pending_locked();
  }
}

}  // namespace timeshare::predict
