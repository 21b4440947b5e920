// The hot path of the two routes into PyTorch, timed in one process on the sim backend:
//   native     c10's raw_alloc_with_stream / raw_delete on timeshare's CUDAAllocator
//   pluggable  torch's CUDAPluggableAllocator wrapper (its mutex and pointer-metadata map) over
//              timeshare_malloc / timeshare_free, as PyTorch calls it (its malloc with an
//              explicit device: the wrapper's raw_alloc asks the CUDA runtime for the current
//              device, which needs a GPU)
// in rounds, alternating, over a working set of live blocks (a mix of sizes, as a training step
// keeps), and prints ns per malloc+free pair and the ratio native / pluggable per round.
// Built and run by scripts/bench_native.py against the installed package.
#include <c10/cuda/CUDACachingAllocator.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

extern "C" {
void* timeshare_malloc(size_t size, int device, void* stream);
void timeshare_free(void* ptr, size_t size, int device, void* stream);
int timeshare_configure(const char* conf, char* error, size_t error_bytes);
int timeshare_native_install(char* error, size_t error_bytes);
}

namespace {

constexpr int kLive = 64;  // blocks kept live while others come and go

std::vector<std::size_t> sizes(std::size_t n) {
  std::mt19937_64 rng(7);
  const std::size_t choices[] = {512, 4096, 65536, 1 << 20, 2 << 20, 6 << 20};
  std::vector<std::size_t> out(n);
  for (auto& s : out) s = choices[rng() % 6];
  return out;
}

template <class Alloc, class Free>
double ns_per_pair(const std::vector<std::size_t>& sz, Alloc alloc, Free free_) {
  std::vector<void*> live(kLive, nullptr);
  for (int i = 0; i < kLive; ++i) live[i] = alloc(sz[i]);
  const auto t0 = std::chrono::steady_clock::now();
  for (std::size_t i = kLive; i < sz.size(); ++i) {
    void*& slot = live[i % kLive];
    free_(slot);
    slot = alloc(sz[i]);
  }
  const auto t1 = std::chrono::steady_clock::now();
  for (void* p : live) free_(p);
  return std::chrono::duration<double, std::nano>(t1 - t0).count() /
         static_cast<double>(sz.size() - kLive);
}

}  // namespace

int main(int argc, char** argv) {
  const std::size_t pairs = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 200000;
  const int rounds = argc > 2 ? std::atoi(argv[2]) : 5;
  char error[512] = {0};
  if (timeshare_configure("backend:sim,sim_capacity:64GiB", error, sizeof error) != 0 ||
      timeshare_native_install(error, sizeof error) != 0) {
    std::fprintf(stderr, "bench_native: %s\n", error);
    return 1;
  }
  namespace cca = c10::cuda::CUDACachingAllocator;
  cca::CUDAAllocator* native = cca::get();
  auto pluggable_holder = torch::cuda::CUDAPluggableAllocator::createCustomAllocator(
      [](size_t n, int device, cudaStream_t s) { return timeshare_malloc(n, device, s); },
      [](void* p, size_t n, int device, cudaStream_t s) { timeshare_free(p, n, device, s); });
  auto* pluggable =
      dynamic_cast<torch::cuda::CUDAPluggableAllocator::CUDAPluggableAllocator*>(
          pluggable_holder.get());
  const std::vector<std::size_t> sz = sizes(pairs + kLive);
  std::printf("round,native_ns,pluggable_ns,ratio\n");
  for (int r = 0; r < rounds; ++r) {
    const double n = ns_per_pair(
        sz, [&](std::size_t b) { return native->raw_alloc_with_stream(b, nullptr); },
        [&](void* p) { native->raw_delete(p); });
    const double p = ns_per_pair(
        sz, [&](std::size_t b) { return pluggable->malloc(b, 0, nullptr); },
        [&](void* q) { pluggable->raw_delete(q); });
    std::printf("%d,%.1f,%.1f,%.3f\n", r, n, p, n / p);
  }
  return 0;
}
