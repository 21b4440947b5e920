#include "timeshare/trace/events.h"

#include <cstdio>
#include <cstring>
#include <memory>

namespace timeshare::trace {

namespace {
constexpr char kMagic[8] = {'T', 'S', 'E', 'V', '0', '0', '0', '1'};
struct FileCloser {
  void operator()(std::FILE* f) const noexcept { std::fclose(f); }
};
using File = std::unique_ptr<std::FILE, FileCloser>;
}  // namespace

std::string validate(const Event* events, std::size_t n, std::size_t* allocs_out) {
  std::vector<std::uint8_t> state;  // 0 unseen, 1 live, 2 freed
  for (std::size_t i = 0; i < n; ++i) {
    const Event& e = events[i];
    if (e.op == Op::kAlloc) {
      if (e.id != state.size()) {
        return "event " + std::to_string(i) + ": allocation id " + std::to_string(e.id) +
               " is not the next dense id " + std::to_string(state.size());
      }
      state.push_back(1);
    } else if (e.op == Op::kFree) {
      if (e.id >= state.size() || state[e.id] != 1) {
        return "event " + std::to_string(i) + ": free of allocation " + std::to_string(e.id) +
               " that is not live";
      }
      state[e.id] = 2;
    } else {
      return "event " + std::to_string(i) + ": unknown op " +
             std::to_string(static_cast<int>(e.op));
    }
  }
  if (allocs_out) *allocs_out = state.size();
  return {};
}

bool write_tsev(const std::string& path, const std::vector<Event>& events, std::string* error) {
  File f(std::fopen(path.c_str(), "wb"));
  if (!f) {
    if (error) *error = "cannot open " + path + " for writing";
    return false;
  }
  const std::uint64_t n = events.size();
  if (std::fwrite(kMagic, 1, sizeof kMagic, f.get()) != sizeof kMagic ||
      std::fwrite(&n, sizeof n, 1, f.get()) != 1 ||
      (n && std::fwrite(events.data(), sizeof(Event), n, f.get()) != n)) {
    if (error) *error = "short write to " + path;
    return false;
  }
  return true;
}

bool read_tsev(const std::string& path, std::vector<Event>* events, std::string* error) {
  File f(std::fopen(path.c_str(), "rb"));
  if (!f) {
    if (error) *error = "cannot open " + path;
    return false;
  }
  char magic[8];
  std::uint64_t n = 0;
  if (std::fread(magic, 1, sizeof magic, f.get()) != sizeof magic ||
      std::memcmp(magic, kMagic, sizeof kMagic) != 0) {
    if (error) *error = path + " is not a .tsev trace (bad magic)";
    return false;
  }
  if (std::fread(&n, sizeof n, 1, f.get()) != 1 || n > (std::uint64_t{1} << 34)) {
    if (error) *error = path + " is truncated or corrupt (bad count)";
    return false;
  }
  // Never trust the count: check it against the bytes the file really holds before allocating.
  const long header_end = std::ftell(f.get());
  if (header_end < 0 || std::fseek(f.get(), 0, SEEK_END) != 0) {
    if (error) *error = "cannot read " + path;
    return false;
  }
  const long file_end = std::ftell(f.get());
  if (file_end < header_end ||
      static_cast<std::uint64_t>(file_end - header_end) / sizeof(Event) < n ||
      std::fseek(f.get(), header_end, SEEK_SET) != 0) {
    if (error) *error = path + " is truncated: expected " + std::to_string(n) + " events";
    return false;
  }
  events->resize(n);
  if (n && std::fread(events->data(), sizeof(Event), n, f.get()) != n) {
    if (error) *error = path + " is truncated: expected " + std::to_string(n) + " events";
    return false;
  }
  return true;
}

bool load_trace(const std::string& path, Trace* out, std::string* error) {
  std::string why;
  if (!read_tsev(path, &out->events, &why)) {
    if (error) *error = why;
    return false;
  }
  why = validate(out->events.data(), out->events.size(), &out->allocs);
  if (!why.empty()) {
    if (error) *error = path + ": " + why;
    return false;
  }
  const std::size_t slash = path.find_last_of('/');
  out->name = slash == std::string::npos ? path : path.substr(slash + 1);
  if (out->name.size() > 5 && out->name.ends_with(".tsev")) out->name.resize(out->name.size() - 5);
  return true;
}

}  // namespace timeshare::trace
