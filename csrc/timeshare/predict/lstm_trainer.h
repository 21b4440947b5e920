// LstmTrainer: owns the history ring, trains the LSTM on it and publishes results atomically.
//
// Two things are published to the hot path, both without making it wait:
//   * weights: an immutable LstmModel behind a shared_ptr, swapped under a mutex the hot path
//     only try-locks when `generation()` says there is something new (once per retraining);
//   * the recurrent state h after the newest allocation the trainer has consumed, as relaxed
//     atomics plus the sequence number it belongs to (`state_seq`). The hot path runs only the
//     head on that lagged state and the current features (see lstm.h).
// Real-time mode: a background thread advances the state every kStatePoll and retrains when
// asked (request_training). Deterministic mode: no thread; the predictor calls advance_state()
// and train_now() itself at fixed allocation counts, so a replay is reproducible bit for bit.
//
// The hot path stages raw allocation records (RawAlloc: a few integers), not features: flush()
// moves them into an inbox under a mutex it only try-locks, and the trainer side turns them
// into features and ring entries (drain). Deterministic mode drains inside flush.
// Real-time budget, so the trainer never takes a whole core from the allocating threads:
//   * state: when more than 2 * lag_allocs new allocations are waiting, the state restarts
//     from zero over the last 2 * lag_allocs of them (the burn-in the head is trained with)
//     instead of stepping through all of them;
//   * training: a requested (re)training waits until the trainer has been idle for
//     kTrainIdleFactor times the previous training's duration;
//   * the thread runs at nice PredictorOptions::trainer_nice (Linux): on a loaded machine the
//     scheduler gives the cores to the allocating threads first.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <memory>
#include <mutex>
#include <random>
#include <thread>
#include <utility>
#include <vector>

#include "timeshare/predict/features.h"
#include "timeshare/predict/history_ring.h"
#include "timeshare/predict/lstm.h"
#include "timeshare/predict/predictor_options.h"

namespace timeshare::predict {

inline constexpr auto kStatePoll = std::chrono::microseconds(500);
inline constexpr std::size_t kStateWarmupAllocs = 256;   // replayed with new weights
inline constexpr std::size_t kMaxStagedAllocs = 1 << 16;
inline constexpr double kTrainIdleFactor = 3.0;   // training: at most 1/4 of one core

struct LstmModel {
  LstmParams<float> params;
  std::uint64_t generation = 0;
  double train_loss = 0.0;   // mean Huber loss of the last training steps
};

// One allocation as staged by the hot path.
struct StagedAlloc {
  std::uint64_t seq = 0;
  RawAlloc raw;
};

// What the hot path accumulates between flushes into the trainer's inbox.
struct HistoryStaging {
  std::vector<StagedAlloc> allocs;
  std::vector<std::pair<std::uint64_t, float>> labels;    // (seq, log2 lifespan)
};

class LstmTrainer {
 public:
  LstmTrainer(const PredictorOptions& opt, int features);
  ~LstmTrainer();
  LstmTrainer(const LstmTrainer&) = delete;
  LstmTrainer& operator=(const LstmTrainer&) = delete;

  void start_thread();   // real-time mode only

  // Starts from pretrained weights (shape must be this trainer's): published at once as
  // generation 1, so the hot path answers from the first allocation; online (re)training
  // fine-tunes them. Call before the first flush. Returns false (and changes nothing) on a
  // shape mismatch.
  bool start_from(const LstmParams<float>& pretrained);
  bool pretrained() const noexcept { return pretrained_; }
  const LstmShape& shape() const noexcept { return shape_; }

  // Moves staged entries into the inbox (deterministic: and on into the ring). Real-time:
  // try-lock (returns false and keeps the staging when the trainer holds the inbox).
  bool flush(HistoryStaging* staging, bool may_block);

  void request_training();   // real-time: wakes the thread
  bool train_now();          // synchronous; false when the history has too few labels
  void advance_state();      // synchronous; consumes new ring entries

  std::uint64_t generation() const noexcept { return generation_.load(std::memory_order_acquire); }
  // Copies the newest model pointer; false if the publisher holds the lock right now.
  bool try_get_model(std::shared_ptr<const LstmModel>* out);
  // Copies the published state; returns the sequence number of the next allocation it has
  // not seen (0: none).
  std::uint64_t read_state(float* h) const noexcept;

  std::uint64_t retrains() const noexcept { return retrains_.load(std::memory_order_relaxed); }
  double last_train_ms() const noexcept { return last_train_ms_.load(std::memory_order_relaxed); }
  std::uint64_t labels_seen() const noexcept { return labels_seen_.load(std::memory_order_relaxed); }
  std::size_t history_bytes_reserved() const noexcept { return ring_bytes_; }
  int hidden() const noexcept { return shape_.hidden; }

 private:
  void thread_main();
  // Inbox -> features -> ring (trainer side).
  void drain();
  void run_state(const LstmModel& m, const HistorySlice& s, std::size_t from);
  void publish_state();

  const PredictorOptions opt_;
  const LstmShape shape_;

  // The inbox: the only thing the hot path and the trainer share besides the publications.
  std::mutex inbox_mu_;
  HistoryStaging inbox_;
  HistoryStaging draining_;   // trainer side: the inbox swapped out
  std::vector<float> drain_x_;

  // Trainer side only (thread, or the deterministic caller).
  HistoryRing ring_;
  std::size_t ring_bytes_;
  std::chrono::steady_clock::time_point next_train_at_{};

  std::mutex model_mu_;
  std::shared_ptr<const LstmModel> published_;
  std::atomic<std::uint64_t> generation_{0};

  // Trainer-side (thread or deterministic caller) state: never touched by the hot path.
  std::shared_ptr<const LstmModel> current_;
  std::vector<float> params_;
  std::unique_ptr<Adam> adam_;
  std::vector<float> h_, c_, z_;
  HistorySlice state_slice_;   // reused by advance_state
  std::uint64_t state_next_seq_ = 0;
  std::uint64_t train_count_ = 0;
  bool pretrained_ = false;

  std::unique_ptr<std::atomic<float>[]> h_pub_;
  std::atomic<std::uint64_t> state_seq_{0};

  std::atomic<std::uint64_t> retrains_{0};
  std::atomic<double> last_train_ms_{0.0};
  std::atomic<std::uint64_t> labels_seen_{0};

  std::mutex cv_mu_;
  std::condition_variable cv_;
  std::atomic<bool> train_requested_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace timeshare::predict
