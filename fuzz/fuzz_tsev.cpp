// libFuzzer target: the .tsev reader and the trace validator on arbitrary files.
//
// The input is written to an anonymous in-memory file (memfd) and read back through
// trace::read_tsev by its /proc/self/fd path, exactly as a file on disk would be. Whatever the
// bytes, read_tsev must return (true, events) or (false, one-line error) without crashing or
// asking for memory out of proportion to the file, and trace::validate must accept or reject
// the events with one line. The body is also validated directly (records after the 16-byte
// header, whatever the count says) so that validate sees many more event sequences.
//
// Known finding 2 (docs/reliability.md): read_tsev sizes its vector from the header's count
// before it knows the file holds that many records, so a 16-byte file can make it allocate (and
// zero) up to 512 GiB. Until that is fixed, inputs whose count exceeds the records present are
// skipped so that fuzzing can go on; FUZZ_STRICT_TSEV=1 feeds them to read_tsev too (and
// libFuzzer's -malloc_limit_mb reports them).
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "timeshare/trace/events.h"

namespace {

constexpr std::size_t kHeaderBytes = 16;  // magic + u64 count

[[noreturn]] void violated(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_tsev: %s: %s\n", what, detail.c_str());
  std::abort();
}

void check_validate(const std::vector<timeshare::trace::Event>& events) {
  std::size_t allocs = SIZE_MAX;
  const std::string why = timeshare::trace::validate(events.data(), events.size(), &allocs);
  if (why.find('\n') != std::string::npos) violated("multi-line validate error", why);
  if (why.empty() && allocs > events.size()) violated("more allocations than events", "");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const int fd = memfd_create("fuzz_tsev", 0);
  if (fd < 0) violated("memfd_create failed", std::strerror(errno));
  if (ftruncate(fd, 0) != 0 || pwrite(fd, data, size, 0) != static_cast<ssize_t>(size)) {
    violated("cannot write the input", std::strerror(errno));
  }
  const std::string path = "/proc/self/fd/" + std::to_string(fd);
  static const bool strict = std::getenv("FUZZ_STRICT_TSEV") != nullptr;
  std::uint64_t declared = 0;
  if (size >= kHeaderBytes) std::memcpy(&declared, data + 8, sizeof declared);
  const std::uint64_t present = size >= kHeaderBytes ? (size - kHeaderBytes) / 32 : 0;
  const bool skip_read = !strict && declared > present;

  std::vector<timeshare::trace::Event> events;
  std::string error;
  if (skip_read) {
    // known finding 2: see the top of this file
  } else if (timeshare::trace::read_tsev(path, &events, &error)) {
    if (kHeaderBytes + events.size() * sizeof(timeshare::trace::Event) > size) {
      violated("read_tsev returned more events than the file holds", std::to_string(events.size()));
    }
    check_validate(events);
  } else if (error.empty() || error.find('\n') != std::string::npos) {
    violated("read_tsev failed without a one-line error", error);
  }

  if (size > kHeaderBytes) {
    std::vector<timeshare::trace::Event> body((size - kHeaderBytes) / sizeof(timeshare::trace::Event));
    if (!body.empty()) std::memcpy(body.data(), data + kHeaderBytes, body.size() * sizeof body[0]);
    check_validate(body);
  }
  return 0;
}
