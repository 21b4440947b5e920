// FeatureExtractor: the LSTM's input vector for one allocation (kFeatureCount floats, ~[-1, 1]).
//
//   [0]      log2(bytes) / 32                      size scale
//   [1..8]   +-0.5 signature of hash(bytes)        exact-size identity (hashed, no table)
//   [9]      stream is not the trace's first one
//   [10]     a training period is detected
//   [11,12]  sin, cos of 2*pi*position/period      position in the iteration
//   [13]     position / period
//   [14]     log2(1 + us since the last allocation) / 16
//   [15]     log2(bytes / previous bytes) / 16     size delta
//   [16]     log2(1 + live allocations) / 16
//   [17]     log2(1 + frees since the last allocation) / 8   (backward releases in runs)
//   [18]     context table's answer, log2 / 32 (0 when unknown)
//   [19]     context table's level (k + 1) / levels (0 when unknown)
//   [20]     log2(1 + occurrence of this size in the iteration) / 8 (0 without a period)
// Why these: see docs/predictor.md (ablation on the synthetic and real traces).
#pragma once

#include <cstdint>

#include "timeshare/predict/period_detector.h"
#include "timeshare/predict/predictor.h"

namespace timeshare::predict {

inline constexpr int kFeatureCount = 21;
// Bumped whenever a feature's meaning, scale or order changes: pretrained weights
// (pretrained.h) carry the version they were trained on and are refused on any other.
inline constexpr std::uint32_t kFeatureSetVersion = 1;
inline constexpr int kSizeSignatureDims = 8;

// Everything the features of one allocation are computed from, captured on the hot path (a few
// stores); the floats are computed from it later, off the hot path (compute_features), except
// when the hot path itself runs the LSTM head.
struct RawAlloc {
  std::uint64_t bytes = 0;
  std::uint64_t prev_bytes = 0;        // 0: no previous allocation
  std::uint64_t dt_us = 0;             // since the previous allocation
  std::uint64_t period = 0;            // detector's period before this allocation (0: none)
  std::uint64_t position = 0;          // this allocation's position in the period
  std::uint64_t live = 0;              // live allocations before this one
  std::uint64_t frees_since_alloc = 0;
  float table_log2 = 0.0f;
  std::int16_t table_level = -1;
  std::int16_t table_levels = 0;
  std::uint32_t occurrence = 0;
  bool other_stream = false;           // not the first stream seen
  bool have_prev = false;
};

// The features of one allocation (out[kFeatureCount]); a pure function of `r`.
void compute_features(const RawAlloc& r, float* out) noexcept;

class FeatureExtractor {
 public:
  // Call on each allocation before the detector sees it; fills out[kFeatureCount].
  void extract(const AllocEvent& e, float table_log2, int table_level, int table_levels,
               std::uint32_t occurrence, float* out);
  // The same without computing the floats and without pushing to the detector (the caller
  // does): extract() == capture() + compute_features() + detector().push(e.bytes).
  RawAlloc capture(const AllocEvent& e, float table_log2, int table_level, int table_levels,
                   std::uint32_t occurrence) noexcept;
  void on_free() noexcept { ++frees_since_alloc_; --live_; }

  PeriodDetector& detector() noexcept { return detector_; }
  const PeriodDetector& detector() const noexcept { return detector_; }

 private:
  PeriodDetector detector_;
  std::uint64_t first_stream_ = 0;
  bool have_prev_ = false;
  std::uint64_t prev_bytes_ = 0;
  std::uint64_t prev_us_ = 0;
  std::int64_t live_ = 0;
  std::uint64_t frees_since_alloc_ = 0;
};

}  // namespace timeshare::predict
