// Inputs the libFuzzer targets (fuzz/fuzz_conf.cpp, fuzz/fuzz_tsev.cpp) found, as regressions.
//
// Both findings (C1, C2 in docs/reliability.md) were fixed in common/options.cpp (control
// characters escaped in errors) and trace/events.cpp (the event count is checked against the
// file size before anything is allocated); these tests must hold.
#include <catch2/catch.hpp>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "timeshare/common/options.h"
#include "timeshare/trace/events.h"

using namespace timeshare;

TEST_CASE("fuzz C1: a parse error stays one line when the input holds a line break",
          "[fuzz][options]") {
  for (const char* conf : {"1.5\n", "budget:1GiB\npolicy:torch", "policy:torch,\nbogus:1",
                           "hidden:1\n6"}) {
    const ParseResult r = parse_options(conf);
    REQUIRE_FALSE(r.options);
    INFO("conf: " << conf << " error: " << r.error);
    CHECK(r.error.find_first_of("\n\r") == std::string::npos);
  }
}

TEST_CASE("fuzz: conf inputs near C1 that already hold", "[fuzz][options]") {
  for (const char* conf : {"1.5", " budget : 1GiB ", ",,,", ":", "budget:", "budget:1e400",
                           "sim_capacity:18446744073709551616", "hidden:-0", "seed:99999999999999999999"}) {
    const ParseResult r = parse_options(conf);
    if (!r.options) {
      CHECK_FALSE(r.error.empty());
      CHECK(r.error.find('\n') == std::string::npos);
      continue;
    }
    const std::string s = to_conf_string(*r.options);
    const ParseResult again = parse_options(s);
    REQUIRE(again.options);
    CHECK(to_conf_string(*again.options) == s);
  }
}

namespace {

std::string write_header_only(std::uint64_t count) {
  const auto path = (std::filesystem::temp_directory_path() / "ts_fuzz_regression.tsev").string();
  std::FILE* f = std::fopen(path.c_str(), "wb");
  REQUIRE(f);
  std::fwrite("TSEV0001", 1, 8, f);
  std::fwrite(&count, sizeof count, 1, f);
  std::fclose(f);
  return path;
}

}  // namespace

TEST_CASE("fuzz C2: a .tsev header that claims more events than the file holds is refused "
          "without allocating them", "[fuzz][trace]") {
  const std::string path = write_header_only(std::uint64_t{1} << 34);  // 512 GiB of records
  std::vector<trace::Event> events;
  std::string error;
  CHECK_FALSE(trace::read_tsev(path, &events, &error));
  CHECK(events.capacity() < 1024);
  CHECK_FALSE(error.empty());
  std::filesystem::remove(path);
}

TEST_CASE("fuzz: small truncated .tsev files are refused with one line", "[fuzz][trace]") {
  for (std::uint64_t count : {1ull, 5ull, 1000ull}) {
    const std::string path = write_header_only(count);
    std::vector<trace::Event> events;
    std::string error;
    CHECK_FALSE(trace::read_tsev(path, &events, &error));
    CHECK(error.find("truncated") != std::string::npos);
    CHECK(error.find('\n') == std::string::npos);
    std::filesystem::remove(path);
  }
}
