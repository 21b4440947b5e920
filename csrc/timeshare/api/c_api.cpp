#include "timeshare/api/c_api.h"

#include <dlfcn.h>

#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>

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

}  // namespace

extern "C" {

void* timeshare_malloc(size_t size, int device, void* stream) {
  std::string error;
  Allocator* a = registry::get(device, &error);
  if (!a) throw std::runtime_error("timeshare cannot serve device " + std::to_string(device) + ": " + error);
  void* p = a->malloc(size, to_stream(stream));
  if (!p && size > 0) raise_oom(a->last_oom_message());
  return p;
}

void timeshare_free(void* ptr, size_t, int device, void*) {
  if (!ptr) return;
  if (Allocator* a = registry::existing(device); a && a->free(ptr)) return;
  // Not on the device PyTorch named: look on the others before calling it unknown.
  bool found = false;
  registry::for_each([&](int d, Allocator& a) {
    if (!found && d != device && a.free(ptr)) found = true;
  });
  if (!found) log().warn("timeshare_free: pointer {} (device {}) is not a timeshare block", ptr, device);
}

void timeshare_init(int device) {
  std::string error;
  if (!registry::get(device, &error)) log().error("timeshare_init({}): {}", device, error);
}

void timeshare_empty_cache(void) {
  registry::for_each([](int, Allocator& a) { a.empty_cache(); });
}

void timeshare_memory_fraction(double fraction, int device) {
  if (Allocator* a = registry::get(device)) a->set_memory_fraction(fraction);
}

void timeshare_record_stream(void* ptr, void* stream) {
  bool found = false;
  registry::for_each([&](int, Allocator& a) {
    if (!found) found = a.record_stream(ptr, to_stream(stream));
  });
  if (!found) log().warn("record_stream: pointer {} is not a timeshare block: ignored", ptr);
}

int timeshare_configure(const char* conf, char* error, size_t error_bytes) {
  auto write_error = [&](const std::string& msg) {
    if (error && error_bytes) {
      std::strncpy(error, msg.c_str(), error_bytes - 1);
      error[error_bytes - 1] = '\0';
    }
    return -1;
  };
  ParseResult r = parse_options(conf ? conf : "");
  if (!r.options) return write_error(r.error);
  if (std::string err = registry::configure(*r.options); !err.empty()) return write_error(err);
  return 0;
}

const char* timeshare_version(void) { return TIMESHARE_VERSION; }

}  // extern "C"
