// What the tests that run the CUDA backend against the driver test double (tests/cuda_double/)
// share: the double loaded before any test runs, a fresh double per test, a backend per device,
// and the check that no driver rule was broken. Built only with the CUDA backend.
#pragma once

#ifdef TIMESHARE_WITH_CUDA

#include <catch2/catch.hpp>

#include <memory>
#include <string>

#include "fake_cuda_control.h"
#include "timeshare/common/options.h"
#include "timeshare/device/cuda/cuda_backend.h"

namespace timeshare::test {

// Before any test runs: the CUDA backend of this process loads the double.
inline const bool kFakeDriver = (fakecuda_use_for_backend(TIMESHARE_FAKE_CUDA_PATH), true);

// A fresh double with `devices` devices, and no peer access enabled, for one test.
struct FakeDriver {
  explicit FakeDriver(int devices = 2) {
    fakecuda_reset();
    fakecuda_set_device_count(devices);
    device::cuda_reset_peer_access();
  }
  ~FakeDriver() {
    device::cuda_reset_peer_access();
    fakecuda_reset();
  }
  FakeDriver(const FakeDriver&) = delete;
  FakeDriver& operator=(const FakeDriver&) = delete;
};

// Options from TIMESHARE_CONF text (the test fails on a bad one).
inline Options options_of(const std::string& conf) {
  auto r = parse_options(conf);
  INFO(r.error);
  REQUIRE(r.options);
  return *r.options;
}

// The CUDA backend of `device` (the test fails where it cannot be made).
inline std::unique_ptr<device::Backend> cuda(int device) {
  std::string error;
  auto b = device::make_cuda_backend(device, &error);
  INFO(error);
  REQUIRE(b);
  return b;
}

// The double saw exactly `allowed` broken driver rules (each one printed).
inline void check_violations(unsigned long long allowed = 0) {
  for (unsigned long long i = 0; i < fakecuda_violations(); ++i) {
    UNSCOPED_INFO(fakecuda_violation(i));
  }
  CHECK(fakecuda_violations() == allowed);
}

}  // namespace timeshare::test

#endif  // TIMESHARE_WITH_CUDA
