// AsyncPredictor — a LifespanPredictor that takes the predictor it wraps off the malloc path.
//
// on_alloc and on_free append the event (a 56-byte record) to a small local batch (a chunk,
// under a spin lock only callers take, so its cache line stays with them) and return at once;
// every `local_batch` events the chunk is handed to the worker's inbox in one step. A worker
// thread drains the inbox in order into the wrapped predictor, which therefore sees exactly the
// event sequence it would see on the malloc path, and learns, retrains and tracks drift as
// before.
//
// Answers (answer_board.h): on_alloc answers what the worker last published for the
// allocation's context (size, stream, the two sizes before it), as it fed that context's last
// allocation to the predictor; 0, "no prediction", when there is none yet. The pool places the
// block at once with what it gets: a late answer is no answer, never a wait.
//
// `answers` false: no board, on_alloc answers 0 (for a pool whose options use no lifespan; the
// context hash and the board's cache line cost the malloc path 10-30 ns a pair, bench_hotpath).
//
// `inline_feed` (deterministic replays and tests): no thread; each full batch is fed to the
// wrapped predictor on the caller's thread at the moment it would have been handed over, so the
// answers lag the events by the same batch as in real use, and one trace gives one answer.
//
// The malloc path never wakes the worker: the worker polls the inbox every `kPoll` (1 ms) on its
// own timer, backing off to 64 ms while the inbox stays empty (an idle process). Measured with
// bench_hotpath (2-vCPU VM, maximum event rate, all 8 traces): waking it from the producer every
// 256 events (a futex wake and an inter-processor interrupt each) cost more than the predictor
// itself, 1.83-1.85x torch with a predictor that does nothing against 1.46-1.47x for the pool
// alone. Only when the inbox passes half of `max_pending` does the producer wake it, so that a
// worker asleep never turns into dropped events.
//
// Why: measured on the 8 shipped traces, the temporal pool's placement (peak reserved, device
// calls) is the same with the true lifespans, a constant answer and no answer at all, while the
// synchronous prediction was most of the malloc+free cost (docs/predictor.md, "Hot path"). Where
// the pool's options do use lifespans (free_forecast), the board gives it answers without the
// wait (docs/temporal_pool.md, "Predictions in real use"). Option `predict_sync:true` keeps the
// synchronous path.
//
// Chunks are recycled: the worker gives each one back once fed, and the callers take their next
// batch from those, so after warm-up the malloc path writes only memory it has written before.
// Growing vectors instead (the inbox, swapped with the worker's batch) put fresh pages under the
// callers whenever the worker fell behind: page faults were most of the feed's cost on the hot
// path (bench_hotpath, `hybrid@async` alone: 140-285 ns per malloc+free pair, against torch's
// 190-370 for the whole allocation).
//
// Ordering: the worker and drain() both hold `feed_mu_` from taking a batch out of the inbox until
// it has been fed, so batches reach the wrapped predictor in the order they were pushed.
// Bounded: beyond `max_pending` queued events new events are dropped and counted (the predictor
// ignores frees of allocations it never saw); the malloc path never blocks on the predictor.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "timeshare/predict/answer_board.h"
#include "timeshare/predict/predictor.h"

namespace timeshare::predict {

// How an AsyncPredictor feeds and answers (see the top of this file).
struct AsyncFeedOptions {
  std::size_t max_pending = std::size_t{1} << 20;  // events queued at most (~80 MiB)
  std::size_t local_batch = 64;                    // events per chunk handed over
  bool inline_feed = false;                        // no thread: full chunks fed by the caller
  bool answers = true;                             // on_alloc answers from the board
};

class AsyncPredictor final : public LifespanPredictor {
 public:
  explicit AsyncPredictor(std::unique_ptr<LifespanPredictor> inner, AsyncFeedOptions feed = {});
  ~AsyncPredictor() override;  // feeds what is queued, then stops the worker
  AsyncPredictor(const AsyncPredictor&) = delete;
  AsyncPredictor& operator=(const AsyncPredictor&) = delete;

  const char* name() const noexcept override { return name_.c_str(); }
  std::uint64_t on_alloc(const AllocEvent& e) override;  // the board's answer for its context
  void on_free(const FreeEvent& e) override;
  PredictorStats stats() const override;  // drains first: figures count every event pushed

  // Feeds everything pushed so far before returning (stats, tests, shutdown).
  void drain() const;
  std::uint64_t dropped() const noexcept { return dropped_.load(std::memory_order_relaxed); }
  // Allocations answered from the board (a published answer for their context), and not.
  std::uint64_t answered() const {
    std::lock_guard lock(local_mu_);
    return answered_;
  }
  std::uint64_t unanswered() const {
    std::lock_guard lock(local_mu_);
    return unanswered_;
  }
  // Batches of events ever made (they are recycled; for tests: the feed's memory is bounded).
  std::size_t chunks() const {
    std::lock_guard lock(in_mu_);
    return chunks_.size();
  }

 private:
  struct Item {  // one event, either kind, packed (56 bytes)
    std::uint64_t alloc_id = 0;
    std::uint64_t context = 0;  // allocations only: AnswerBoard::Context key
    std::uint64_t bytes = 0;   // allocations only
    std::uint64_t stream = 0;  // allocations only
    std::uint64_t now_events = 0;
    std::uint64_t now_us = 0;
    std::int32_t device = 0;   // allocations only
    bool alloc = false;
  };
  static_assert(sizeof(Item) == 56, "one event in 56 bytes");
  struct Chunk {  // up to local_batch_ events, in order
    std::size_t n = 0;
    std::unique_ptr<Item[]> items;
  };
  // Queues the event `fill` writes (in place, in the callers' chunk); for an allocation, sets
  // its context and returns the board's answer.
  template <class Fill>
  std::uint64_t push(bool alloc, Fill&& fill);
  void flush_local_locked() const;   // caller holds local_mu_
  void feed_pending_locked() const;  // caller holds feed_mu_
  Chunk* new_chunk_locked() const;   // caller holds in_mu_: a recycled chunk, else a new one
  Chunk* make_chunk_locked() const;  // caller holds in_mu_: a new chunk, owned by chunks_
  void run();

  std::unique_ptr<LifespanPredictor> inner_;
  std::string name_;
  const std::size_t max_pending_;
  const std::size_t local_batch_;
  // Lock order: feed_mu_, then local_mu_, then in_mu_.
  mutable std::mutex feed_mu_;   // serialises feeding the wrapped predictor
  // A spin lock: one exchange to take and a store to give, against a mutex's two atomic
  // read-modify-writes per event. Held for a 56-byte copy (and, once per batch, in_mu_); a
  // caller that finds it taken yields after a short spin.
  class SpinLock {
   public:
    void lock() noexcept {
      while (taken_.exchange(true, std::memory_order_acquire)) {
        for (int spins = 0; taken_.load(std::memory_order_relaxed); ++spins) {
          if (spins >= 64) std::this_thread::yield();
        }
      }
    }
    void unlock() noexcept { taken_.store(false, std::memory_order_release); }

   private:
    std::atomic<bool> taken_{false};
  };
  // The callers' fields and the worker's each on cache lines of their own (false sharing with
  // in_mu_, which the worker takes, would put a miss on every push).
  alignas(64) mutable SpinLock local_mu_;  // guards local_ and local_n_ (the callers' batch)
  mutable Chunk* local_ = nullptr;
  // Events in local_. Not in the chunk: a count the worker had reset sat in a cache line of the
  // worker's core, and reading it was most of push()'s cost.
  mutable std::size_t local_n_ = 0;
  // Guarded by local_mu_: the callers' order of allocations, and how many the board answered.
  AnswerBoard::Context context_;
  std::uint64_t answered_ = 0;
  std::uint64_t unanswered_ = 0;
  alignas(64) mutable std::mutex in_mu_;  // guards inbox_, queued_, free_, chunks_ and stop_
  mutable std::condition_variable wake_;
  mutable std::vector<Chunk*> inbox_;  // handed over, oldest first
  mutable std::size_t queued_ = 0;     // events in inbox_
  mutable std::vector<Chunk*> free_;   // fed, for reuse
  mutable std::vector<std::unique_ptr<Chunk>> chunks_;  // every chunk (owner)
  mutable std::vector<Chunk*> batch_;  // the worker's (or drain's) batch, reused
  bool stop_ = false;
  mutable std::atomic<std::uint64_t> dropped_{0};
  const bool inline_feed_;
  const bool answers_;
  mutable AnswerBoard board_;  // written by the feeder (worker, drain), read by on_alloc
  std::thread worker_;
};

}  // namespace timeshare::predict
