// timeshare for LibTorch programs: one call before the first CUDA tensor.
//
//   #include <timeshare/timeshare.h>
//   int main() {
//     timeshare::enable();                      // or timeshare::enable("budget:20GiB,spill:host")
//     auto model = torch::nn::Linear(1024, 1024); model->to(torch::kCUDA); ...
//   }
//
// enable() configures timeshare (options in the TIMESHARE_CONF syntax; the TIMESHARE_CONF
// environment variable is read first and `conf` overrides it key by key) and installs it as
// PyTorch's CUDA allocator: as LibTorch's own CUDAAllocator (the native route: every
// c10::cuda::CUDACachingAllocator entry point answered), or, where that cannot be installed or
// with option route:pluggable, through LibTorch's pluggable-allocator API, with the init, reset
// (empty_cache), memory-fraction and record-stream hooks set. Link the program with
// libtimeshare_libtorch.so (examples/CMakeLists.txt builds it), which needs libtimeshare.so and
// a CUDA build of LibTorch.
#pragma once

#include <stdexcept>
#include <string>

namespace timeshare {

// Thrown by enable() with one line saying what was wrong and what to do; nothing was changed.
class EnableError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Installs timeshare as LibTorch's CUDA allocator. Throws EnableError when an option is bad,
// when CUDA was initialised already (PyTorch cannot swap its allocator then), or when timeshare
// was enabled before with other options. Calling it again with the same options does nothing.
void enable(const std::string& conf = "");

// Whether enable() succeeded in this process.
bool is_enabled() noexcept;

}  // namespace timeshare
