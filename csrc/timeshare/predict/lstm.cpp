#include "timeshare/predict/lstm.h"

#include <algorithm>
#include <cmath>

namespace timeshare::predict {

namespace {

template <typename Real>
inline Real sigmoid(Real v) {
  return Real(1) / (Real(1) + std::exp(-v));
}

// out[r] = bias[r] + sum_k W[r][k] v1[k] (k < n1) + sum_k W[r][n1 + k] v2[k] (k < n2), for
// r < rows, W row-major with `cols` columns. Each row is summed in exactly that order (so the
// result is bit for bit the plain loop's), but kRowBlock rows at a time: their sums are
// independent chains the CPU overlaps, where one row at a time waits on every addition.
constexpr int kRowBlock = 8;

template <typename Real>
inline void matvec_rows(const Real* W, int rows, int cols, const Real* bias, const Real* v1,
                        int n1, const Real* v2, int n2, Real* out) {
  int r0 = 0;
  for (; r0 + kRowBlock <= rows; r0 += kRowBlock) {
    Real acc[kRowBlock];
    const Real* w[kRowBlock];
    for (int j = 0; j < kRowBlock; ++j) {
      acc[j] = bias[r0 + j];
      w[j] = W + std::size_t(r0 + j) * cols;
    }
    for (int k = 0; k < n1; ++k) {
      const Real v = v1[k];
      for (int j = 0; j < kRowBlock; ++j) acc[j] += w[j][k] * v;
    }
    for (int k = 0; k < n2; ++k) {
      const Real v = v2[k];
      for (int j = 0; j < kRowBlock; ++j) acc[j] += w[j][n1 + k] * v;
    }
    for (int j = 0; j < kRowBlock; ++j) out[r0 + j] = acc[j];
  }
  for (int r = r0; r < rows; ++r) {
    const Real* row = W + std::size_t(r) * cols;
    Real acc = bias[r];
    for (int k = 0; k < n1; ++k) acc += row[k] * v1[k];
    for (int k = 0; k < n2; ++k) acc += row[n1 + k] * v2[k];
    out[r] = acc;
  }
}

template <typename Real>
inline double huber(Real r, Real* dr) {
  const Real delta = Real(kHuberDeltaLog2);
  if (std::abs(r) <= delta) {
    *dr = r;
    return 0.5 * double(r) * double(r);
  }
  *dr = r > 0 ? delta : -delta;
  return double(delta) * (std::abs(double(r)) - 0.5 * double(delta));
}

// Forward record of one window, kept for the backward pass.
template <typename Real>
struct WindowTape {
  int steps = 0, H = 0, F = 0, G = 0;
  std::vector<Real> gates;   // T * 4H, post-activation (i, f, g, o)
  std::vector<Real> c;       // (T+1) * H, c[0] = initial zeros
  std::vector<Real> h;       // (T+1) * H
  std::vector<Real> tanh_c;  // T * H
  std::vector<Real> a;       // T * G, post-relu head hidden
  std::vector<Real> y;       // T

  const Real* h_at(int t) const { return &h[std::size_t(t + 1) * H]; }  // t may be -1
};

template <typename Real>
double forward_window(const LstmParams<Real>& m, const Real* xs, const Real* targets,
                      const std::uint8_t* mask, int steps, int lag, WindowTape<Real>* tape) {
  const LstmShape& s = m.shape;
  const int H = s.hidden, F = s.input, G = s.head_hidden;
  tape->steps = steps, tape->H = H, tape->F = F, tape->G = G;
  tape->gates.assign(std::size_t(steps) * 4 * H, Real(0));
  tape->c.assign(std::size_t(steps + 1) * H, Real(0));
  tape->h.assign(std::size_t(steps + 1) * H, Real(0));
  tape->tanh_c.assign(std::size_t(steps) * H, Real(0));
  tape->a.assign(std::size_t(steps) * G, Real(0));
  tape->y.assign(steps, Real(0));
  const std::vector<Real> zeros(H, Real(0));
  double loss = 0.0;
  for (int t = 0; t < steps; ++t) {
    Real* z = &tape->gates[std::size_t(t) * 4 * H];
    const Real* x = xs + std::size_t(t) * F;
    const Real* hp = &tape->h[std::size_t(t) * H];
    const Real* cp = &tape->c[std::size_t(t) * H];
    Real* hn = &tape->h[std::size_t(t + 1) * H];
    Real* cn = &tape->c[std::size_t(t + 1) * H];
    matvec_rows(&m.p[s.off_w()], 4 * H, s.gate_cols(), &m.p[s.off_b()], x, F, hp, H, z);
    for (int k = 0; k < H; ++k) {
      const Real i = sigmoid(z[k]), f = sigmoid(z[H + k]);
      const Real g = std::tanh(z[2 * H + k]), o = sigmoid(z[3 * H + k]);
      z[k] = i, z[H + k] = f, z[2 * H + k] = g, z[3 * H + k] = o;
      cn[k] = f * cp[k] + i * g;
      const Real tc = std::tanh(cn[k]);
      tape->tanh_c[std::size_t(t) * H + k] = tc;
      hn[k] = o * tc;
    }
    const Real* h_lag = t - lag >= 0 ? tape->h_at(t - lag) : zeros.data();
    Real* a = &tape->a[std::size_t(t) * G];
    tape->y[t] = lstm_head(m, h_lag, x, a);
    if (mask[t]) {
      Real dr;
      loss += huber(tape->y[t] - targets[t], &dr);
    }
  }
  return loss;
}

}  // namespace

template <typename Real>
LstmParams<Real> init_lstm(const LstmShape& shape, std::uint64_t seed, Real y_bias) {
  LstmParams<Real> m;
  m.shape = shape;
  m.p.assign(shape.param_count(), Real(0));
  std::mt19937_64 rng(seed);
  auto fill = [&](std::size_t off, std::size_t n, int fan_in) {
    const double bound = 1.0 / std::sqrt(double(std::max(fan_in, 1)));
    std::uniform_real_distribution<double> u(-bound, bound);
    for (std::size_t i = 0; i < n; ++i) m.p[off + i] = Real(u(rng));
  };
  const int H = shape.hidden;
  fill(shape.off_w(), std::size_t(4 * H) * shape.gate_cols(), shape.gate_cols());
  for (int k = 0; k < H; ++k) m.p[shape.off_b() + H + k] = Real(1);  // forget gate open
  fill(shape.off_a(), std::size_t(shape.head_hidden) * shape.head_cols(), shape.head_cols());
  for (int k = 0; k < shape.head_hidden; ++k) m.p[shape.off_ab() + k] = Real(0.1);
  fill(shape.off_wy(), shape.head_hidden, shape.head_hidden);
  m.p[shape.off_by()] = y_bias;
  return m;
}

template <typename Real>
void lstm_step(const LstmParams<Real>& m, const Real* x, Real* h, Real* c, Real* z) {
  const LstmShape& s = m.shape;
  const int H = s.hidden, F = s.input, cols = s.gate_cols();
  matvec_rows(&m.p[s.off_w()], 4 * H, cols, &m.p[s.off_b()], x, F, h, H, z);
  for (int k = 0; k < H; ++k) {
    const Real i = sigmoid(z[k]), f = sigmoid(z[H + k]);
    const Real g = std::tanh(z[2 * H + k]), o = sigmoid(z[3 * H + k]);
    c[k] = f * c[k] + i * g;
    h[k] = o * std::tanh(c[k]);
  }
}

template <typename Real>
Real lstm_head(const LstmParams<Real>& m, const Real* h_lag, const Real* x, Real* a) {
  const LstmShape& s = m.shape;
  const int H = s.hidden, F = s.input, G = s.head_hidden, cols = s.head_cols();
  const Real* A = &m.p[s.off_a()];
  const Real* ab = &m.p[s.off_ab()];
  const Real* wy = &m.p[s.off_wy()];
  Real y = m.p[s.off_by()];
  matvec_rows(A, G, cols, ab, h_lag, H, x, F, a);
  for (int r = 0; r < G; ++r) {
    a[r] = a[r] > Real(0) ? a[r] : Real(0);
    y += wy[r] * a[r];
  }
  return y;
}

template <typename Real>
double lstm_window_loss(const LstmParams<Real>& m, const Real* xs, const Real* targets,
                        const std::uint8_t* mask, int steps, int lag) {
  WindowTape<Real> tape;
  return forward_window(m, xs, targets, mask, steps, lag, &tape);
}

template <typename Real>
double lstm_window_loss_grad(const LstmParams<Real>& m, const Real* xs, const Real* targets,
                             const std::uint8_t* mask, int steps, int lag,
                             std::vector<Real>* grad) {
  WindowTape<Real> tape;
  const double loss = forward_window(m, xs, targets, mask, steps, lag, &tape);
  const LstmShape& s = m.shape;
  const int H = s.hidden, F = s.input, G = s.head_hidden;
  const int gcols = s.gate_cols(), hcols = s.head_cols();
  std::vector<Real>& g = *grad;
  if (g.size() != m.p.size()) g.assign(m.p.size(), Real(0));
  const Real* A = &m.p[s.off_a()];
  const Real* wy = &m.p[s.off_wy()];
  const Real* W = &m.p[s.off_w()];

  // Head backward first: it only adds into dh of earlier (lagged) states.
  std::vector<Real> dh_head(std::size_t(steps) * H, Real(0));
  for (int t = 0; t < steps; ++t) {
    if (!mask[t]) continue;
    Real dy;
    huber(tape.y[t] - targets[t], &dy);
    g[s.off_by()] += dy;
    const Real* a = &tape.a[std::size_t(t) * G];
    const Real* x = xs + std::size_t(t) * F;
    const int src = t - lag;
    const Real* h_lag = src >= 0 ? tape.h_at(src) : nullptr;
    for (int r = 0; r < G; ++r) {
      g[s.off_wy() + r] += dy * a[r];
      if (a[r] <= Real(0)) continue;
      const Real da = dy * wy[r];
      g[s.off_ab() + r] += da;
      Real* gA = &g[s.off_a() + std::size_t(r) * hcols];
      const Real* rowA = A + std::size_t(r) * hcols;
      if (h_lag) {
        Real* dh = &dh_head[std::size_t(src) * H];
        for (int k = 0; k < H; ++k) {
          gA[k] += da * h_lag[k];
          dh[k] += da * rowA[k];
        }
      }
      for (int k = 0; k < F; ++k) gA[H + k] += da * x[k];
    }
  }

  // Recurrent backward.
  std::vector<Real> dh_next(H, Real(0)), dc_next(H, Real(0)), dz(4 * H);
  for (int t = steps - 1; t >= 0; --t) {
    const Real* gt = &tape.gates[std::size_t(t) * 4 * H];
    const Real* tc = &tape.tanh_c[std::size_t(t) * H];
    const Real* cp = &tape.c[std::size_t(t) * H];
    const Real* hp = &tape.h[std::size_t(t) * H];
    const Real* x = xs + std::size_t(t) * F;
    for (int k = 0; k < H; ++k) {
      const Real dh = dh_next[k] + dh_head[std::size_t(t) * H + k];
      const Real i = gt[k], f = gt[H + k], gg = gt[2 * H + k], o = gt[3 * H + k];
      const Real dc = dc_next[k] + dh * o * (Real(1) - tc[k] * tc[k]);
      dz[k] = dc * gg * i * (Real(1) - i);
      dz[H + k] = dc * cp[k] * f * (Real(1) - f);
      dz[2 * H + k] = dc * i * (Real(1) - gg * gg);
      dz[3 * H + k] = dh * tc[k] * o * (Real(1) - o);
      dc_next[k] = dc * f;
    }
    std::fill(dh_next.begin(), dh_next.end(), Real(0));
    for (int r = 0; r < 4 * H; ++r) {
      const Real d = dz[r];
      g[s.off_b() + r] += d;
      Real* gW = &g[s.off_w() + std::size_t(r) * gcols];
      const Real* row = W + std::size_t(r) * gcols;
      for (int k = 0; k < F; ++k) gW[k] += d * x[k];
      for (int k = 0; k < H; ++k) {
        gW[F + k] += d * hp[k];
        dh_next[k] += d * row[F + k];
      }
    }
  }
  return loss;
}

double clip_grad_norm(std::vector<float>* grad, float max_norm) {
  double sq = 0.0;
  for (float v : *grad) sq += double(v) * v;
  const double norm = std::sqrt(sq);
  if (norm > max_norm && norm > 0.0) {
    const float scale = float(max_norm / norm);
    for (float& v : *grad) v *= scale;
  }
  return norm;
}

Adam::Adam(std::size_t n, float lr, float beta1, float beta2, float eps)
    : m_(n, 0.0f), v_(n, 0.0f), lr_(lr), beta1_(beta1), beta2_(beta2), eps_(eps) {}

void Adam::step(std::vector<float>* params, const std::vector<float>& grad) {
  beta1_pow_ *= beta1_;
  beta2_pow_ *= beta2_;
  const float c1 = float(1.0 / (1.0 - beta1_pow_));
  const float c2 = float(1.0 / (1.0 - beta2_pow_));
  float* p = params->data();
  const std::size_t n = params->size();
  for (std::size_t i = 0; i < n; ++i) {
    m_[i] = beta1_ * m_[i] + (1.0f - beta1_) * grad[i];
    v_[i] = beta2_ * v_[i] + (1.0f - beta2_) * grad[i] * grad[i];
    p[i] -= lr_ * (m_[i] * c1) / (std::sqrt(v_[i] * c2) + eps_);
  }
}

#define TIMESHARE_INSTANTIATE_LSTM(Real)                                                        \
  template LstmParams<Real> init_lstm<Real>(const LstmShape&, std::uint64_t, Real);            \
  template void lstm_step<Real>(const LstmParams<Real>&, const Real*, Real*, Real*, Real*);     \
  template Real lstm_head<Real>(const LstmParams<Real>&, const Real*, const Real*, Real*);     \
  template double lstm_window_loss<Real>(const LstmParams<Real>&, const Real*, const Real*,    \
                                         const std::uint8_t*, int, int);                      \
  template double lstm_window_loss_grad<Real>(const LstmParams<Real>&, const Real*,            \
                                              const Real*, const std::uint8_t*, int, int,     \
                                              std::vector<Real>*);
TIMESHARE_INSTANTIATE_LSTM(float)
TIMESHARE_INSTANTIATE_LSTM(double)
#undef TIMESHARE_INSTANTIATE_LSTM

}  // namespace timeshare::predict
