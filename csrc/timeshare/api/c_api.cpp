#include "timeshare/api/c_api.h"

#include <dlfcn.h>

#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>

#include "timeshare/allocator/registry.h"
#include "timeshare/common/log.h"

namespace {

using namespace timeshare;

using ThrowOom = void (*)(const char*);
constexpr const char* kOomShimName = "libtimeshare_torch_oom.so";

// Loads libtimeshare_torch_oom.so from beside this library (built against the installed torch
// at install time). It throws c10::OutOfMemoryError, which PyTorch's Python layer maps to
// torch.OutOfMemoryError. Null when it is absent or cannot load (another torch version).
ThrowOom oom_thrower() {
  static ThrowOom fn = [] () -> ThrowOom {
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(&timeshare_malloc), &info) || !info.dli_fname) return nullptr;
    std::string path(info.dli_fname);
    const auto slash = path.rfind('/');
    path = (slash == std::string::npos ? std::string() : path.substr(0, slash + 1)) + kOomShimName;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) {
      log().info("no typed out-of-memory shim ({}); out of memory raises RuntimeError", dlerror());
      return nullptr;
    }
    return reinterpret_cast<ThrowOom>(dlsym(lib, "timeshare_throw_oom"));
  }();
  return fn;
}

[[noreturn]] void raise_oom(const std::string& message) {
  if (ThrowOom fn = oom_thrower()) fn(message.c_str());  // does not return
  throw std::runtime_error(message);
}

device::Stream to_stream(void* s) { return reinterpret_cast<device::Stream>(s); }

// ---- the non-throwing entry points --------------------------------------------------------------
// PyTorch calls free from noexcept deleters and the hooks from C++ that expects no exception:
// one escaping would terminate the process. Each runs its body under guarded(), which catches
// everything, logs the first failure per entry point and counts them all.

enum class Entry : std::size_t { kFree, kRecordStream, kEmptyCache, kInit, kMemoryFraction, kCount };
constexpr std::size_t kEntries = static_cast<std::size_t>(Entry::kCount);
constexpr std::array<std::string_view, kEntries> kEntryNames = {
    "free", "record_stream", "empty_cache", "init", "memory_fraction"};

std::atomic<unsigned long long> g_errors{0};
std::array<std::atomic<bool>, kEntries> g_logged{};
std::array<std::atomic<unsigned long long>, kEntries> g_fail_countdown{};  // 0: disarmed

// The test hook (timeshare_debug_fail_at): throws on the armed call.
void fault_point(Entry e) {
  auto& countdown = g_fail_countdown[static_cast<std::size_t>(e)];
  unsigned long long n = countdown.load(std::memory_order_relaxed);
  while (n > 0 && !countdown.compare_exchange_weak(n, n - 1, std::memory_order_relaxed)) {}
  if (n == 1) throw std::bad_alloc();
}

void report_failure(Entry e, const char* what) noexcept {
  g_errors.fetch_add(1, std::memory_order_relaxed);
  if (g_logged[static_cast<std::size_t>(e)].exchange(true)) return;
  const std::string_view name = kEntryNames[static_cast<std::size_t>(e)];
  try {
    log().error("timeshare_{} failed: {}; ignored (PyTorch calls it where no exception may "
                "escape); later failures here are counted in timeshare.c_api_errors, not logged",
                name, what);
  } catch (...) {  // the logger itself failed (out of memory): plain stdio cannot throw
    std::fprintf(stderr, "[timeshare] error: timeshare_%.*s failed: %s; ignored\n",
                 static_cast<int>(name.size()), name.data(), what);
  }
}

template <class Body>
void guarded(Entry e, Body&& body) noexcept {
  try {
    fault_point(e);
    body();
  } catch (const std::exception& ex) {
    report_failure(e, ex.what());
  } catch (...) {
    report_failure(e, "unknown exception");
  }
}

// Pointers PyTorch hands back that no allocator knows: logged on the first and then every
// kUnknownLogEvery-th occurrence, so a misbehaving caller cannot flood the log from a deleter.
constexpr unsigned long long kUnknownLogEvery = 1000;
std::atomic<unsigned long long> g_unknown_frees{0};
std::atomic<unsigned long long> g_unknown_record_streams{0};

bool log_this_unknown(std::atomic<unsigned long long>& counter, unsigned long long* n) {
  *n = counter.fetch_add(1, std::memory_order_relaxed) + 1;
  return (*n - 1) % kUnknownLogEvery == 0;
}

// ---- devices -------------------------------------------------------------------------------
// The device count torch passed to init; -1 until then (standalone ctypes users, LibTorch
// before its first CUDA call), when only the registry's own range check applies.
std::atomic<int> g_device_count{-1};

// "" when `device` may be served, else why not.
std::string device_refusal(int device) {
  const int count = g_device_count.load(std::memory_order_relaxed);
  if (count < 0 || (device >= 0 && device < count)) return {};
  return "device index " + std::to_string(device) + " is out of range: PyTorch reported " +
         std::to_string(count) + " CUDA device" + (count == 1 ? "" : "s") + " (timeshare_init)";
}

}  // namespace

extern "C" {

void* timeshare_malloc(size_t size, int device, void* stream) {
  std::string error = device_refusal(device);
  Allocator* a = error.empty() ? registry::get(device, &error) : nullptr;
  if (!a) throw std::runtime_error("timeshare cannot serve device " + std::to_string(device) + ": " + error);
  void* p = a->malloc(size, to_stream(stream));
  if (!p && size > 0) raise_oom(a->last_oom_message());
  return p;
}

void timeshare_free(void* ptr, size_t, int device, void*) {
  if (!ptr) return;
  guarded(Entry::kFree, [&] {
    if (Allocator* a = registry::existing(device); a && a->free(ptr)) return;
    // Not on the device PyTorch named: look on the others before calling it unknown.
    bool found = false;
    registry::for_each([&](int d, Allocator& a) {
      if (!found && d != device && a.free(ptr)) found = true;
    });
    unsigned long long n = 0;
    if (!found && log_this_unknown(g_unknown_frees, &n)) {
      log().warn("timeshare_free: pointer {} (device {}) is not a timeshare block: ignored ({} so "
                 "far)", ptr, device, n);
    }
  });
}

void timeshare_init(int device_count) {
  guarded(Entry::kInit, [&] {
    if (device_count < 0 || device_count > registry::kMaxDevices) {
      log().warn("timeshare_init({}): not a device count in [0, {}]; ignored", device_count,
                 registry::kMaxDevices);
      return;
    }
    // Allocators are created lazily, on each device's first malloc: nothing to do eagerly.
    g_device_count.store(device_count, std::memory_order_relaxed);
    log().debug("timeshare_init: PyTorch reports {} CUDA device(s)", device_count);
  });
}

void timeshare_empty_cache(void) {
  guarded(Entry::kEmptyCache, [] {
    registry::for_each([](int, Allocator& a) { a.empty_cache(); });
  });
}

void timeshare_memory_fraction(double fraction, int device) {
  guarded(Entry::kMemoryFraction, [&] {
    std::string error = device_refusal(device);
    Allocator* a = error.empty() ? registry::get(device, &error) : nullptr;
    if (!a) {
      log().warn("timeshare_memory_fraction({}, {}): {}; ignored", fraction, device, error);
      return;
    }
    a->set_memory_fraction(fraction);
  });
}

void timeshare_record_stream(void* ptr, void* stream) {
  guarded(Entry::kRecordStream, [&] {
    bool found = false;
    registry::for_each([&](int, Allocator& a) {
      if (!found) found = a.record_stream(ptr, to_stream(stream));
    });
    unsigned long long n = 0;
    if (!found && log_this_unknown(g_unknown_record_streams, &n)) {
      log().warn("record_stream: pointer {} is not a timeshare block: ignored ({} so far)", ptr, n);
    }
  });
}

void timeshare_begin_allocate_to_pool(int device, TimeshareMempoolId id,
                                      std::function<bool(CUstream_st*)> filter) {
  std::string error = device_refusal(device);
  Allocator* a = error.empty() ? registry::get(device, &error) : nullptr;
  if (!a) throw std::runtime_error("timeshare cannot serve device " + std::to_string(device) + ": " + error);
  auto f = [filter = std::move(filter)](device::Stream s) {
    return filter(reinterpret_cast<CUstream_st*>(s));
  };
  if (std::string err = a->begin_allocate_to_pool({id.first, id.second}, std::move(f)); !err.empty()) {
    throw std::runtime_error("timeshare: " + err);
  }
}

void timeshare_end_allocate_to_pool(int device, TimeshareMempoolId id) {
  Allocator* a = registry::existing(device);
  const std::string err = a ? a->end_allocate_to_pool({id.first, id.second})
                            : "no allocator for device " + std::to_string(device);
  if (!err.empty()) throw std::runtime_error("timeshare: " + err);
}

void timeshare_release_pool(int device, TimeshareMempoolId id) {
  Allocator* a = registry::existing(device);
  const std::string err = a ? a->release_pool({id.first, id.second})
                            : "no allocator for device " + std::to_string(device);
  if (!err.empty()) throw std::runtime_error("timeshare: " + err);
}

void* timeshare_base_alloc(void* ptr, size_t* size) {
  std::uintptr_t base = 0;
  std::size_t bytes = 0;
  if (!registry::base_allocation(ptr, &base, &bytes)) {
    throw std::runtime_error("timeshare: getBaseAllocation: pointer is not in memory timeshare mapped");
  }
  if (size) *size = bytes;
  return reinterpret_cast<void*>(base);
}

int timeshare_configure(const char* conf, char* error, size_t error_bytes) {
  auto write_error = [&](const std::string& msg) {
    if (error && error_bytes) {
      std::strncpy(error, msg.c_str(), error_bytes - 1);
      error[error_bytes - 1] = '\0';
    }
    return -1;
  };
  try {
    ParseResult r = parse_options(conf ? conf : "");
    if (!r.options) return write_error(r.error);
    if (std::string err = registry::configure(*r.options); !err.empty()) return write_error(err);
    return 0;
  } catch (const std::exception& e) {
    if (error && error_bytes) std::snprintf(error, error_bytes, "timeshare_configure failed: %s", e.what());
    return -1;
  } catch (...) {
    if (error && error_bytes) std::snprintf(error, error_bytes, "timeshare_configure failed");
    return -1;
  }
}

const char* timeshare_version(void) { return TIMESHARE_VERSION; }

unsigned long long timeshare_c_api_errors(void) { return g_errors.load(std::memory_order_relaxed); }

int timeshare_debug_fail_at(const char* entry, unsigned long long nth) {
  if (!entry) return -1;
  for (std::size_t i = 0; i < kEntries; ++i) {
    if (kEntryNames[i] == entry) {
      g_fail_countdown[i].store(nth, std::memory_order_relaxed);
      return 0;
    }
  }
  return -1;
}

}  // extern "C"
