// SsdTier — spilled tensors as files in a directory (the third tier, after device and pinned).
//
// One file per spilled entry, `ts-<pid>-<tier id>-<entry id>.spill`, written and read with plain
// POSIX I/O (the spill engine calls it from its background I/O thread, and for a demand read
// from the restoring thread). A full disk (fewer than kSsdReserveBytes left after the write, or
// ENOSPC) and every other error are reported, never thrown: the engine then keeps the data in
// the tier it already reached. With an empty directory name the tier makes its own temporary
// directory and removes it on destruction; files it wrote are removed in every case.
// Thread-safe.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <string>

#include "timeshare/common/units.h"

namespace timeshare::spill {

inline constexpr std::size_t kSsdReserveBytes = 256 * kMiB;  // left free on the file system

enum class IoResult : std::uint8_t { kOk, kFull, kError };

class SsdTier {
 public:
  // `dir` empty = a new temporary directory. `capacity_bytes` caps what this tier holds.
  SsdTier(std::string dir, std::size_t capacity_bytes);
  ~SsdTier();
  SsdTier(const SsdTier&) = delete;
  SsdTier& operator=(const SsdTier&) = delete;

  // Creates the directory. "" on success, else one line (the tier then fails every write).
  std::string init();

  IoResult write(std::uint64_t id, const void* src, std::size_t bytes, std::string* error);
  bool read(std::uint64_t id, void* dst, std::size_t bytes, std::string* error);
  void remove(std::uint64_t id, std::size_t bytes);  // a file write() created

  std::size_t current_bytes() const noexcept { return current_bytes_.load(); }
  const std::string& dir() const noexcept { return dir_; }
  bool ready() const noexcept { return ready_; }

  // Faults for tests: the nth write / read from now fails (1 = next).
  void fail_write_at(std::uint64_t nth) { write_fault_.store(nth); }
  void fail_read_at(std::uint64_t nth) { read_fault_.store(nth); }

 private:
  std::string path_of(std::uint64_t id) const;
  static bool take_fault(std::atomic<std::uint64_t>& countdown);

  std::string dir_;
  const std::size_t capacity_bytes_;
  const std::uint64_t tier_id_;
  bool owns_dir_ = false;
  bool ready_ = false;
  std::atomic<std::size_t> current_bytes_{0};
  std::atomic<std::uint64_t> write_fault_{0};
  std::atomic<std::uint64_t> read_fault_{0};
};

}  // namespace timeshare::spill
