// The handle text and the taking of another process's descriptors (see ipc_handle.h).
#include "timeshare/allocator/ipc_handle.h"

#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <sstream>

namespace timeshare::ipc {

namespace {

constexpr const char* kMagic = "timeshare-ipc/1";

std::uint64_t process_token() {
  static const std::uint64_t token = [] {
    std::random_device rd;
    return (std::uint64_t{rd()} << 32) ^ rd() ^ static_cast<std::uint64_t>(::getpid());
  }();
  return token;
}

std::atomic<std::uint64_t> g_serial{0};

}  // namespace

Handle make_handle(int device, std::size_t granule, std::vector<int> fds) {
  Handle h;
  h.pid = static_cast<int>(::getpid());
  h.device = device;
  h.granule = granule;
  h.token = process_token();
  h.serial = ++g_serial;
  h.fds = std::move(fds);
  for (int fd : h.fds) {
    struct stat st {};
    h.inodes.push_back(::fstat(fd, &st) == 0 ? static_cast<std::uint64_t>(st.st_ino) : 0);
  }
  return h;
}

std::string to_text(const Handle& h) {
  std::ostringstream out;
  out << kMagic << " pid=" << h.pid << " device=" << h.device << " granule=" << h.granule
      << " token=" << std::hex << h.token << std::dec << " serial=" << h.serial << " fds=";
  for (std::size_t i = 0; i < h.fds.size(); ++i) {
    out << (i ? "," : "") << h.fds[i] << ':' << (i < h.inodes.size() ? h.inodes[i] : 0);
  }
  return out.str();
}

bool parse(const std::string& text, Handle* out, std::string* why) {
  const auto bad = [&] {
    *why = "not a timeshare CUDA IPC handle (the sending process must run timeshare too: "
           "enable it in both processes, or in neither)";
    return false;
  };
  const std::size_t magic = std::strlen(kMagic);
  if (text.compare(0, magic, kMagic) != 0 || text.find('\0') != std::string::npos) return bad();
  Handle h;
  unsigned long long granule = 0, token = 0, serial = 0;
  int consumed = 0;
  if (std::sscanf(text.c_str() + magic,
                  " pid=%d device=%d granule=%llu token=%llx serial=%llu fds=%n", &h.pid,
                  &h.device, &granule, &token, &serial, &consumed) != 5 ||
      consumed == 0 || h.pid <= 0 || h.device < 0 || granule == 0) {
    return bad();
  }
  h.granule = granule;
  h.token = token;
  h.serial = serial;
  std::istringstream fds(text.substr(magic + static_cast<std::size_t>(consumed)));
  std::string item;
  while (std::getline(fds, item, ',')) {
    char* end = nullptr;
    const long fd = std::strtol(item.c_str(), &end, 10);
    if (item.empty() || *end != ':' || fd < 0 || fd > INT32_MAX) return bad();
    const char* ino_text = end + 1;
    const unsigned long long ino = std::strtoull(ino_text, &end, 10);
    if (*ino_text == '\0' || *end != '\0') return bad();
    h.fds.push_back(static_cast<int>(fd));
    h.inodes.push_back(ino);
  }
  if (h.fds.empty() || to_text(h) != text) return bad();  // only the form to_text writes
  *out = std::move(h);
  return true;
}

bool take_fds(const Handle& h, std::vector<int>* out, std::string* why) {
  out->clear();
  const int pidfd = static_cast<int>(::syscall(SYS_pidfd_open, h.pid, 0));
  if (pidfd < 0) {
    *why = errno == ESRCH ? "the sending process (pid " + std::to_string(h.pid) + ") has exited"
                          : "pidfd_open(" + std::to_string(h.pid) + ") failed: " +
                                std::strerror(errno) + " (CUDA IPC needs Linux 5.6 or later)";
    return false;
  }
  for (std::size_t i = 0; i < h.fds.size(); ++i) {
    const int own = static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd, h.fds[i], 0));
    int err = errno;
    if (own >= 0) {
      struct stat st {};
      if (::fstat(own, &st) == 0 && static_cast<std::uint64_t>(st.st_ino) == h.inodes[i]) {
        out->push_back(own);
        continue;
      }
      ::close(own);
      err = EBADF;  // the number names something else now: the memory is gone there
    }
    if (err == EPERM) {
      *why = "the kernel refused to take the memory's file descriptors from the sending process "
             "(pid " + std::to_string(h.pid) + "; pidfd_getfd needs ptrace access to it: "
             "/proc/sys/kernel/yama/ptrace_scope 0, or the receiver running as its ancestor)";
    } else if (err == EBADF) {
      *why = "the sending process no longer holds the memory (the tensor was freed there "
             "before it was received)";
    } else {
      *why = std::string("pidfd_getfd failed: ") + std::strerror(err);
    }
    close_fds(out);
    ::close(pidfd);
    return false;
  }
  ::close(pidfd);
  return true;
}

void close_fds(std::vector<int>* fds) {
  for (int fd : *fds) ::close(fd);
  fds->clear();
}

}  // namespace timeshare::ipc
