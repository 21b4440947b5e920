#include "timeshare/predict/pretrainer.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>

#include "timeshare/predict/features.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/pretrained.h"
#include "timeshare/predict/synthetic_trace.h"

namespace timeshare::predict {

namespace {
constexpr double kLastLossShare = 0.1;
constexpr double kLowLrShare = 0.75;   // the learning rate halves after this share of steps
}  // namespace

PretrainSequence record_sequence(const std::vector<trace::Event>& events,
                                 const PredictorOptions& base,
                                 const std::vector<std::uint64_t>& iteration_starts) {
  PredictorOptions o = base;
  o.kind = "lstm";
  o.deterministic = true;
  o.lstm_weights = kWeightsNone;
  o.min_train_samples = std::numeric_limits<std::uint64_t>::max();   // features only
  o.retrain_interval_events = std::numeric_limits<std::uint64_t>::max();
  HybridPredictor p(o, /*lstm_only=*/true);
  HistoryStaging sink;
  p.record_history(&sink);
  feed_trace(p, events);
  PretrainSequence s;
  s.count = sink.allocs.size();
  s.x.resize(s.count * kFeatureCount);
  s.label.assign(s.count, std::numeric_limits<float>::quiet_NaN());
  for (std::size_t i = 0; i < s.count; ++i) {
    compute_features(sink.allocs[i].raw, &s.x[i * kFeatureCount]);
  }
  for (const auto& [seq, l2] : sink.labels) {
    if (seq < s.count) s.label[seq] = l2;
  }
  std::vector<std::uint64_t> starts = iteration_starts;
  std::sort(starts.begin(), starts.end());
  if (starts.size() >= 2) {   // event indices -> allocation indices
    std::size_t allocs = 0;
    for (std::size_t i = 0; i < events.size() && i < starts[1]; ++i) {
      if (i == starts[0]) s.cold_begin = allocs;
      allocs += events[i].op == trace::Op::kAlloc;
    }
    s.cold_end = allocs;
  }
  return s;
}

PretrainResult pretrain_lstm(const std::vector<PretrainSequence>& seqs,
                             const PredictorOptions& base, const PretrainOptions& opt) {
  const LstmShape shape{kFeatureCount, std::max(base.hidden, 1), std::max(base.head_hidden, 1)};
  const int lag_max = std::max(base.lag_allocs, 1);
  const int burn = opt.burn_steps > 0 ? opt.burn_steps : 2 * lag_max;
  const int window = burn + std::max(base.bptt_steps, 1);
  PretrainResult r;
  double sum = 0.0;
  std::vector<std::size_t> usable;   // sequences long enough for one window
  std::vector<std::size_t> cold_usable;   // ... whose first iteration holds one
  for (std::size_t k = 0; k < seqs.size(); ++k) {
    for (float l : seqs[k].label) {
      if (!std::isnan(l)) {
        ++r.labelled;
        sum += l;
      }
    }
    if (seqs[k].count >= std::size_t(window)) usable.push_back(k);
    if (seqs[k].cold_end >= seqs[k].cold_begin + std::size_t(window) &&
        seqs[k].cold_end <= seqs[k].count) {
      cold_usable.push_back(k);
    }
  }
  r.params = init_lstm<float>(shape, opt.seed,
                              r.labelled ? float(sum / double(r.labelled)) : kDefaultLifespanLog2);
  if (usable.empty() || r.labelled == 0) return r;
  Adam adam(r.params.p.size(), opt.learning_rate);
  Adam adam_low(r.params.p.size(), opt.learning_rate * 0.5f);
  bool low = false;
  std::mt19937_64 rng(opt.seed);
  std::uniform_int_distribution<std::size_t> pick(0, usable.size() - 1);
  std::uniform_int_distribution<std::size_t> pick_cold(0, cold_usable.empty() ? 0 : cold_usable.size() - 1);
  std::uniform_real_distribution<double> coin(0.0, 1.0);
  std::uniform_int_distribution<int> lag_dist(1, lag_max);
  std::uniform_int_distribution<int> mask_dist(0, (1 << kSizeSignatureDims) - 1);
  std::vector<float> grad(r.params.p.size());
  std::vector<float> xs(std::size_t(window) * kFeatureCount), target(window);
  std::vector<std::uint8_t> mask(window);
  double last_sum = 0.0;
  std::size_t last_n = 0;
  const int last_from = opt.steps - std::max(1, int(double(opt.steps) * kLastLossShare));
  for (int step = 0; step < opt.steps; ++step) {
    if (!low && step >= int(double(opt.steps) * kLowLrShare)) low = true;
    std::fill(grad.begin(), grad.end(), 0.0f);
    std::size_t masked = 0;
    double loss = 0.0;
    for (int b = 0; b < opt.batch_windows; ++b) {
      const bool cold = !cold_usable.empty() && coin(rng) < opt.cold_share;
      const PretrainSequence& s = seqs[cold ? cold_usable[pick_cold(rng)] : usable[pick(rng)]];
      // A cold window: its loss steps (after the burn-in) inside [cold_begin, cold_end).
      const std::size_t lo = cold ? (s.cold_begin > std::size_t(burn) ? s.cold_begin - burn : 0) : 0;
      const std::size_t hi = cold ? s.cold_end - std::size_t(window) : s.count - std::size_t(window);
      std::uniform_int_distribution<std::size_t> start_dist(lo, std::max(lo, hi));
      const std::size_t start = start_dist(rng);
      const int lag = lag_dist(rng);
      const int flip = mask_dist(rng);
      std::copy_n(&s.x[start * kFeatureCount], xs.size(), xs.begin());
      if (opt.scramble_signature) {
        for (int t = 0; t < window; ++t) {
          for (int d = 0; d < kSizeSignatureDims; ++d) {
            if ((flip >> d) & 1) xs[std::size_t(t) * kFeatureCount + 1 + d] *= -1.0f;
          }
        }
      }
      for (int t = 0; t < window; ++t) {
        const float l = s.label[start + t];
        mask[t] = t >= burn && !std::isnan(l);
        target[t] = std::isnan(l) ? 0.0f : l;
        masked += mask[t];
      }
      loss += lstm_window_loss_grad<float>(r.params, xs.data(), target.data(), mask.data(),
                                           window, lag, &grad);
    }
    if (masked == 0) continue;
    const float inv = 1.0f / float(masked);
    for (float& g : grad) g *= inv;
    clip_grad_norm(&grad, base.clip_norm);
    (low ? adam_low : adam).step(&r.params.p, grad);
    if (step >= last_from) {
      last_sum += loss / double(masked);
      ++last_n;
    }
  }
  r.last_loss = last_n ? last_sum / double(last_n) : 0.0;
  return r;
}

}  // namespace timeshare::predict
