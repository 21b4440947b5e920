#include "timeshare/predict/synthetic_trace.h"

#include <algorithm>
#include <random>

#include "timeshare/predict/predictor.h"

namespace timeshare::predict {

namespace {
constexpr std::uint64_t kFloatBytes = 4;
constexpr int kSeqLenStep = 32;
constexpr int kNoiseMaxDelayEvents = 40;

class Builder {
 public:
  explicit Builder(std::uint64_t seed) : rng_(seed) {}

  std::uint64_t alloc(std::uint64_t bytes, std::uint32_t stream = 0) {
    tick();
    trace::Event e{};
    e.op = trace::Op::kAlloc;
    e.stream = stream;
    e.id = next_id_++;
    e.bytes = bytes;
    e.time_us = time_us_;
    bytes_.push_back(bytes);
    events_.push_back(e);
    return e.id;
  }
  void free(std::uint64_t id) {
    tick();
    trace::Event e{};
    e.op = trace::Op::kFree;
    e.id = id;
    e.bytes = bytes_[id];
    e.time_us = time_us_;
    events_.push_back(e);
  }
  void maybe_noise(double share) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    if (u(rng_) < share) {
      std::uniform_int_distribution<std::uint64_t> sz(1, 4096);
      std::uniform_int_distribution<int> delay(1, kNoiseMaxDelayEvents);
      noise_.push_back({alloc(sz(rng_) * 512), std::uint64_t(events_.size() + delay(rng_))});
    }
    for (std::size_t i = 0; i < noise_.size();) {
      if (noise_[i].second <= events_.size()) {
        free(noise_[i].first);
        noise_[i] = noise_.back();
        noise_.pop_back();
      } else {
        ++i;
      }
    }
  }
  void drain_noise() {
    for (auto& n : noise_) free(n.first);
    noise_.clear();
  }
  std::mt19937_64& rng() { return rng_; }
  std::vector<trace::Event> take() { return std::move(events_); }

 private:
  void tick() {
    std::uniform_int_distribution<int> dt(3, 20);
    time_us_ += dt(rng_);
  }
  std::mt19937_64 rng_;
  std::vector<trace::Event> events_;
  std::vector<std::uint64_t> bytes_;
  std::vector<std::pair<std::uint64_t, std::uint64_t>> noise_;
  std::uint64_t next_id_ = 0;
  std::uint64_t time_us_ = 0;
};
}  // namespace

trace::Trace make_synthetic_trace(const SyntheticTraceOptions& opt) {
  Builder b(opt.seed);
  for (int it = 0; it < opt.iterations; ++it) {
    const bool changed = opt.change_at_iteration >= 0 && it >= opt.change_at_iteration;
    const std::uint64_t hidden = changed ? opt.hidden * 3 / 2 : opt.hidden;
    const int layers = changed ? opt.layers + 3 : opt.layers;
    const int steps = std::max(1, (opt.seq_len_max - opt.seq_len_min) / kSeqLenStep);
    std::uniform_int_distribution<int> pick(0, opt.seq_len_max > opt.seq_len_min ? steps : 0);
    const std::uint64_t seq = std::uint64_t(opt.seq_len_min + kSeqLenStep * pick(b.rng()));
    const std::uint64_t act = seq * hidden * kFloatBytes;

    std::vector<std::vector<std::uint64_t>> acts(layers);
    const std::uint64_t input = b.alloc(act);
    for (int l = 0; l < layers; ++l) {
      for (int a = 0; a < opt.acts_per_layer; ++a) {
        acts[l].push_back(b.alloc(act * std::uint64_t(1 + (a % 3))));
        b.maybe_noise(opt.noise_share);
      }
      const std::uint64_t ws = b.alloc(act / 2 + 4096 * std::uint64_t(l % 2));
      b.free(ws);
    }
    const std::uint64_t loss = b.alloc(512);
    std::uint64_t grad_out = b.alloc(act);
    b.free(loss);
    std::vector<std::uint64_t> weight_grads;
    for (int l = layers - 1; l >= 0; --l) {
      const std::uint64_t grad_in = b.alloc(act);
      for (int a = opt.acts_per_layer - 1; a >= 0; --a) {
        const std::uint64_t tmp = b.alloc(act * std::uint64_t(1 + (a % 3)));
        b.free(acts[l][a]);
        b.free(tmp);
        b.maybe_noise(opt.noise_share);
      }
      weight_grads.push_back(b.alloc(hidden * hidden * kFloatBytes * std::uint64_t(1 + l % 3)));
      b.free(grad_out);
      grad_out = grad_in;
    }
    b.free(grad_out);
    b.free(input);
    for (std::size_t g = 0; g < weight_grads.size(); ++g) {
      const std::uint64_t tmp = b.alloc(hidden * hidden * kFloatBytes);
      b.free(tmp);
    }
    for (std::uint64_t g : weight_grads) b.free(g);
  }
  b.drain_noise();
  trace::Trace t;
  t.name = "synthetic";
  t.events = b.take();
  std::size_t allocs = 0;
  for (const auto& e : t.events) allocs += e.op == trace::Op::kAlloc;
  t.allocs = allocs;
  return t;
}

std::vector<std::uint64_t> true_lifespans(const std::vector<trace::Event>& events) {
  std::vector<std::uint64_t> at, life;
  for (std::size_t i = 0; i < events.size(); ++i) {
    const trace::Event& e = events[i];
    if (e.op == trace::Op::kAlloc) {
      if (e.id >= at.size()) {
        at.resize(e.id + 1, 0);
        life.resize(e.id + 1, 0);
      }
      at[e.id] = i;
    } else if (e.id < at.size()) {
      life[e.id] = std::max<std::uint64_t>(i - at[e.id], 1);
    }
  }
  return life;
}

std::vector<std::uint64_t> feed_trace(LifespanPredictor& p, const std::vector<trace::Event>& events,
                                      std::size_t max_events) {
  std::vector<std::uint64_t> answers;
  for (std::size_t i = 0; i < events.size() && i < max_events; ++i) {
    const trace::Event& e = events[i];
    if (e.op == trace::Op::kAlloc) {
      AllocEvent a;
      a.alloc_id = e.id;
      a.bytes = e.bytes;
      a.stream = e.stream;
      a.now_events = i;
      a.now_us = e.time_us;
      answers.push_back(p.on_alloc(a));
    } else {
      p.on_free({e.id, i, e.time_us});
    }
  }
  return answers;
}

}  // namespace timeshare::predict
