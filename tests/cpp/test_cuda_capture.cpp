// A CUDA graph capture over the CUDA backend, run against the driver test double: while a
// stream captures (the native route's markCaptureBegin, torch.cuda.graph), the allocator
// queries no event and makes no host wait, either of which the real driver refuses on a
// capturing stream (cudaErrorStreamCaptureUnsupported) or which would end the capture. The sim
// version of this test is in test_allocator_pools.cpp; this one counts the driver's own calls.
// Built only with the CUDA backend (TIMESHARE_WITH_CUDA).
#ifdef TIMESHARE_WITH_CUDA

#include <catch2/catch.hpp>

#include <array>
#include <string>

#include "cuda_fixture.h"
#include "fake_cuda_control.h"
#include "timeshare/allocator/allocator.h"
#include "timeshare/common/units.h"
#include "timeshare/device/cuda/cuda_backend.h"

using namespace timeshare;
using namespace timeshare::device;
using namespace timeshare::test;

namespace {

// The driver calls that query an event or a stream, or make the host wait.
constexpr std::array<const char*, 6> kWaitsAndQueries = {
    "cuEventQuery",         "cuStreamQuery",       "cuEventSynchronize",
    "cuStreamSynchronize",  "cuCtxSynchronize",    "cuStreamWaitEvent"};

unsigned long long waits_and_queries() {
  unsigned long long n = 0;
  for (const char* f : kWaitsAndQueries) n += fakecuda_calls(f);
  return n;
}

}  // namespace

TEST_CASE("cuda: during a capture the allocator queries no event and makes no host wait",
          "[cuda][allocator][capture]") {
  FakeDriver fake(1);
  fakecuda_set_lazy(1);  // queued work stays queued until the host waits
  const Options options = options_of("policy:timeshare");
  Allocator a(options, cuda(0));
  Stream side = 0;
  REQUIRE(a.backend().create_stream(&side) == Status::kOk);
  void* p = a.malloc(4 * kMiB, kDefaultStream);
  REQUIRE(p);
  // A kernel on the side stream still reads the block when the host frees it.
  REQUIRE(fakecuda_launch(0, reinterpret_cast<CUstream>(side), p, 4 * kMiB, 1, CUDA_SUCCESS) ==
          CUDA_SUCCESS);
  REQUIRE(a.record_stream(p, side));

  const unsigned long long before = waits_and_queries();
  a.set_capturing(true);
  REQUIRE(a.free(p));  // pending on `side`: its event is not queried now
  for (int i = 0; i < 40; ++i) {
    void* q = a.malloc((1 + i % 5) * kMiB, kDefaultStream);
    REQUIRE(q);
    CHECK(q != p);  // never the block the side stream may still read
    REQUIRE(a.free(q));
  }
  void* big = a.malloc(64 * kMiB, kDefaultStream);  // new memory mapped during the capture
  REQUIRE(big);
  REQUIRE(a.free(big));
  CHECK(waits_and_queries() == before);
  CHECK(a.calls_held_for_capture() > 0);
  a.set_capturing(false);

  // After the capture the held queries reach the driver again, and the block comes back once
  // the side stream is done with it.
  REQUIRE(a.backend().synchronize_stream(side) == Status::kOk);
  bool reused = false;
  for (int i = 0; i < 40 && !reused; ++i) {
    void* q = a.malloc(4 * kMiB, kDefaultStream);
    REQUIRE(q);
    reused = q == p;
    REQUIRE(a.free(q));
  }
  CHECK(waits_and_queries() > before);
  CHECK(reused);
  a.empty_cache();
  REQUIRE(a.backend().destroy_stream(side) == Status::kOk);
  check_violations();
}

#endif  // TIMESHARE_WITH_CUDA
