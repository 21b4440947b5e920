#include "timeshare/predict/features.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numbers>

#include "timeshare/predict/hashing.h"

namespace timeshare::predict {

namespace {
constexpr float kLog2Scale = 1.0f / 32.0f;
constexpr float kCountScale = 1.0f / 16.0f;
constexpr float kFreeRunScale = 1.0f / 8.0f;
constexpr float kSignatureMagnitude = 0.5f;

constexpr int kPhaseTableSize = 1024;

// log2 of x >= 1 from the float's exponent and a quadratic on the mantissa (|error| < 0.01):
// features need shape, not precision, and std::log2 costs ~10 ns each on the hot path.
inline float fast_log2(double v) {
  const float x = float(std::max(v, 1.0));
  std::uint32_t bits;
  std::memcpy(&bits, &x, sizeof bits);
  const float exponent = float(int((bits >> 23) & 0xff) - 127);
  bits = (bits & 0x007fffffu) | 0x3f800000u;
  float m;
  std::memcpy(&m, &bits, sizeof m);
  const float t = m - 1.0f;
  return exponent + t * (1.3465f - 0.3465f * t);
}

struct PhaseTable {
  float sin_[kPhaseTableSize];
  float cos_[kPhaseTableSize];
  PhaseTable() {
    for (int i = 0; i < kPhaseTableSize; ++i) {
      const double a = 2.0 * std::numbers::pi * double(i) / kPhaseTableSize;
      sin_[i] = float(std::sin(a));
      cos_[i] = float(std::cos(a));
    }
  }
};
const PhaseTable kPhase;
}  // namespace

RawAlloc FeatureExtractor::capture(const AllocEvent& e, float table_log2, int table_level,
                                   int table_levels, std::uint32_t occurrence) noexcept {
  if (!have_prev_) first_stream_ = e.stream;
  RawAlloc r;
  r.bytes = e.bytes;
  r.prev_bytes = prev_bytes_;
  r.have_prev = have_prev_;
  r.dt_us = have_prev_ && e.now_us >= prev_us_ ? e.now_us - prev_us_ : 0;
  r.other_stream = e.stream != first_stream_;
  r.period = detector_.period();
  // The detector has not seen this allocation yet: its position is one past the last.
  r.position = r.period > 0 ? (detector_.position() + 1) % r.period : 0;
  r.live = std::uint64_t(std::max<std::int64_t>(live_, 0));
  r.frees_since_alloc = frees_since_alloc_;
  r.table_log2 = table_log2;
  r.table_level = std::int16_t(table_level);
  r.table_levels = std::int16_t(table_levels);
  r.occurrence = occurrence;
  have_prev_ = true;
  prev_bytes_ = e.bytes;
  prev_us_ = e.now_us;
  ++live_;
  frees_since_alloc_ = 0;
  return r;
}

void FeatureExtractor::extract(const AllocEvent& e, float table_log2, int table_level,
                               int table_levels, std::uint32_t occurrence, float* out) {
  compute_features(capture(e, table_log2, table_level, table_levels, occurrence), out);
  detector_.push(e.bytes);
}

void compute_features(const RawAlloc& r, float* out) noexcept {
  const double bytes = double(std::max<std::size_t>(r.bytes, 1));
  out[0] = fast_log2(bytes) * kLog2Scale;
  const std::uint64_t h = mix64(r.bytes);
  for (int k = 0; k < kSizeSignatureDims; ++k) {
    out[1 + k] = ((h >> k) & 1) ? kSignatureMagnitude : -kSignatureMagnitude;
  }
  out[9] = r.other_stream ? 1.0f : 0.0f;
  const std::uint64_t period = r.period;
  if (period > 0) {
    const double pos = double(r.position);
    const double frac = pos / double(period);
    out[10] = 1.0f;
    const int idx = std::min(int(frac * kPhaseTableSize), kPhaseTableSize - 1);
    out[11] = kPhase.sin_[idx];
    out[12] = kPhase.cos_[idx];
    out[13] = float(frac);
  } else {
    out[10] = out[11] = out[12] = out[13] = 0.0f;
  }
  out[14] = fast_log2(1.0 + double(r.dt_us)) * kCountScale;
  const float prev_log2 = fast_log2(double(std::max<std::uint64_t>(r.prev_bytes, 1)));
  out[15] = r.have_prev ? std::clamp((fast_log2(bytes) - prev_log2) * kCountScale, -1.0f, 1.0f)
                        : 0.0f;
  out[16] = fast_log2(1.0 + double(r.live)) * kCountScale;
  out[17] = std::min(fast_log2(1.0 + double(r.frees_since_alloc)) * kFreeRunScale, 1.0f);
  if (r.table_level >= 0) {
    out[18] = r.table_log2 * kLog2Scale;
    out[19] = float(r.table_level + 1) / float(std::max<int>(r.table_levels, 1));
  } else {
    out[18] = out[19] = 0.0f;
  }
  out[20] = period > 0 ? std::min(fast_log2(1.0 + r.occurrence) * kFreeRunScale, 1.0f) : 0.0f;
}

}  // namespace timeshare::predict
