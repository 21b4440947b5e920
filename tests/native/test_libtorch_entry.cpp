// The LibTorch entry point (include/timeshare/timeshare.h): what a C++ program's one call does.
// timeshare::enable() is compiled here against the CUDA build of torch in .venv-cuda, as
// examples/CMakeLists.txt compiles it into libtimeshare_libtorch.so, and run on the sim backend
// (no GPU). Every check goes through c10's own entry points. One process, one swap: the cases
// run in order (a refused enable first, then the one that installs).
#define CATCH_CONFIG_MAIN
#include <catch2/catch.hpp>

#include <c10/core/CachingDeviceAllocator.h>
#include <c10/cuda/CUDACachingAllocator.h>

#include <cstdlib>
#include <string>

#include "timeshare/api/c_api.h"
#include "timeshare/timeshare.h"
#include "timeshare/torch/native_allocator.h"

namespace cca = c10::cuda::CUDACachingAllocator;

namespace {

constexpr std::size_t kMiB = std::size_t{1} << 20;
constexpr const char* kSim = "backend:sim,sim_capacity:1GiB";

std::string enable_error(const std::string& conf) {
  try {
    timeshare::enable(conf);
  } catch (const timeshare::EnableError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("libtorch: a bad option is one EnableError naming it, and LibTorch keeps its allocator",
          "[native][libtorch]") {
  ::unsetenv("TIMESHARE_CONF");
  const std::string why = enable_error(std::string(kSim) + ",no_such_option:1");
  CHECK(why.rfind("timeshare::enable(): ", 0) == 0);
  CHECK(why.find("no_such_option") != std::string::npos);
  CHECK(why.find('\n') == std::string::npos);
  CHECK_FALSE(timeshare::is_enabled());
  CHECK(timeshare_native_is_current() == 0);
  CHECK(cca::get()->name() != "timeshare");
}

TEST_CASE("libtorch: enable() installs timeshare as LibTorch's own CUDAAllocator (native route)",
          "[native][libtorch]") {
  // TIMESHARE_CONF is read first; the argument adds to it.
  ::setenv("TIMESHARE_CONF", "backend:sim", 1);
  timeshare::enable("sim_capacity:1GiB");
  REQUIRE(timeshare::is_enabled());
  CHECK(timeshare_native_is_current() == 1);
  cca::CUDAAllocator* a = cca::get();
  CHECK(a->name() == "timeshare");
  cca::init(1);  // LibTorch's lazy CUDA init does this on a GPU
  CHECK(a->initialized());

  // Torch's own entry points reach timeshare: memory and its statistics.
  const auto before = cca::getDeviceStats(0);
  void* p = cca::raw_alloc(3 * kMiB);
  REQUIRE(p != nullptr);
  CHECK(cca::getDeviceStats(0).allocated_bytes[0].current ==
        before.allocated_bytes[0].current + static_cast<std::int64_t>(3 * kMiB));
  cca::raw_delete(p);
  CHECK(cca::getDeviceStats(0).allocated_bytes[0].current == before.allocated_bytes[0].current);
}

TEST_CASE("libtorch: enable() again is a no-op with the same options, one EnableError with others",
          "[native][libtorch]") {
  REQUIRE(timeshare::is_enabled());
  CHECK(enable_error("sim_capacity:1GiB").empty());
  const std::string why = enable_error("sim_capacity:2GiB");
  CHECK(why.find("already enabled with other options") != std::string::npos);
  CHECK(why.find('\n') == std::string::npos);
  CHECK(cca::get()->name() == "timeshare");
}
