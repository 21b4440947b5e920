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

#include "timeshare/predict/history_ring.h"
#include "timeshare/predict/lstm.h"
#include "timeshare/predict/predictor_options.h"

namespace timeshare::predict {

inline constexpr auto kStatePoll = std::chrono::microseconds(500);
inline constexpr std::size_t kStateWarmupAllocs = 256;   // replayed with new weights
inline constexpr std::size_t kMaxStagedAllocs = 1 << 16;

struct LstmModel {
  LstmParams<float> params;
  std::uint64_t generation = 0;
  double train_loss = 0.0;   // mean Huber loss of the last training steps
};

// What the hot path accumulates between flushes into the ring.
struct HistoryStaging {
  std::uint64_t first_seq = 0;
  std::size_t count = 0;
  std::vector<float> x;                                   // count * features
  std::vector<std::pair<std::uint64_t, float>> labels;    // (seq, log2 lifespan)
};

class LstmTrainer {
 public:
  LstmTrainer(const PredictorOptions& opt, int features);
  ~LstmTrainer();
  LstmTrainer(const LstmTrainer&) = delete;
  LstmTrainer& operator=(const LstmTrainer&) = delete;

  void start_thread();   // real-time mode only

  // Moves staged entries into the ring. Real-time: try-lock (returns false and keeps the
  // staging when the trainer holds the ring). Deterministic: always succeeds.
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
  void run_state(const LstmModel& m, const HistorySlice& s, std::size_t from);
  void publish_state();

  const PredictorOptions opt_;
  const LstmShape shape_;

  mutable std::mutex ring_mu_;
  HistoryRing ring_;
  std::size_t ring_bytes_;

  std::mutex model_mu_;
  std::shared_ptr<const LstmModel> published_;
  std::atomic<std::uint64_t> generation_{0};

  // Trainer-side (thread or deterministic caller) state: never touched by the hot path.
  std::shared_ptr<const LstmModel> current_;
  std::vector<float> params_;
  std::unique_ptr<Adam> adam_;
  std::vector<float> h_, c_, z_;
  std::uint64_t state_next_seq_ = 0;
  std::uint64_t train_count_ = 0;

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
