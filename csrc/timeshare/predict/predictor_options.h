// PredictorOptions: every knob of the lifespan predictors, with units in the names.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace timeshare::predict {

inline constexpr std::size_t kDefaultHistoryBytes = std::size_t{8} << 20;   // 8 MiB ring
inline constexpr int kDefaultHidden = 32;                 // LSTM hidden units
inline constexpr int kDefaultHeadHidden = 16;             // MLP head hidden units
inline constexpr int kDefaultContextK = 4;                // previous allocation sizes in a key
inline constexpr int kMaxContextK = 8;
inline constexpr std::uint64_t kDefaultRetrainIntervalEvents = 40000;  // allocator ticks
inline constexpr std::uint64_t kDefaultMinTrainSamples = 1500;         // labelled allocations
inline constexpr std::uint64_t kDefaultRetrainBackoffMax = 16;  // x the interval, at most
inline constexpr double kDefaultDriftThreshold = 0.10;    // drop in rolling within-2x share
inline constexpr std::uint64_t kDefaultDriftWindowFrees = 1000;
inline constexpr int kDefaultBpttSteps = 48;              // loss-carrying steps per window
inline constexpr int kDefaultLagAllocs = 16;              // head reads h from >= this many allocs ago
inline constexpr int kDefaultTrainSteps = 120;            // Adam steps per (re)training
inline constexpr int kDefaultTrainBatchWindows = 4;       // windows averaged per Adam step
inline constexpr float kDefaultLearningRate = 3e-3f;
inline constexpr float kDefaultClipNorm = 1.0f;
inline constexpr std::size_t kDefaultTableEntries = std::size_t{1} << 16;
inline constexpr int kDefaultTrainerNice = 19;            // lowest priority (Linux)
inline constexpr int kDefaultPretrainedGateStart = 0;     // tuning set and synthetic traces (docs/predictor.md)

struct PredictorOptions {
  // "hybrid" (default: pretrained LSTM when its weights load), "hybrid_scratch" (LSTM from
  // scratch), "hybrid_nolstm" (use_lstm = false), "lstm" (from scratch), "lstm_pre", "table",
  // "last_size", "size_mean", "prev_iter", "constant", "oracle".
  std::string kind = "hybrid";
  std::size_t history_bytes = kDefaultHistoryBytes;
  int hidden = kDefaultHidden;
  int head_hidden = kDefaultHeadHidden;
  int context_k = kDefaultContextK;
  std::size_t table_entries = kDefaultTableEntries;   // per context table (power of two)
  std::uint64_t retrain_interval_events = kDefaultRetrainIntervalEvents;
  // Scheduled retrainings back off, twice as long each time up to this many intervals, until a
  // drift (1 = every interval).
  std::uint64_t retrain_backoff_max = kDefaultRetrainBackoffMax;
  std::uint64_t min_train_samples = kDefaultMinTrainSamples;
  double drift_threshold = kDefaultDriftThreshold;
  std::uint64_t drift_window_frees = kDefaultDriftWindowFrees;
  int bptt_steps = kDefaultBpttSteps;
  int lag_allocs = kDefaultLagAllocs;
  int train_steps = kDefaultTrainSteps;
  int train_batch_windows = kDefaultTrainBatchWindows;
  float learning_rate = kDefaultLearningRate;
  float clip_norm = kDefaultClipNorm;
  std::uint64_t constant_lifespan_events = 64;   // the "constant" baseline's answer
  std::uint64_t seed = 1;
  // Replays: training runs synchronously at the allocation where it is due, and the LSTM state
  // advances synchronously every lag_allocs allocations, so one trace gives one set of figures.
  bool deterministic = false;
  // Real time: the trainer thread's nice value (Linux; 0 = the process's own priority). High
  // by default so that on a loaded machine the allocating threads get the cores first.
  int trainer_nice = kDefaultTrainerNice;
  // false: the hybrid without its LSTM (no features, no history, no trainer thread): the table
  // and the aligned twin only. The ablation in docs/predictor.md; also the cheap hot path.
  bool use_lstm = true;
  // Pretrained LSTM weights (pretrained.h): "" = $TIMESHARE_LSTM_WEIGHTS, else the shipped file
  // beside the library; "none" = from scratch; else a path. Kinds "hybrid_scratch" and "lstm"
  // ignore it (from scratch), "lstm_pre" is the LSTM alone from these weights.
  std::string lstm_weights;
  // With pretrained weights loaded: where the global gate (LSTM vs table on contexts the table
  // knows only in part) starts, in [-kGlobalGateMax, kGlobalGateMax]; > 0 lets the LSTM answer
  // there until the table has been right more often. From scratch it starts at 0.
  int pretrained_gate_start = kDefaultPretrainedGateStart;
};

}  // namespace timeshare::predict
