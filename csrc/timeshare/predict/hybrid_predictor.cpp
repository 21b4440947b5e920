#include "timeshare/predict/hybrid_predictor.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "timeshare/predict/pretrained.h"

namespace timeshare::predict {

namespace {
constexpr float kWithin2xLog2 = 1.0f;
constexpr float kMaxAnswerLog2 = 40.0f;
constexpr std::uint64_t kMeanWindowFrees = 1024;

inline std::uint64_t to_ticks(float log2_life) {
  const double v = std::exp2(double(std::clamp(log2_life, 0.0f, kMaxAnswerLog2)));
  return std::max<std::uint64_t>(1, std::uint64_t(std::llround(v)));
}

// Answers and lifespans repeat (a periodic program): exp2/llround of the same float and log2 of
// the same tick count come back again and again; memoised exactly (DirectMemo).
inline std::uint32_t float_bits(float f) noexcept {
  std::uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}
}  // namespace

HybridPredictor::HybridPredictor(const PredictorOptions& opt, bool lstm_only)
    : opt_(opt),
      lstm_only_(lstm_only),
      use_lstm_(opt.use_lstm || lstm_only),
      table_(opt.context_k, opt.table_entries),
      trainer_(opt, kFeatureCount),
      h_(std::max(opt.hidden, 1), 0.0f),
      head_scratch_(std::max(opt.head_hidden, 1), 0.0f) {
  staging_.allocs.reserve(std::size_t(std::max(opt.lag_allocs, 1)) * 2);
  if (use_lstm_) {
    const WeightsLoad w = load_pretrained(opt.lstm_weights, trainer_.shape(), kFeatureSetVersion);
    if (w.status == WeightsStatus::kLoaded && trainer_.start_from(w.params)) {
      global_gate_ = std::clamp(opt.pretrained_gate_start, -kGlobalGateMax, kGlobalGateMax);
    }
  }
  if (!opt_.deterministic && use_lstm_) trainer_.start_thread();
}

HybridPredictor::~HybridPredictor() = default;

void HybridPredictor::refresh_model() {
  const std::uint64_t g = trainer_.generation();
  if (g == model_generation_) return;
  std::shared_ptr<const LstmModel> m;
  if (!trainer_.try_get_model(&m) || !m) return;  // publisher busy: next allocation
  model_ = std::move(m);
  model_generation_ = g;
  reference_ = -1.0;
  since_publish_ = 0;
  below_run_ = 0;
}

float HybridPredictor::run_head(const float* x) {
  trainer_.read_state(h_.data());
  return lstm_head<float>(model_->params, h_.data(), x, head_scratch_.data());
}

ContextAnswer HybridPredictor::lookup_table(const ContextKeys& keys, ContextAnswer* plain,
                                            float* occ_log2, bool* occ_answer) {
  ContextAnswer ans = table_.lookup(keys);
  // The occurrence level (keys.levels == K + 2) against the plain contexts: a global counter of
  // which was within 2x more often decides whether the occurrence level may answer.
  // The plain contexts are looked up again only when the occurrence level answered.
  *occ_answer = ans.level == keys.levels - 1 && keys.levels > table_.context_k() + 1;
  *plain = ans;
  *occ_log2 = 0.0f;
  if (*occ_answer) {
    *occ_log2 = ans.full->last_log2;  // the occurrence-level entry that answered
    ContextKeys plain_keys = keys;
    plain_keys.levels = table_.context_k() + 1;
    *plain = table_.lookup(plain_keys);
    if (occurrence_gate_ < 0 && plain->level >= 0) ans = *plain;
  }
  return ans;
}

void HybridPredictor::stage_for_trainer(std::uint64_t seq, const RawAlloc& raw) {
  if (staging_.allocs.size() >= kMaxStagedAllocs) {  // trainer held the inbox too long: drop
    staging_.allocs.clear();
  }
  staging_.allocs.push_back({seq, raw});
  if (record_) record_->allocs.push_back({seq, raw});
}

bool HybridPredictor::consult_lstm(const RawAlloc& raw, const ContextAnswer& ans, Pending* p) {
  if (!lstm_only_ && p->full_known && ans.stable && ans.full->gate <= 0) return false;
  // Would the gate take the LSTM's answer? Otherwise the head runs only so that the gate
  // learns, and in real time only on every kGateSampleEvery-th such allocation.
  bool use_lstm = false;
  if (lstm_only_) {
    use_lstm = true;
  } else if (p->full_known) {
    use_lstm = ans.full->gate > 0;
  } else {
    use_lstm = ans.level < 0 || global_gate_ > 0;
  }
  if (use_lstm || opt_.deterministic || ++gate_sample_ % kGateSampleEvery == 0) {
    float x[kFeatureCount];  // computed here only when the head runs
    compute_features(raw, x);
    p->lstm_log2 = run_head(x);
    p->lstm_evaluated = true;
    ++lstm_evaluations_;
  }
  return use_lstm;
}

std::uint64_t HybridPredictor::on_alloc(const AllocEvent& e) {
  const std::uint64_t seq = seq_++;
  PeriodDetector& detector = features_.detector();
  const ContextKeys keys = table_.keys(e.bytes, e.stream, detector.cycle());
  // The period the twin is looked up with, before the detector sees this allocation.
  const std::uint64_t period = detector.alignment_period();
  // Every structure this allocation touches, loaded in parallel before the first probe.
  table_.prefetch(keys);
  aligned_.prefetch(seq, period);
  detector.prefetch_next(e.bytes);
  pending_.prefetch(e.alloc_id);
  RawAlloc raw;
  if (use_lstm_) raw = features_.capture(e, 0.0f, -1, keys.levels, table_.last_occurrence());
  // The detector's own work (scoring its candidates) overlaps the loads started above; nothing
  // below reads the detector.
  detector.push(e.bytes);

  ContextAnswer plain;
  float occ_log2 = 0.0f;
  bool occ_answer = false;
  const ContextAnswer ans = lookup_table(keys, &plain, &occ_log2, &occ_answer);
  AlignedAnswer al = aligned_.on_alloc(seq, keys.key[0], e.now_events, period);
  const AlignedAnswer sh = shape_.on_alloc(seq, e.now_events, period);
  // The shape detector's period overrides the size period (the sizes changed between
  // iterations, so the size period is a repeated layer's): the size twin is not one iteration
  // back, and the shape twin takes its place.
  if (shape_.overrides_size_period()) al.found = false;

  Pending p;
  p.seq = seq;
  p.alloc_tick = e.now_events;
  p.keys = keys;
  p.table_log2 = ans.log2_life;
  p.table_level = std::int8_t(ans.level);
  p.occ_compared = occ_answer && plain.level >= 0;
  p.occ_log2 = p.occ_compared ? occ_log2 : 0.0f;
  p.plain_log2 = plain.log2_life;
  p.aligned_log2 = al.log2_life;
  p.aligned_compared = al.found && !al.from_live && ans.level >= 0;
  p.shape_log2 = sh.log2_life;
  p.shape_compared = sh.found && !sh.from_live && ans.level >= 0 && !al.found;
  const AlignedAnswer* twin = lstm_only_ ? nullptr : pick_twin(al, sh, ans);
  if (!use_lstm_) return finish_alloc_without_lstm(e, twin, twin == &al, ans, &p);

  raw.table_log2 = ans.log2_life;
  raw.table_level = std::int16_t(ans.level);
  stage_for_trainer(seq, raw);

  refresh_model();
  p.full_known = ans.level == keys.levels - 1;
  const bool use_aligned = twin != nullptr;
  const bool use_lstm = !use_aligned && model_ && consult_lstm(raw, ans, &p);
  if (use_aligned) {
    p.answer_log2 = twin->log2_life;
    ++(twin == &al ? aligned_answers_ : shape_answers_);
  } else if (use_lstm) {
    p.answer_log2 = p.lstm_log2;
    ++lstm_answers_;
  } else if (ans.level >= 0) {
    p.answer_log2 = ans.log2_life;
    ++table_answers_;
  } else {
    p.answer_log2 = float(mean_log2_);
  }
  pending_.emplace(e.alloc_id, p);
  table_.push_size(e.bytes);
  ++predictions_;
  after_alloc_housekeeping(e.now_events);
  return ticks_memo_.get(float_bits(p.answer_log2), [&] { return to_ticks(p.answer_log2); });
}

// The twin one period back answers when it has been right more often than the table where they
// disagreed (or the table knows nothing); a live twin only raises a table answer below its age.
bool HybridPredictor::prefer_aligned(const AlignedAnswer& al, const ContextAnswer& ans) const {
  if (!al.found) return false;
  if (ans.level < 0) return true;
  if (aligned_gate_ <= 0) return false;
  return !al.from_live || ans.log2_life < al.log2_life - kWithin2xLog2;
}

// Without a size twin (the sizes changed: another sequence length), the shape twin answers when
// it has been right more often than the table where both answered without a size twin; then
// also where the table knows nothing. A live shape twin only raises a table answer below its age.
const AlignedAnswer* HybridPredictor::pick_twin(const AlignedAnswer& al, const AlignedAnswer& sh,
                                                const ContextAnswer& ans) const {
  if (prefer_aligned(al, ans)) return &al;
  if (al.found || !sh.found) return nullptr;
  if (shape_gate_ <= 0) return nullptr;
  if (ans.level < 0) return &sh;
  return !sh.from_live || ans.log2_life < sh.log2_life - kWithin2xLog2 ? &sh : nullptr;
}

std::uint64_t HybridPredictor::finish_alloc_without_lstm(const AllocEvent& e,
                                                         const AlignedAnswer* twin,
                                                         bool size_twin,
                                                         const ContextAnswer& ans, Pending* p) {
  if (twin) {
    p->answer_log2 = twin->log2_life;
    ++(size_twin ? aligned_answers_ : shape_answers_);
  } else if (ans.level >= 0) {
    p->answer_log2 = ans.log2_life;
    ++table_answers_;
  } else {
    p->answer_log2 = float(mean_log2_);
  }
  pending_.emplace(e.alloc_id, *p);
  table_.push_size(e.bytes);
  ++predictions_;
  return ticks_memo_.get(float_bits(p->answer_log2), [&] { return to_ticks(p->answer_log2); });
}

void HybridPredictor::after_alloc_housekeeping(std::uint64_t now_events) {
  const std::uint64_t every = std::uint64_t(std::max(opt_.lag_allocs, 1));
  if (seq_ % every != 0) return;
  const bool flushed = trainer_.flush(&staging_, opt_.deterministic);
  if (opt_.deterministic && flushed) trainer_.advance_state();

  bool due = train_pending_;
  if (!ever_requested_) {
    due = due || trainer_.labels_seen() >= opt_.min_train_samples;
  } else {
    due = due || now_events - last_train_tick_ >= interval_;
  }
  if (!due) return;
  // The schedule's back-off: after the first training or a drift's, the interval; after a
  // scheduled one (the only other reason to be due), twice the last, up to the cap.
  const std::uint64_t base = std::max<std::uint64_t>(opt_.retrain_interval_events, 1);
  const std::uint64_t most = base * std::max<std::uint64_t>(opt_.retrain_backoff_max, 1);
  const std::uint64_t next_interval =
      train_pending_ || !ever_requested_ ? base : std::min(interval_ * 2, most);
  const auto trained = [&] {
    ever_requested_ = true;
    train_pending_ = false;
    last_train_tick_ = now_events;
    interval_ = next_interval;
  };
  if (opt_.deterministic) {
    if (trainer_.train_now()) {
      trained();
      refresh_model();
    }
  } else {
    trainer_.request_training();
    trained();
  }
}

void HybridPredictor::on_free(const FreeEvent& e) {
  Pending p;
  if (!pending_.take(e.alloc_id, &p)) return;
  table_.prefetch(p.keys);
  aligned_.prefetch_learn(p.seq);
  features_.on_free();
  const std::uint64_t life = e.now_events > p.alloc_tick ? e.now_events - p.alloc_tick : 1;
  const float l2 = log2_memo_.get(life, [&] { return float(std::log2(double(life))); });
  const bool within = std::fabs(p.answer_log2 - l2) <= kWithin2xLog2;

  if (p.lstm_evaluated && p.table_level >= 0) {
    const int delta = int(std::fabs(p.lstm_log2 - l2) <= kWithin2xLog2) -
                      int(std::fabs(p.table_log2 - l2) <= kWithin2xLog2);
    if (p.full_known) {
      if (ContextEntry* fe = table_.find(p.keys.key[p.keys.levels - 1])) {
        fe->gate = std::int8_t(std::clamp(fe->gate + delta, -kGateMax, kGateMax));
      }
    } else {
      global_gate_ = std::clamp(global_gate_ + delta, -kGlobalGateMax, kGlobalGateMax);
    }
  }
  if (p.occ_compared) {
    const int delta = int(std::fabs(p.occ_log2 - l2) <= kWithin2xLog2) -
                      int(std::fabs(p.plain_log2 - l2) <= kWithin2xLog2);
    occurrence_gate_ = std::clamp(occurrence_gate_ + delta, -kGlobalGateMax, kGlobalGateMax);
  }
  if (p.aligned_compared) {
    const int delta = int(std::fabs(p.aligned_log2 - l2) <= kWithin2xLog2) -
                      int(std::fabs(p.table_log2 - l2) <= kWithin2xLog2);
    aligned_gate_ = std::clamp(aligned_gate_ + delta, -kGlobalGateMax, kGlobalGateMax);
  }
  if (p.shape_compared) {
    const int delta = int(std::fabs(p.shape_log2 - l2) <= kWithin2xLog2) -
                      int(std::fabs(p.table_log2 - l2) <= kWithin2xLog2);
    shape_gate_ = std::clamp(shape_gate_ + delta, -kGlobalGateMax, kGlobalGateMax);
  }
  aligned_.learn(p.seq, l2);
  shape_.learn(p.seq, l2);
  shape_.on_free(p.seq, seq_);
  table_.learn(p.keys, l2);
  if (use_lstm_) staging_.labels.emplace_back(p.seq, l2);
  if (record_) record_->labels.emplace_back(p.seq, l2);
  ++frees_;
  mean_log2_ += (double(l2) - mean_log2_) / double(std::min(frees_, kMeanWindowFrees));
  ++observed_;
  update_drift(within);
}

void HybridPredictor::update_drift(bool within) {
  const std::uint64_t window = std::max<std::uint64_t>(opt_.drift_window_frees, 1);
  const double alpha = 1.0 / double(std::min(observed_, window));
  rolling_ += alpha * ((within ? 1.0 : 0.0) - rolling_);
  if (!model_) return;
  ++since_publish_;
  // Reference: the best rolling share since the last training, once a full window is in.
  if (since_publish_ < window) return;
  reference_ = std::max(reference_, rolling_);
  if (rolling_ < reference_ - opt_.drift_threshold) {
    if (++below_run_ >= window) {
      ++drift_triggers_;
      train_pending_ = true;
      below_run_ = 0;
      reference_ = -1.0;
      since_publish_ = 0;
    }
  } else {
    below_run_ = 0;
  }
}

PredictorStats HybridPredictor::stats() const {
  PredictorStats s;
  s.predictions = predictions_;
  s.observed = observed_;
  s.rolling_within_2x = rolling_;
  s.retrains = trainer_.retrains();
  s.drift_triggers = drift_triggers_;
  s.last_train_ms = trainer_.last_train_ms();
  s.model_active = model_ != nullptr;
  return s;
}

}  // namespace timeshare::predict
