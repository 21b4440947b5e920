// predict/ — how long will this allocation live?
//
// PyTorch's allocator calls carry no tensor identity: only size, device and stream. Training
// is periodic, so the sequence of allocation events is a strong signal. A LifespanPredictor
// sees every allocation and every free, in order, and answers at each allocation with a
// predicted lifespan: the number of allocator clock ticks (allocate and deallocate calls)
// until that allocation is freed. It learns online: each free reveals a true lifespan.
//
// Nothing here knows about CUDA, pools or PyTorch.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

namespace timeshare::predict {

struct AllocEvent {
  std::uint64_t alloc_id = 0;     // unique per allocation; frees name it
  std::size_t bytes = 0;          // requested size
  std::uint64_t stream = 0;
  int device = 0;
  std::uint64_t now_events = 0;   // allocator clock at this allocate
  std::uint64_t now_us = 0;       // wall (or trace) time in microseconds
};

struct FreeEvent {
  std::uint64_t alloc_id = 0;
  std::uint64_t now_events = 0;
  std::uint64_t now_us = 0;
};

struct PredictorStats {
  std::uint64_t predictions = 0;
  std::uint64_t observed = 0;            // frees matched to a prediction
  double rolling_within_2x = 0.0;        // share of recent predictions within 2x of truth
  std::uint64_t retrains = 0;
  std::uint64_t drift_triggers = 0;
  double last_train_ms = 0.0;
  bool model_active = false;             // the LSTM (not the fallback) is answering
  // Behind AsyncPredictor: allocations the pool got an answer for from the board (the answer
  // published for their context), and allocations it got none for.
  std::uint64_t answered = 0;
  std::uint64_t unanswered = 0;
};

class LifespanPredictor {
 public:
  virtual ~LifespanPredictor() = default;
  virtual const char* name() const noexcept = 0;
  // Returns the predicted lifespan in clock ticks (>= 1), or 0 for "no prediction" (the
  // asynchronous feed, async_predictor.h, answers 0 and predicts on its own thread).
  virtual std::uint64_t on_alloc(const AllocEvent& e) = 0;
  // Reports a free. Unknown ids are ignored.
  virtual void on_free(const FreeEvent& e) = 0;
  virtual PredictorStats stats() const = 0;
};

}  // namespace timeshare::predict
