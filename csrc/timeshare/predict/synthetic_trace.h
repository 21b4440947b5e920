// Synthetic periodic training traces for tests and for the evaluation tool before real traces
// exist: forward activations freed in reverse during backward, per-layer workspaces freed at
// once, weight gradients freed at the optimizer step, optimizer temporaries, random noise
// allocations, and optionally a sequence length that varies per iteration or a model whose
// shapes change at a given iteration (drift).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "timeshare/trace/events.h"

namespace timeshare::predict {

struct SyntheticTraceOptions {
  int iterations = 30;
  int layers = 8;
  int acts_per_layer = 4;
  std::uint64_t hidden = 1024;       // model width (elements)
  int seq_len_min = 256;             // tokens per iteration: uniform in [min, max], step 32
  int seq_len_max = 256;
  double noise_share = 0.02;         // chance per allocation of an extra random-size one
  int change_at_iteration = -1;      // from here on: wider model, more layers (drift)
  std::uint64_t seed = 7;
};

trace::Trace make_synthetic_trace(const SyntheticTraceOptions& opt);

// True lifespans (ticks = event index distance) per allocation id; 0 = never freed.
std::vector<std::uint64_t> true_lifespans(const std::vector<trace::Event>& events);

class LifespanPredictor;
// Feeds the first `max_events` of `events` to `p` in order, the event index as the clock;
// returns what on_alloc answered, one per allocation.
std::vector<std::uint64_t> feed_trace(LifespanPredictor& p, const std::vector<trace::Event>& events,
                                      std::size_t max_events = SIZE_MAX);

}  // namespace timeshare::predict
