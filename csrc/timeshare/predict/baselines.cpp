#include "timeshare/predict/baselines.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace timeshare::predict {

namespace {
constexpr float kWithin2xLog2 = 1.0f;
constexpr float kMaxAnswerLog2 = 40.0f;
constexpr std::uint64_t kMeanWindowFrees = 1024;
constexpr std::uint64_t kRollingWindowFrees = 1000;
constexpr float kUnknown = std::numeric_limits<float>::quiet_NaN();

inline std::uint64_t to_ticks(float log2_life) {
  const double v = std::exp2(double(std::clamp(log2_life, 0.0f, kMaxAnswerLog2)));
  return std::max<std::uint64_t>(1, std::uint64_t(std::llround(v)));
}
}  // namespace

std::uint64_t BaselinePredictor::on_alloc(const AllocEvent& e) {
  Pending p;
  p.seq = seq_++;
  p.tick = e.now_events;
  p.bytes = e.bytes;
  p.key = e.alloc_id;
  const float a = predict(e, &p);
  p.answer_log2 = std::isnan(a) ? float(mean_log2_) : a;
  *pending_.insert(e.alloc_id) = p;
  ++predictions_;
  return to_ticks(p.answer_log2);
}

void BaselinePredictor::on_free(const FreeEvent& e) {
  Pending p;
  if (!pending_.take(e.alloc_id, &p)) return;
  const std::uint64_t life = e.now_events > p.tick ? e.now_events - p.tick : 1;
  const float l2 = float(std::log2(double(life)));
  learn(p, l2);
  ++frees_;
  mean_log2_ += (double(l2) - mean_log2_) / double(std::min(frees_, kMeanWindowFrees));
  ++observed_;
  const bool within = std::fabs(p.answer_log2 - l2) <= kWithin2xLog2;
  rolling_ += ((within ? 1.0 : 0.0) - rolling_) / double(std::min(observed_, kRollingWindowFrees));
}

PredictorStats BaselinePredictor::stats() const {
  PredictorStats s;
  s.predictions = predictions_;
  s.observed = observed_;
  s.rolling_within_2x = rolling_;
  return s;
}

float LastSizePredictor::predict(const AllocEvent& e, Pending*) {
  auto it = last_.find(e.bytes);
  return it == last_.end() ? kUnknown : it->second;
}
void LastSizePredictor::learn(const Pending& p, float l2) { last_[p.bytes] = l2; }

float SizeMeanPredictor::predict(const AllocEvent& e, Pending*) {
  auto it = sum_.find(e.bytes);
  return it == sum_.end() ? kUnknown : float(it->second.first / double(it->second.second));
}
void SizeMeanPredictor::learn(const Pending& p, float l2) {
  auto& s = sum_[p.bytes];
  s.first += l2;
  ++s.second;
}

PrevIterPredictor::PrevIterPredictor()
    : life_by_seq_(kMaxPeriodAllocs, kUnknown), seq_tag_(kMaxPeriodAllocs, UINT64_MAX) {}

float PrevIterPredictor::predict(const AllocEvent& e, Pending* p) {
  float a = kUnknown;
  const std::uint64_t period = detector_.period();
  if (period > 0 && p->seq >= period) {
    const std::uint64_t prev = p->seq - period;
    const std::size_t slot = prev & (kMaxPeriodAllocs - 1);
    if (seq_tag_[slot] == prev) a = life_by_seq_[slot];
  }
  if (std::isnan(a)) {
    auto it = last_.find(e.bytes);
    if (it != last_.end()) a = it->second;
  }
  const std::size_t slot = p->seq & (kMaxPeriodAllocs - 1);
  seq_tag_[slot] = p->seq;
  life_by_seq_[slot] = kUnknown;
  detector_.push(e.bytes);
  return a;
}
void PrevIterPredictor::learn(const Pending& p, float l2) {
  const std::size_t slot = p.seq & (kMaxPeriodAllocs - 1);
  if (seq_tag_[slot] == p.seq) life_by_seq_[slot] = l2;
  last_[p.bytes] = l2;
}

TablePredictor::TablePredictor(const PredictorOptions& opt, bool use_cycle)
    : use_cycle_(use_cycle), table_(opt.context_k, opt.table_entries) {}

float TablePredictor::predict(const AllocEvent& e, Pending* p) {
  const ContextKeys k = table_.keys(e.bytes, e.stream, use_cycle_ ? detector_.cycle() : 0);
  if (use_cycle_) detector_.push(e.bytes);
  const ContextAnswer a = table_.lookup(k);
  *keys_.insert(p->seq) = k;
  table_.push_size(e.bytes);
  return a.level >= 0 ? a.log2_life : kUnknown;
}
void TablePredictor::learn(const Pending& p, float l2) {
  ContextKeys k;
  if (keys_.take(p.seq, &k)) table_.learn(k, l2);
}

AlignedPredictor::AlignedPredictor(const PredictorOptions& opt)
    : table_(opt.context_k, opt.table_entries) {}

float AlignedPredictor::predict(const AllocEvent& e, Pending* p) {
  const ContextKeys k = table_.keys(e.bytes, e.stream, detector_.cycle());
  const AlignedAnswer al = aligned_.on_alloc(p->seq, hash_combine(mix64(e.bytes), e.stream),
                                             e.now_events, detector_.alignment_period());
  detector_.push(e.bytes);
  const ContextAnswer a = table_.lookup(k);
  *keys_.insert(p->seq) = k;
  table_.push_size(e.bytes);
  if (al.found && !al.from_live) return al.log2_life;
  if (a.level >= 0 && !(al.found && a.log2_life < al.log2_life - kWithin2xLog2)) return a.log2_life;
  return al.found ? al.log2_life : kUnknown;
}
void AlignedPredictor::learn(const Pending& p, float l2) {
  aligned_.learn(p.seq, l2);
  ContextKeys k;
  if (keys_.take(p.seq, &k)) table_.learn(k, l2);
}

ConstantPredictor::ConstantPredictor(std::uint64_t ticks)
    : log2_(float(std::log2(double(std::max<std::uint64_t>(ticks, 1))))) {}

float OraclePredictor::predict(const AllocEvent&, Pending* p) {
  if (p->seq < truth_.size() && truth_[p->seq] > 0) return float(std::log2(double(truth_[p->seq])));
  return kUnknown;
}

}  // namespace timeshare::predict
