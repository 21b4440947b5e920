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
// Events' worth of chunks made (and written once, so their pages are in) at construction; more
// are made as needed, up to what max_pending queued events and the worker's batch hold.
constexpr std::size_t kInitialEvents = 8192;
}  // namespace

AsyncPredictor::AsyncPredictor(std::unique_ptr<LifespanPredictor> inner, AsyncFeedOptions feed)
    : inner_(std::move(inner)),
      name_(std::string(inner_->name()) + " (async)"),
      max_pending_(feed.max_pending == 0 ? 1 : feed.max_pending),
      local_batch_(feed.local_batch == 0 ? 1 : feed.local_batch),
      inline_feed_(feed.inline_feed),
      answers_(feed.answers) {
  const std::size_t initial = std::max<std::size_t>(
      2, std::min(kInitialEvents, max_pending_) / local_batch_ + 1);
  {
    std::lock_guard lock(in_mu_);
    while (chunks_.size() < initial) free_.push_back(make_chunk_locked());
    const std::size_t most = max_pending_ / local_batch_ + 2;
    inbox_.reserve(std::min(most, initial * 4));
    batch_.reserve(std::min(most, initial * 4));
    local_ = new_chunk_locked();
  }
  if (!inline_feed_) worker_ = std::thread([this] { run(); });
}

AsyncPredictor::Chunk* AsyncPredictor::make_chunk_locked() const {
  auto c = std::make_unique<Chunk>();
  c->items = std::make_unique<Item[]>(local_batch_);  // value-initialised: its pages are in
  chunks_.push_back(std::move(c));
  return chunks_.back().get();
}

AsyncPredictor::Chunk* AsyncPredictor::new_chunk_locked() const {
  if (free_.empty()) return make_chunk_locked();
  Chunk* c = free_.back();
  free_.pop_back();
  return c;
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

template <class Fill>
std::uint64_t AsyncPredictor::push(bool alloc, Fill&& fill) {
  bool full = false;
  std::uint64_t answer = 0;
  {
    std::lock_guard lock(local_mu_);
    // Written in place in the chunk: a copy through the stack cost the malloc path a store
    // forwarding stall per event (16-byte loads of the caller's 8-byte stores).
    Item& item = local_->items[local_n_++];
    fill(item);
    if (alloc && answers_) {
      // Answered before this event can be fed (inline, it may be the batch's last).
      item.context = context_.next(item.bytes, item.stream);
      answer = board_.lookup(item.context);
      ++(answer != 0 ? answered_ : unanswered_);
    }
    if (local_n_ >= local_batch_) {
      flush_local_locked();
      full = inline_feed_;
    }
  }
  if (full) {  // deterministic: the batch is fed now, where the worker would have taken it
    std::lock_guard feed(feed_mu_);
    feed_pending_locked();
  }
  return answer;
}

void AsyncPredictor::flush_local_locked() const {
  if (local_n_ == 0) return;
  bool wake = false;
  {
    std::lock_guard lock(in_mu_);
    const std::size_t room = max_pending_ > queued_ ? max_pending_ - queued_ : 0;
    const std::size_t take = std::min(room, local_n_);
    if (take < local_n_) {
      if (dropped_.fetch_add(local_n_ - take, std::memory_order_relaxed) == 0) {
        log().warn("predictor {}: {} events queued, the predictor thread is behind; dropping "
                   "events until it catches up (placement does not wait for it)",
                   inner_->name(), queued_);
      }
    }
    if (take == 0) {
      local_n_ = 0;  // all dropped: the chunk is reused as it is
      return;
    }
    local_->n = take;  // written once per chunk, here: the worker only reads chunks
    local_n_ = 0;
    inbox_.push_back(local_);
    queued_ += take;
    local_ = new_chunk_locked();
    wake = queued_ >= max_pending_ / 2;  // urgent only: the worker polls on its own
  }
  if (wake) wake_.notify_one();
}

std::uint64_t AsyncPredictor::on_alloc(const AllocEvent& e) {
  return push(/*alloc=*/true, [&e](Item& item) {
    item.alloc_id = e.alloc_id;
    item.context = 0;
    item.bytes = e.bytes;
    item.stream = e.stream;
    item.now_events = e.now_events;
    item.now_us = e.now_us;
    item.device = e.device;
    item.alloc = true;
  });
}

void AsyncPredictor::on_free(const FreeEvent& e) {
  // A free's other fields keep what the chunk held: the feed reads only these.
  push(/*alloc=*/false, [&e](Item& item) {
    item.alloc_id = e.alloc_id;
    item.now_events = e.now_events;
    item.now_us = e.now_us;
    item.alloc = false;
  });
}

void AsyncPredictor::feed_pending_locked() const {
  {
    std::lock_guard lock(in_mu_);
    batch_.swap(inbox_);
    queued_ = 0;
  }
  for (Chunk* c : batch_) {
    for (std::size_t i = 0; i < c->n; ++i) {
      const Item& item = c->items[i];
      if (item.alloc) {
        AllocEvent a;
        a.alloc_id = item.alloc_id;
        a.bytes = static_cast<std::size_t>(item.bytes);
        a.stream = item.stream;
        a.device = item.device;
        a.now_events = item.now_events;
        a.now_us = item.now_us;
        const std::uint64_t p = inner_->on_alloc(a);
        if (answers_) board_.publish(item.context, p);
      } else {
        inner_->on_free({item.alloc_id, item.now_events, item.now_us});
      }
    }
  }
  if (batch_.empty()) return;
  std::lock_guard lock(in_mu_);
  free_.insert(free_.end(), batch_.begin(), batch_.end());
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
  PredictorStats s;
  {
    std::lock_guard feed(feed_mu_);
    s = inner_->stats();
  }
  s.answered = answered();
  s.unanswered = unanswered();
  return s;
}

void AsyncPredictor::run() {
  auto poll = kPoll;
  for (;;) {
    {
      std::unique_lock lock(in_mu_);
      wake_.wait_for(lock, poll, [this] { return stop_ || queued_ >= max_pending_ / 2; });
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
