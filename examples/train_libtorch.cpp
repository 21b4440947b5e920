// A few training steps of a small model in a LibTorch program with timeshare as its CUDA
// allocator: one call, timeshare::enable(), before the first CUDA tensor.
//
//   train_libtorch [steps] [conf]       e.g. train_libtorch 20 "policy:torch"
//
// On a machine without a GPU, enable() still installs the allocator (nothing is allocated
// until a CUDA tensor exists) and the steps run on the CPU, which timeshare does not serve.
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include <timeshare/timeshare.h>

int main(int argc, char** argv) {
  constexpr int kDefaultSteps = 10;
  constexpr int kBatch = 64, kIn = 128, kHidden = 256, kOut = 10;
  const int steps = argc > 1 ? std::atoi(argv[1]) : kDefaultSteps;
  const std::string conf = argc > 2 ? argv[2] : "";
  try {
    timeshare::enable(conf);
    timeshare::enable(conf);  // a second call with the same options does nothing
  } catch (const timeshare::EnableError& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  std::printf("timeshare enabled: %s\n", timeshare::is_enabled() ? "yes" : "no");
  const bool cuda = torch::cuda::is_available();
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;
  std::printf("device: %s%s\n", cuda ? "cuda" : "cpu",
              cuda ? "" : " (no GPU: timeshare serves CUDA tensors only)");

  torch::manual_seed(0);
  torch::nn::Sequential model(torch::nn::Linear(kIn, kHidden), torch::nn::ReLU(),
                              torch::nn::Linear(kHidden, kOut));
  model->to(device);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.1));
  const auto x = torch::randn({kBatch, kIn}, device);
  const auto y = torch::randint(0, kOut, {kBatch}, torch::TensorOptions().dtype(torch::kLong).device(device));
  float first = 0, last = 0;
  for (int step = 0; step < steps; ++step) {
    opt.zero_grad();
    auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
    loss.backward();
    opt.step();
    last = loss.item<float>();
    if (step == 0) first = last;
    std::printf("step %d loss %.4f\n", step, last);
  }
  if (cuda) torch::cuda::synchronize();
  std::printf("loss %.4f -> %.4f\n", first, last);
  return last < first ? 0 : 2;
}
