// libFuzzer target: the options parser on arbitrary bytes.
//
// parse_options and parse_bytes must never crash, hang or leak on any input. Invariants checked
// (a violation aborts, which libFuzzer reports with the input):
//   - parse_options either gives options or a non-empty error; the error is one line unless the
//     input itself holds a line break (known finding 1 in docs/reliability.md: the message
//     echoes the offending item verbatim). FUZZ_STRICT_ONE_LINE=1 makes that a violation too;
//   - round trip: for a conf that parses, s = to_conf_string(parse(conf)) parses again, and
//     to_conf_string(parse(s)) == s;
//   - parse_bytes of the decimal rendering of any value it returns gives the same value.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>

#include "timeshare/common/options.h"

namespace {

[[noreturn]] void violated(const char* what, const std::string& a, const std::string& b) {
  std::fprintf(stderr, "fuzz_conf: %s\n  first:  '%s'\n  second: '%s'\n", what, a.c_str(),
               b.c_str());
  std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::string input(text);

  const auto bytes = timeshare::parse_bytes(text);
  if (bytes) {
    const std::string rendered = std::to_string(*bytes);
    const auto again = timeshare::parse_bytes(rendered);
    if (!again || *again != *bytes) violated("parse_bytes round trip", input, rendered);
  }

  const timeshare::ParseResult first = timeshare::parse_options(text);
  if (!first.options) {
    if (first.error.empty()) violated("parse failed with an empty error", input, "");
    static const bool strict = std::getenv("FUZZ_STRICT_ONE_LINE") != nullptr;
    const bool input_has_break = input.find_first_of("\n\r") != std::string::npos;
    if ((strict || !input_has_break) && first.error.find_first_of("\n\r") != std::string::npos) {
      violated("multi-line error", input, first.error);
    }
    return 0;
  }
  const std::string conf = timeshare::to_conf_string(*first.options);
  const timeshare::ParseResult second = timeshare::parse_options(conf);
  if (!second.options) violated("to_conf_string output does not parse", conf, second.error);
  const std::string conf2 = timeshare::to_conf_string(*second.options);
  if (conf2 != conf) violated("round trip changed the conf", conf, conf2);
  return 0;
}
