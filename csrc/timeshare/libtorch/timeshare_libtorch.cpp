// libtimeshare_libtorch.so: timeshare::enable() for LibTorch programs (include/timeshare/timeshare.h).
//
// Built only against a CUDA build of LibTorch (examples/CMakeLists.txt): it needs c10_cuda and
// torch_cuda. enable() installs the native route (csrc/timeshare/torch/, compiled in: timeshare
// as LibTorch's own CUDAAllocator) and falls back to the pluggable-allocator API below. The allocator itself stays in libtimeshare.so,
// reached through its extern "C" entry points (api/c_api.h), exactly as PyTorch's Python
// CUDAPluggableAllocator reaches it, so C++ and Python programs share one implementation.
#include "timeshare/timeshare.h"

#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/util/Exception.h>
#include <torch/csrc/cuda/CUDAPluggableAllocator.h>

#include <cstdlib>
#include <memory>
#include <mutex>

#include "timeshare/allocator/registry.h"
#include "timeshare/api/c_api.h"
#include "timeshare/common/log_line.h"
#include "timeshare/torch/native_allocator.h"

namespace timeshare {

namespace {

constexpr std::size_t kErrorBytes = 512;

std::mutex g_mu;
bool g_enabled = false;
std::string g_conf;  // the options enable() installed, as given (env + argument)

std::string first_line(const std::string& s) {
  const auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

std::string merged_conf(const std::string& conf) {
  const char* env = std::getenv("TIMESHARE_CONF");
  std::string out = env ? env : "";
  if (!conf.empty()) out += (out.empty() ? "" : ",") + conf;
  return out;
}

}  // namespace

bool is_enabled() noexcept {
  std::lock_guard lock(g_mu);
  return g_enabled;
}

void enable(const std::string& conf) {
  namespace pluggable = torch::cuda::CUDAPluggableAllocator;
  std::lock_guard lock(g_mu);
  const std::string wanted = merged_conf(conf);
  if (g_enabled) {
    if (wanted == g_conf) return;
    throw EnableError("timeshare::enable(): already enabled with other options ('" + g_conf +
                      "'); options cannot change once LibTorch uses the allocator");
  }
  auto* current = c10::cuda::CUDACachingAllocator::get();
  if (current != nullptr && current->initialized()) {
    throw EnableError(
        "timeshare::enable() was called after CUDA was initialised (a CUDA tensor or call "
        "already happened), and LibTorch cannot swap its allocator then; call it first in main()");
  }
  char error[kErrorBytes] = {0};
  if (timeshare_configure(wanted.c_str(), error, sizeof error) != 0) {
    throw EnableError("timeshare::enable(): " + first_line(error));
  }
  // The native route first (every c10::cuda::CUDACachingAllocator entry point served), unless
  // the options ask for the pluggable one.
  const std::string route = registry::options().route;
  if (route != "pluggable") {
    if (timeshare_native_install(error, sizeof error) == 0) {
      g_enabled = true;
      g_conf = wanted;
      return;
    }
    const std::string why = first_line(error);
    if (why.find("already initialized") != std::string::npos) {
      throw EnableError("timeshare::enable(): LibTorch refused the allocator swap (" + why +
                        "); call it before any CUDA work");
    }
    if (route == "native") {
      throw EnableError("timeshare::enable(): route:native was asked for, but " + why);
    }
    log_line(LogLevel::kWarn, "native route unavailable (" + why + "); using the pluggable route");
  }
  auto allocator = pluggable::createCustomAllocator(
      [](std::size_t bytes, int device, cudaStream_t stream) {
        return timeshare_malloc(bytes, device, stream);
      },
      [](void* ptr, std::size_t bytes, int device, cudaStream_t stream) {
        timeshare_free(ptr, bytes, device, stream);
      });
  auto* raw = dynamic_cast<pluggable::CUDAPluggableAllocator*>(allocator.get());
  if (raw == nullptr) {
    throw EnableError("timeshare::enable(): LibTorch's createCustomAllocator did not return a "
                      "CUDAPluggableAllocator; this LibTorch is not supported");
  }
  // torch calls init(device_count): the number of devices, not an index (api/c_api.h).
  raw->set_init_fn([](int device_count) { timeshare_init(device_count); });
  raw->set_reset_fn([] { timeshare_empty_cache(); });
  raw->set_memory_fraction_fn(
      [](double fraction, int device) { timeshare_memory_fraction(fraction, device); });
  raw->set_record_stream_fn(
      [](void* ptr, cudaStream_t stream) { timeshare_record_stream(ptr, stream); });
  try {
    pluggable::changeCurrentAllocator(allocator);
  } catch (const c10::Error& e) {  // "Can't swap an already initialized allocator"
    throw EnableError("timeshare::enable(): LibTorch refused the allocator swap (" +
                      first_line(e.what_without_backtrace()) + "); call it before any CUDA work");
  }
  g_enabled = true;
  g_conf = wanted;
}

}  // namespace timeshare
