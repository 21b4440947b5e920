// A small LSTM with a lagged MLP head, in plain loops: forward, truncated BPTT, Adam, clipping.
//
// Sequence model over allocation events x_0..x_{T-1} (F features each):
//   z_t = W [x_t ; h_{t-1}] + b              (4H rows: input, forget, cell, output gates)
//   c_t = f*c_{t-1} + i*g,  h_t = o*tanh(c_t)
//   y_t = w_y . relu(A [h_{t-lag} ; x_t] + a) + b_y      (predicted log2 lifespan)
// The head reads the recurrent state `lag` steps old, so the hot path needs only the head
// (G*(H+F) MACs) on a state that another thread (or a batched step) keeps up to date.
// Loss: Huber (delta 1) on log2 lifespan. All parameters live in one flat vector so Adam and
// clipping are single loops. Templated on the scalar so tests can check gradients in double.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

namespace timeshare::predict {

struct LstmShape {
  int input = 0;        // F
  int hidden = 0;       // H
  int head_hidden = 0;  // G

  int gate_cols() const noexcept { return input + hidden; }
  int head_cols() const noexcept { return hidden + input; }
  std::size_t off_w() const noexcept { return 0; }
  std::size_t off_b() const noexcept { return off_w() + std::size_t(4 * hidden) * gate_cols(); }
  std::size_t off_a() const noexcept { return off_b() + std::size_t(4 * hidden); }
  std::size_t off_ab() const noexcept { return off_a() + std::size_t(head_hidden) * head_cols(); }
  std::size_t off_wy() const noexcept { return off_ab() + std::size_t(head_hidden); }
  std::size_t off_by() const noexcept { return off_wy() + std::size_t(head_hidden); }
  std::size_t param_count() const noexcept { return off_by() + 1; }
};

template <typename Real>
struct LstmParams {
  LstmShape shape;
  std::vector<Real> p;  // flat, laid out by LstmShape offsets
};

// Seeded initialisation: uniform(+-1/sqrt(fan_in)), forget-gate bias 1, output bias `y_bias`.
template <typename Real>
LstmParams<Real> init_lstm(const LstmShape& shape, std::uint64_t seed, Real y_bias);

// One recurrent step: updates h and c (H each) in place. `z` is scratch of 4H.
template <typename Real>
void lstm_step(const LstmParams<Real>& m, const Real* x, Real* h, Real* c, Real* z);

// The head on a (lagged) state and the current features. `a` is scratch of G.
template <typename Real>
Real lstm_head(const LstmParams<Real>& m, const Real* h_lag, const Real* x, Real* a);

// One training window: xs is T*F, targets T (log2 lifespan), mask T (1 = carries loss).
// The head at t reads h_{t-lag} (zeros before the window). Returns the summed loss and ADDS
// d(loss)/d(params) to grad (same layout as m.p).
template <typename Real>
double lstm_window_loss_grad(const LstmParams<Real>& m, const Real* xs, const Real* targets,
                             const std::uint8_t* mask, int steps, int lag,
                             std::vector<Real>* grad);

// Loss only (for finite differences and evaluation).
template <typename Real>
double lstm_window_loss(const LstmParams<Real>& m, const Real* xs, const Real* targets,
                        const std::uint8_t* mask, int steps, int lag);

// Scales grad so its global L2 norm is at most max_norm; returns the norm before clipping.
double clip_grad_norm(std::vector<float>* grad, float max_norm);

class Adam {
 public:
  explicit Adam(std::size_t n, float lr, float beta1 = 0.9f, float beta2 = 0.999f,
                float eps = 1e-8f);
  void step(std::vector<float>* params, const std::vector<float>& grad);

 private:
  std::vector<float> m_, v_;
  float lr_, beta1_, beta2_, eps_;
  double beta1_pow_ = 1.0, beta2_pow_ = 1.0;
};

inline constexpr double kHuberDeltaLog2 = 1.0;

}  // namespace timeshare::predict
