// Small helpers shared by the command-line tools in csrc/tools/ (header only: every .cpp here is
// its own executable).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "timeshare/predict/predictor.h"
#include "timeshare/trace/events.h"

namespace timeshare::tools {

// "a,b,,c" -> {"a", "b", "", "c"}.
inline std::vector<std::string> split(const std::string& s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  while (start <= s.size()) {
    const std::size_t end = s.find(sep, start);
    out.push_back(s.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return out;
}

// What the predictor sees of trace allocation `e` at allocator clock `now_events` (ids offset by
// `id_offset` when a trace is replayed more than once into one predictor).
inline predict::AllocEvent alloc_event(const trace::Event& e, std::uint64_t now_events,
                                       std::uint64_t id_offset = 0) {
  predict::AllocEvent a;
  a.alloc_id = id_offset + e.id;
  a.bytes = e.bytes;
  a.stream = e.stream;
  a.now_events = now_events;
  a.now_us = e.time_us;
  return a;
}

// Iteration starts (event indices, one a line) from NAME.iters beside NAME.tsev, written from
// the snapshot's trace_source.iteration_marks_us (scripts/corpus/evaluate.py, docs/predictor.md).
// Empty when absent.
inline std::vector<std::uint64_t> read_marks(const std::string& tsev_path) {
  std::vector<std::uint64_t> out;
  const std::size_t dot = tsev_path.rfind(".tsev");
  if (dot == std::string::npos) return out;
  std::FILE* f = std::fopen((tsev_path.substr(0, dot) + ".iters").c_str(), "r");
  if (!f) return out;
  unsigned long long v = 0;
  while (std::fscanf(f, "%llu", &v) == 1) out.push_back(v);
  std::fclose(f);
  return out;
}

}  // namespace timeshare::tools
