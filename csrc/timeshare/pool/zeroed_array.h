// ZeroedBytes / ZeroedArray — zero-initialised memory of a fixed size, for the temporal pool's
// per-granule state and its bit indexes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>

namespace timeshare::pool {

// A fixed-size array of zeros that is never written at construction: a large one is an
// anonymous mapping (untouched zero pages), so only the pages of granules the pool really uses
// are ever faulted in. An arena spans the whole device (per lifespan region) while a job
// touches a small part of it; a zero-filled std::vector faulted in every page (megabytes,
// thousands of page faults) at the first allocation on each stream.
class ZeroedBytes {
 public:
  ZeroedBytes() = default;
  explicit ZeroedBytes(std::size_t bytes);
  ~ZeroedBytes();
  ZeroedBytes(ZeroedBytes&& o) noexcept { swap(o); }
  ZeroedBytes& operator=(ZeroedBytes&& o) noexcept {
    swap(o);
    return *this;
  }
  ZeroedBytes(const ZeroedBytes&) = delete;
  ZeroedBytes& operator=(const ZeroedBytes&) = delete;
  void* data() const noexcept { return data_; }

 private:
  void swap(ZeroedBytes& o) noexcept {
    std::swap(data_, o.data_);
    std::swap(bytes_, o.bytes_);
    std::swap(mapped_, o.mapped_);
  }
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
  bool mapped_ = false;   // an anonymous mapping (else calloc)
};

template <class T>
class ZeroedArray {
  static_assert(std::is_trivial_v<T>, "zero bytes are a valid T only for trivial types");

 public:
  ZeroedArray() = default;
  explicit ZeroedArray(std::size_t n) : mem_(n * sizeof(T)), size_(n) {}
  T& operator[](std::size_t i) noexcept { return begin()[i]; }
  const T& operator[](std::size_t i) const noexcept { return begin()[i]; }
  T* begin() noexcept { return static_cast<T*>(mem_.data()); }
  const T* begin() const noexcept { return static_cast<const T*>(mem_.data()); }
  std::size_t size() const noexcept { return size_; }

 private:
  ZeroedBytes mem_;
  std::size_t size_ = 0;
};

}  // namespace timeshare::pool
