// Offline pretraining of the LSTM on a corpus of traces (the weights shipped for cold start).
//
// record_sequence replays one trace through the hybrid predictor (LSTM never trained, so the
// replay is cheap) and keeps what its trainer would see: every allocation's features, exactly as
// computed online (context-table answer and level included), and its true log2 lifespan (NaN
// for blocks never freed). pretrain_lstm then trains one LSTM on windows drawn from all the
// sequences with the online trainer's loss, lags and burn-in (lstm_trainer.cpp), so the weights
// fit the hot path as it runs them. Each window's size-signature features (features.h, [1..8])
// have their signs flipped by a random mask: a size's hash names it within one program, not
// across programs, so the pretrained LSTM may use "the same signature as before", never a
// particular signature. Deterministic: the same sequences, options and binary give the same
// weights bit for bit.
#pragma once

#include <cstdint>
#include <vector>

#include "timeshare/predict/lstm.h"
#include "timeshare/predict/predictor_options.h"
#include "timeshare/trace/events.h"

namespace timeshare::predict {

struct PretrainSequence {
  std::size_t count = 0;        // allocations
  std::vector<float> x;         // count * kFeatureCount
  std::vector<float> label;     // count; NaN = never freed
  // The first marked iteration, as allocation indices [cold_begin, cold_end) (0, 0: unknown).
  std::size_t cold_begin = 0, cold_end = 0;
};

inline constexpr int kDefaultPretrainSteps = 10000;   // chosen on the tuning set (docs/predictor.md)
inline constexpr int kDefaultPretrainBatchWindows = 8;
inline constexpr float kDefaultPretrainLearningRate = 2e-3f;

struct PretrainOptions {
  int steps = kDefaultPretrainSteps;                   // Adam steps
  int batch_windows = kDefaultPretrainBatchWindows;    // windows averaged per step
  float learning_rate = kDefaultPretrainLearningRate;  // halved for the last quarter of steps
  std::uint64_t seed = 1;
  bool scramble_signature = true;
  // Share of windows whose loss steps lie in a sequence's first marked iteration (where the
  // table and the twins know least: the cold start the weights are for); 0 = uniform.
  double cold_share = 0.0;
  // Steps run before a window's first loss step (0: 2 * lag_allocs, as the online trainer):
  // longer burn-ins bring the training state closer to the one that runs from event 0.
  int burn_steps = 0;
};

struct PretrainResult {
  LstmParams<float> params;
  double last_loss = 0.0;      // mean Huber loss per labelled step over the last 10% of steps
  std::size_t labelled = 0;    // labelled allocations over all sequences
};

// `base` gives the LSTM's shape (hidden, head_hidden), context_k, lag_allocs and bptt_steps.
// `iteration_starts` (event indices, may be empty) sets the sequence's cold window.
PretrainSequence record_sequence(const std::vector<trace::Event>& events,
                                 const PredictorOptions& base,
                                 const std::vector<std::uint64_t>& iteration_starts = {});

PretrainResult pretrain_lstm(const std::vector<PretrainSequence>& seqs,
                             const PredictorOptions& base, const PretrainOptions& opt);

}  // namespace timeshare::predict
