#include "timeshare/predict/lstm_trainer.h"

#include <algorithm>
#include <cmath>

#ifdef __linux__
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace timeshare::predict {

namespace {
constexpr std::uint64_t kTrainSeedStride = 0x9e3779b97f4a7c15ull;
constexpr int kStateAdvanceEverySteps = 4;   // real time: keep the state fresh while training
}  // namespace

LstmTrainer::LstmTrainer(const PredictorOptions& opt, int features)
    : opt_(opt),
      shape_{features, std::max(opt.hidden, 1), std::max(opt.head_hidden, 1)},
      ring_(opt.history_bytes, features),
      ring_bytes_(ring_.bytes_reserved()),
      h_(shape_.hidden, 0.0f),
      c_(shape_.hidden, 0.0f),
      z_(4 * shape_.hidden, 0.0f),
      h_pub_(new std::atomic<float>[shape_.hidden]) {
  for (int k = 0; k < shape_.hidden; ++k) h_pub_[k].store(0.0f, std::memory_order_relaxed);
}

LstmTrainer::~LstmTrainer() {
  if (thread_.joinable()) {
    stop_.store(true);
    {
      std::lock_guard<std::mutex> lk(cv_mu_);
    }
    cv_.notify_all();
    thread_.join();
  }
}

bool LstmTrainer::start_from(const LstmParams<float>& pretrained) {
  if (pretrained.shape.input != shape_.input || pretrained.shape.hidden != shape_.hidden ||
      pretrained.shape.head_hidden != shape_.head_hidden ||
      pretrained.p.size() != shape_.param_count()) {
    return false;
  }
  params_ = pretrained.p;
  adam_ = std::make_unique<Adam>(params_.size(), opt_.learning_rate);
  train_count_ = 1;
  auto model = std::make_shared<LstmModel>();
  model->params = LstmParams<float>{shape_, params_};
  model->generation = train_count_;
  current_ = model;
  {
    std::lock_guard<std::mutex> lk(model_mu_);
    published_ = model;
  }
  generation_.store(train_count_, std::memory_order_release);
  pretrained_ = true;
  return true;
}

void LstmTrainer::start_thread() {
  if (!thread_.joinable()) thread_ = std::thread([this] { thread_main(); });
}

void LstmTrainer::thread_main() {
#ifdef __linux__
  // Lowest priority: when cores are scarce the allocating threads run, not the trainer.
  // (Best effort; an error leaves the default priority.)
  if (opt_.trainer_nice != 0) {
    setpriority(PRIO_PROCESS, static_cast<id_t>(syscall(SYS_gettid)), opt_.trainer_nice);
  }
#endif
  while (!stop_.load()) {
    {
      std::unique_lock<std::mutex> lk(cv_mu_);
      cv_.wait_for(lk, kStatePoll, [&] { return stop_.load() || train_requested_.load(); });
    }
    if (stop_.load()) break;
    // A request waits (stays set) while the trainer owes idle time for its last training.
    if (train_requested_.load() && std::chrono::steady_clock::now() >= next_train_at_) {
      train_requested_.store(false);
      const auto t0 = std::chrono::steady_clock::now();
      train_now();
      const auto t1 = std::chrono::steady_clock::now();
      next_train_at_ = t1 + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                (t1 - t0) * kTrainIdleFactor);
    }
    advance_state();
  }
}

bool LstmTrainer::flush(HistoryStaging* st, bool may_block) {
  {
    std::unique_lock<std::mutex> lk(inbox_mu_, std::defer_lock);
    if (may_block) {
      lk.lock();
    } else if (!lk.try_lock()) {
      return false;
    }
    if (inbox_.allocs.size() + st->allocs.size() > kMaxStagedAllocs) {
      inbox_.allocs.clear();   // the trainer fell far behind: drop, the ring sees a gap
      inbox_.labels.clear();
    }
    inbox_.allocs.insert(inbox_.allocs.end(), st->allocs.begin(), st->allocs.end());
    inbox_.labels.insert(inbox_.labels.end(), st->labels.begin(), st->labels.end());
  }
  st->allocs.clear();
  st->labels.clear();
  if (may_block) drain();
  return true;
}

void LstmTrainer::drain() {
  {
    std::lock_guard<std::mutex> lk(inbox_mu_);
    if (inbox_.allocs.empty() && inbox_.labels.empty()) return;
    std::swap(inbox_.allocs, draining_.allocs);
    std::swap(inbox_.labels, draining_.labels);
  }
  drain_x_.resize(std::size_t(shape_.input));
  for (const StagedAlloc& a : draining_.allocs) {
    compute_features(a.raw, drain_x_.data());
    ring_.append(a.seq, drain_x_.data());
  }
  for (const auto& [seq, l2] : draining_.labels) ring_.set_label(seq, l2);
  labels_seen_.store(ring_.labels_set(), std::memory_order_relaxed);
  draining_.allocs.clear();
  draining_.labels.clear();
}

void LstmTrainer::request_training() {
  train_requested_.store(true);
  cv_.notify_one();
}

bool LstmTrainer::try_get_model(std::shared_ptr<const LstmModel>* out) {
  std::unique_lock<std::mutex> lk(model_mu_, std::try_to_lock);
  if (!lk.owns_lock()) return false;
  *out = published_;
  return true;
}

std::uint64_t LstmTrainer::read_state(float* h) const noexcept {
  const std::uint64_t seq = state_seq_.load(std::memory_order_acquire);
  for (int k = 0; k < shape_.hidden; ++k) h[k] = h_pub_[k].load(std::memory_order_relaxed);
  return seq;
}

void LstmTrainer::publish_state() {
  for (int k = 0; k < shape_.hidden; ++k) h_pub_[k].store(h_[k], std::memory_order_relaxed);
  state_seq_.store(state_next_seq_, std::memory_order_release);
}

void LstmTrainer::run_state(const LstmModel& m, const HistorySlice& s, std::size_t from) {
  const int F = shape_.input;
  for (std::size_t i = from; i < s.count; ++i) {
    lstm_step(m.params, &s.x[i * F], h_.data(), c_.data(), z_.data());
  }
  state_next_seq_ = s.first_seq + s.count;
}

void LstmTrainer::advance_state() {
  if (!opt_.deterministic) drain();
  if (!current_) return;
  std::uint64_t from = state_next_seq_;
  // Real time, far behind: restart from zero over the last burn-in's worth of allocations.
  const std::uint64_t burn = 2 * std::uint64_t(std::max(opt_.lag_allocs, 1));
  if (!opt_.deterministic && ring_.end_seq() > from + burn) from = ring_.end_seq() - burn;
  HistorySlice& s = state_slice_;
  ring_.copy_from(from, &s);
  if (s.count == 0) return;
  if (s.first_seq != state_next_seq_) {  // fell behind the ring (or skipped): start over
    std::fill(h_.begin(), h_.end(), 0.0f);
    std::fill(c_.begin(), c_.end(), 0.0f);
  }
  run_state(*current_, s, 0);
  publish_state();
}

bool LstmTrainer::train_now() {
  const auto t0 = std::chrono::steady_clock::now();
  HistorySlice s;
  ring_.copy_from(0, &s);
  std::size_t labelled = 0;
  double sum = 0.0;
  std::vector<std::uint8_t> has(s.count, 0);
  std::vector<float> target(s.count, 0.0f);
  for (std::size_t i = 0; i < s.count; ++i) {
    if (!std::isnan(s.label[i])) {
      has[i] = 1;
      target[i] = s.label[i];
      sum += s.label[i];
      ++labelled;
    }
  }
  if (labelled < opt_.min_train_samples || labelled == 0) return false;

  if (params_.empty()) {
    params_ = init_lstm<float>(shape_, opt_.seed, float(sum / double(labelled))).p;
    adam_ = std::make_unique<Adam>(params_.size(), opt_.learning_rate);
  }
  LstmParams<float> work{shape_, params_};
  std::mt19937_64 rng(opt_.seed + kTrainSeedStride * (train_count_ + 1));
  const int lag_max = std::max(opt_.lag_allocs, 1);
  const int burn = 2 * lag_max;
  const int window = int(std::min<std::size_t>(std::size_t(burn + opt_.bptt_steps), s.count));
  std::uniform_int_distribution<int> lag_dist(1, lag_max);
  std::uniform_int_distribution<std::size_t> start_dist(0, s.count - std::size_t(window));
  std::vector<float> grad(params_.size(), 0.0f);
  std::vector<std::uint8_t> mask(window);
  double loss_sum = 0.0;
  std::size_t loss_n = 0;
  for (int step = 0; step < opt_.train_steps; ++step) {
    std::fill(grad.begin(), grad.end(), 0.0f);
    std::size_t masked = 0;
    double loss = 0.0;
    for (int b = 0; b < opt_.train_batch_windows; ++b) {
      const int lag = lag_dist(rng);
      const std::size_t start = start_dist(rng);
      for (int t = 0; t < window; ++t) {
        mask[t] = (t >= burn || window < burn + 1) && has[start + t];
        masked += mask[t];
      }
      loss += lstm_window_loss_grad<float>(work, &s.x[start * s.features], &target[start],
                                           mask.data(), window, lag, &grad);
    }
    if (masked == 0) continue;
    const float inv = 1.0f / float(masked);
    for (float& g : grad) g *= inv;
    clip_grad_norm(&grad, opt_.clip_norm);
    adam_->step(&work.p, grad);
    if (step >= opt_.train_steps / 2) {
      loss_sum += loss / double(masked);
      ++loss_n;
    }
    if (!opt_.deterministic && step % kStateAdvanceEverySteps == 0) {
      advance_state();
      if (stop_.load()) return false;
    }
  }
  params_ = work.p;
  ++train_count_;

  auto model = std::make_shared<LstmModel>();
  model->params = work;
  model->generation = train_count_;
  model->train_loss = loss_n ? loss_sum / double(loss_n) : 0.0;
  current_ = model;
  // Re-run the recent allocations through the new weights so the state matches them.
  {
    HistorySlice recent;
    const std::uint64_t end = ring_.end_seq();
    ring_.copy_from(end > kStateWarmupAllocs ? end - kStateWarmupAllocs : 0, &recent);
    std::fill(h_.begin(), h_.end(), 0.0f);
    std::fill(c_.begin(), c_.end(), 0.0f);
    run_state(*model, recent, 0);
  }
  publish_state();
  {
    std::lock_guard<std::mutex> lk(model_mu_);
    published_ = model;
  }
  generation_.store(train_count_, std::memory_order_release);
  retrains_.fetch_add(1, std::memory_order_relaxed);
  last_train_ms_.store(
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
      std::memory_order_relaxed);
  return true;
}

}  // namespace timeshare::predict
