#include "timeshare/spill/ssd_tier.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <system_error>

namespace timeshare::spill {

namespace fs = std::filesystem;

namespace {

std::atomic<std::uint64_t> g_next_tier_id{1};

std::string errno_text(const char* what, const std::string& path) {
  return std::string(what) + " " + path + ": " + std::strerror(errno);
}

}  // namespace

SsdTier::SsdTier(std::string dir, std::size_t capacity_bytes)
    : dir_(std::move(dir)), capacity_bytes_(capacity_bytes), tier_id_(g_next_tier_id++) {}

SsdTier::~SsdTier() {
  if (!ready_) return;
  std::error_code ec;
  if (owns_dir_) {
    fs::remove_all(dir_, ec);
    return;
  }
  const std::string prefix = "ts-" + std::to_string(::getpid()) + "-" + std::to_string(tier_id_) + "-";
  for (const auto& e : fs::directory_iterator(dir_, ec)) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) fs::remove(e.path(), ec);
  }
}

std::string SsdTier::init() {
  std::error_code ec;
  if (dir_.empty()) {
    std::string tmpl = (fs::temp_directory_path(ec) / "timeshare-spill-XXXXXX").string();
    if (!::mkdtemp(tmpl.data())) return errno_text("cannot create a temporary directory", tmpl);
    dir_ = tmpl;
    owns_dir_ = true;
  } else if (!fs::is_directory(dir_, ec)) {
    fs::create_directories(dir_, ec);
    if (ec) return "cannot create spill_dir " + dir_ + ": " + ec.message();
  }
  ready_ = true;
  return "";
}

std::string SsdTier::path_of(std::uint64_t id) const {
  return dir_ + "/ts-" + std::to_string(::getpid()) + "-" + std::to_string(tier_id_) + "-" +
         std::to_string(id) + ".spill";
}

bool SsdTier::take_fault(std::atomic<std::uint64_t>& countdown) {
  std::uint64_t v = countdown.load();
  while (v != 0 && !countdown.compare_exchange_weak(v, v - 1)) {
  }
  return v == 1;
}

IoResult SsdTier::write(std::uint64_t id, const void* src, std::size_t bytes, std::string* error) {
  const std::string path = path_of(id);
  if (!ready_) {
    *error = "SSD tier unavailable (spill_dir " + dir_ + " could not be created)";
    return IoResult::kError;
  }
  if (take_fault(write_fault_)) {
    *error = "injected SSD write failure for " + path;
    return IoResult::kError;
  }
  if (current_bytes_.load() + bytes > capacity_bytes_) {
    *error = "SSD tier full (its capacity is " + std::to_string(capacity_bytes_) + " bytes)";
    return IoResult::kFull;
  }
  std::error_code ec;
  const fs::space_info space = fs::space(dir_, ec);
  if (!ec && space.available < bytes + kSsdReserveBytes) {
    *error = "file system of " + dir_ + " is full (" + std::to_string(space.available) + " bytes free)";
    return IoResult::kFull;
  }
  const int fd = ::open(path.c_str(), O_CREAT | O_WRONLY | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    *error = errno_text("cannot open", path);
    return errno == ENOSPC ? IoResult::kFull : IoResult::kError;
  }
  const auto* p = static_cast<const char*>(src);
  std::size_t done = 0;
  IoResult result = IoResult::kOk;
  while (done < bytes) {
    const ssize_t n = ::write(fd, p + done, bytes - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *error = errno_text("cannot write", path);
      result = errno == ENOSPC ? IoResult::kFull : IoResult::kError;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  if (::close(fd) != 0 && result == IoResult::kOk) {
    *error = errno_text("cannot close", path);
    result = IoResult::kError;
  }
  if (result != IoResult::kOk) {
    ::unlink(path.c_str());
    return result;
  }
  current_bytes_ += bytes;
  return IoResult::kOk;
}

bool SsdTier::read(std::uint64_t id, void* dst, std::size_t bytes, std::string* error) {
  const std::string path = path_of(id);
  if (take_fault(read_fault_)) {
    *error = "injected SSD read failure for " + path;
    return false;
  }
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    *error = errno_text("cannot open", path);
    return false;
  }
  auto* p = static_cast<char*>(dst);
  std::size_t done = 0;
  bool ok = true;
  while (done < bytes) {
    const ssize_t n = ::pread(fd, p + done, bytes - done, static_cast<off_t>(done));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      *error = n == 0 ? "short read of " + path : errno_text("cannot read", path);
      ok = false;
      break;
    }
    done += static_cast<std::size_t>(n);
  }
  ::close(fd);
  return ok;
}

void SsdTier::remove(std::uint64_t id, std::size_t bytes) {
  ::unlink(path_of(id).c_str());
  current_bytes_ -= bytes;
}

}  // namespace timeshare::spill
