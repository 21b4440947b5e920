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

void FeatureExtractor::extract(const AllocEvent& e, float table_log2, int table_level,
                               int table_levels, std::uint32_t occurrence, float* out) {
  if (!have_prev_) first_stream_ = e.stream;
  const double bytes = double(std::max<std::size_t>(e.bytes, 1));
  out[0] = fast_log2(bytes) * kLog2Scale;
  const std::uint64_t h = mix64(e.bytes);
  for (int k = 0; k < kSizeSignatureDims; ++k) {
    out[1 + k] = ((h >> k) & 1) ? kSignatureMagnitude : -kSignatureMagnitude;
  }
  out[9] = e.stream != first_stream_ ? 1.0f : 0.0f;
  const std::uint64_t period = detector_.period();
  if (period > 0) {
    // The detector has not seen this allocation yet: its position is one past the last.
    const double pos = double((detector_.position() + 1) % period);
    const double frac = pos / double(period);
    out[10] = 1.0f;
    const int idx = std::min(int(frac * kPhaseTableSize), kPhaseTableSize - 1);
    out[11] = kPhase.sin_[idx];
    out[12] = kPhase.cos_[idx];
    out[13] = float(frac);
  } else {
    out[10] = out[11] = out[12] = out[13] = 0.0f;
  }
  const double dt = have_prev_ && e.now_us >= prev_us_ ? double(e.now_us - prev_us_) : 0.0;
  out[14] = fast_log2(1.0 + dt) * kCountScale;
  const float prev_log2 = fast_log2(double(std::max<std::uint64_t>(prev_bytes_, 1)));
  out[15] = have_prev_ ? std::clamp((fast_log2(bytes) - prev_log2) * kCountScale, -1.0f, 1.0f)
                       : 0.0f;
  out[16] = fast_log2(1.0 + double(std::max<std::int64_t>(live_, 0))) * kCountScale;
  out[17] = std::min(fast_log2(1.0 + double(frees_since_alloc_)) * kFreeRunScale, 1.0f);
  if (table_level >= 0) {
    out[18] = table_log2 * kLog2Scale;
    out[19] = float(table_level + 1) / float(std::max(table_levels, 1));
  } else {
    out[18] = out[19] = 0.0f;
  }
  out[20] = period > 0 ? std::min(fast_log2(1.0 + occurrence) * kFreeRunScale, 1.0f) : 0.0f;
  detector_.push(e.bytes);
  have_prev_ = true;
  prev_bytes_ = e.bytes;
  prev_us_ = e.now_us;
  ++live_;
  frees_since_alloc_ = 0;
}

}  // namespace timeshare::predict
