// Pretrained LSTM weights: the file format, loading with a logged fallback, and where the
// shipped file is found.
//
// Cold start. An LSTM trained online from scratch has nothing to say until it has seen
// min_train_samples frees of the program at hand. The shipped weights were trained offline
// (csrc/tools/lstm_pretrain.cpp, scripts/corpus/pretrain.sh) on the tuning corpus of real
// training traces, on features that carry across models, so the LSTM answers from the first
// allocation; online (re)training then fine-tunes them from the rolling history.
//
// File (little endian): magic "TSLSTMW1" (8 bytes); u32 feature-set version (kFeatureSetVersion);
// i32 input, hidden, head_hidden; u64 parameter count; the float32 parameters (LstmShape's
// layout); u64 FNV-1a of every byte before it. A missing file, another feature-set version or
// shape, a short or corrupt file: the LSTM starts from scratch, with one log line per file and
// reason in the process.
#pragma once

#include <cstdint>
#include <string>

#include "timeshare/predict/lstm.h"

namespace timeshare::predict {

inline constexpr char kWeightsMagic[8] = {'T', 'S', 'L', 'S', 'T', 'M', 'W', '1'};
inline constexpr const char* kWeightsFileName = "lstm_pretrained.tsw";
inline constexpr const char* kWeightsEnv = "TIMESHARE_LSTM_WEIGHTS";
inline constexpr const char* kWeightsNone = "none";

enum class WeightsStatus : std::uint8_t { kLoaded, kDisabled, kMissing, kMismatch, kCorrupt };
const char* to_string(WeightsStatus s) noexcept;

struct WeightsLoad {
  WeightsStatus status = WeightsStatus::kMissing;
  std::string path;      // the file looked at ("" when disabled)
  std::string message;   // why not loaded (empty when loaded or disabled)
  LstmParams<float> params;
};

// Writes `m` in the format above (feature set `feature_set_version`); false with `error` set.
bool save_lstm_weights(const std::string& path, const LstmParams<float>& m,
                       std::uint32_t feature_set_version, std::string* error);

// Reads `path` and checks it against `expect` and `feature_set_version`. Never throws, never
// logs (load_pretrained does).
WeightsLoad read_lstm_weights(const std::string& path, const LstmShape& expect,
                              std::uint32_t feature_set_version);

// The file an option names: "" = $TIMESHARE_LSTM_WEIGHTS when set, else kWeightsFileName beside
// the shared library (or executable) holding this code; "none" = no file (from scratch).
std::string resolve_weights_path(const std::string& option);

// resolve + read + one warning line when a file was expected and not loaded (missing,
// mismatched or corrupt), once per (path, status) in the process; an info line when loaded.
WeightsLoad load_pretrained(const std::string& option, const LstmShape& expect,
                            std::uint32_t feature_set_version);

}  // namespace timeshare::predict
