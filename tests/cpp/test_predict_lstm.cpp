// LSTM numerics: backward matches finite differences; Adam learns a periodic sequence whose
// current input alone is ambiguous (so the recurrent state must carry the position).
#include <catch2/catch.hpp>

#include <cmath>
#include <random>
#include <vector>

#include "timeshare/predict/lstm.h"

using namespace timeshare::predict;

TEST_CASE("predict/lstm: backward matches central finite differences", "[predict]") {
  const LstmShape shape{3, 4, 3};
  LstmParams<double> m = init_lstm<double>(shape, 42, 0.5);
  const int steps = 7, lag = 2;
  std::mt19937_64 rng(5);
  std::normal_distribution<double> n(0.0, 1.0);
  std::vector<double> xs(steps * shape.input), ys(steps);
  for (double& v : xs) v = n(rng);
  for (double& v : ys) v = 2.0 * n(rng);  // some residuals beyond the Huber delta
  std::vector<std::uint8_t> mask = {0, 1, 1, 0, 1, 1, 1};
  // Push the ReLU pre-activations away from the kink so differences are smooth.
  for (int r = 0; r < shape.head_hidden; ++r) m.p[shape.off_ab() + r] = 0.7;

  std::vector<double> grad;
  lstm_window_loss_grad<double>(m, xs.data(), ys.data(), mask.data(), steps, lag, &grad);
  REQUIRE(grad.size() == shape.param_count());
  const double eps = 1e-6;
  double worst = 0.0;
  for (std::size_t i = 0; i < m.p.size(); ++i) {
    LstmParams<double> a = m, b = m;
    a.p[i] += eps;
    b.p[i] -= eps;
    const double num = (lstm_window_loss<double>(a, xs.data(), ys.data(), mask.data(), steps, lag) -
                        lstm_window_loss<double>(b, xs.data(), ys.data(), mask.data(), steps, lag)) /
                       (2 * eps);
    const double err = std::fabs(num - grad[i]) / std::max(1e-3, std::fabs(num) + std::fabs(grad[i]));
    worst = std::max(worst, err);
  }
  CHECK(worst < 1e-5);
}

TEST_CASE("predict/lstm: Adam learns an ambiguous periodic sequence", "[predict]") {
  // Tokens A B A C A B A D repeat; the target is the position (1..8), so A alone says nothing.
  const int period = 8, tokens = 4, steps = 40, lag = 1;
  const int token_of[period] = {0, 1, 0, 2, 0, 1, 0, 3};
  const LstmShape shape{tokens, 16, 8};
  LstmParams<float> m = init_lstm<float>(shape, 3, 4.5f);
  Adam adam(m.p.size(), 1e-2f);
  std::vector<float> xs(steps * tokens, 0.0f), ys(steps);
  std::vector<std::uint8_t> mask(steps, 1);
  for (int t = 0; t < 8; ++t) mask[t] = 0;  // burn-in
  auto make_window = [&](int start) {
    std::fill(xs.begin(), xs.end(), 0.0f);
    for (int t = 0; t < steps; ++t) {
      const int pos = (start + t) % period;
      xs[t * tokens + token_of[pos]] = 1.0f;
      ys[t] = float(pos + 1);
    }
  };
  auto mean_loss = [&] {
    double total = 0.0;
    for (int s = 0; s < period; ++s) {
      make_window(s);
      total += lstm_window_loss<float>(m, xs.data(), ys.data(), mask.data(), steps, lag);
    }
    return total / (period * (steps - 8));
  };
  const double before = mean_loss();
  std::vector<float> grad;
  for (int it = 0; it < 600; ++it) {
    grad.assign(m.p.size(), 0.0f);
    make_window(it % period);
    lstm_window_loss_grad<float>(m, xs.data(), ys.data(), mask.data(), steps, lag, &grad);
    for (float& g : grad) g /= float(steps - 8);
    clip_grad_norm(&grad, 1.0f);
    adam.step(&m.p, grad);
  }
  const double after = mean_loss();
  INFO("loss before " << before << " after " << after);
  CHECK(after < 0.05);
  CHECK(after < 0.05 * before);
}

TEST_CASE("predict/lstm: initialisation is reproducible from the seed", "[predict]") {
  const LstmShape shape{5, 8, 4};
  CHECK(init_lstm<float>(shape, 9, 1.0f).p == init_lstm<float>(shape, 9, 1.0f).p);
  CHECK(init_lstm<float>(shape, 9, 1.0f).p != init_lstm<float>(shape, 10, 1.0f).p);
}
