#include "timeshare/pool/zeroed_array.h"

#include <cstdlib>
#include <new>

#if defined(__unix__)
#include <sys/mman.h>
#endif

namespace timeshare::pool {

namespace {
// Below this, calloc (its memset, if any, is cheap); from here on, an anonymous mapping. Not
// higher: glibc serves a calloc from its heap, and so zero-fills it, up to its mmap threshold,
// which grows to 32 MiB once mappings are freed; a 256 KiB bit index level calloc'd at a new
// arena was a quarter of a short trace's hot path.
constexpr std::size_t kMapZeroedFromBytes = std::size_t{64} << 10;
}  // namespace

ZeroedBytes::ZeroedBytes(std::size_t bytes) : bytes_(bytes) {
#if defined(__unix__)
  if (bytes >= kMapZeroedFromBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    data_ = p;
    mapped_ = true;
    return;
  }
#endif
  data_ = std::calloc(bytes == 0 ? 1 : bytes, 1);
  if (!data_) throw std::bad_alloc();
}

ZeroedBytes::~ZeroedBytes() {
  if (!data_) return;
#if defined(__unix__)
  if (mapped_) {
    munmap(data_, bytes_);
    return;
  }
#endif
  std::free(data_);
}

}  // namespace timeshare::pool
