// The TIMESHARE_CONF parser is one pure function: test it directly.
#include <catch2/catch.hpp>

#include "timeshare/common/options.h"

using namespace timeshare;

TEST_CASE("options: sizes parse with binary and decimal units", "[options]") {
  CHECK(parse_bytes("512") == 512u);
  CHECK(parse_bytes("64KiB") == 64u * 1024);
  CHECK(parse_bytes(" 20GiB ") == 20ull << 30);
  CHECK(parse_bytes("2M") == 2u << 20);
  CHECK(parse_bytes("1.5GB") == 1'500'000'000ull);
  CHECK(parse_bytes("300mb") == 300'000'000ull);
  CHECK_FALSE(parse_bytes("").has_value());
  CHECK_FALSE(parse_bytes("12 parsecs").has_value());
  CHECK_FALSE(parse_bytes("-3GiB").has_value());
  CHECK_FALSE(parse_bytes("GiB").has_value());
}

TEST_CASE("options: empty conf gives defaults", "[options]") {
  auto r = parse_options("");
  REQUIRE(r.options);
  CHECK(r.options->policy == PolicyKind::kTimeshare);
  CHECK(r.options->budget_bytes == 0);
  CHECK(r.error.empty());
}

TEST_CASE("options: good conf strings", "[options]") {
  auto r = parse_options("budget:20GiB, spill:host+ssd ,spill_dir:/tmp/x:y,policy:TORCH,"
                         "expandable_segments:True,max_split_size_mb:128,hidden:64,"
                         "cache_slack:0.02");
  REQUIRE(r.options);
  const Options& o = *r.options;
  CHECK(o.budget_bytes == 20ull << 30);
  CHECK(o.spill == SpillTier::kHostSsd);
  CHECK(o.spill_dir == "/tmp/x:y");
  CHECK(o.policy == PolicyKind::kTorch);
  CHECK(o.expandable_segments);
  CHECK(o.max_split_size_bytes == 128u << 20);
  CHECK(o.hidden == 64);
  CHECK(o.cache_slack == 0.02);
}

TEST_CASE("options: bad conf strings give one line naming the problem", "[options]") {
  auto unknown = parse_options("budgte:1GiB");
  CHECK_FALSE(unknown.options);
  CHECK(unknown.error.find("unknown key 'budgte'") != std::string::npos);
  CHECK(unknown.error.find("budget") != std::string::npos);  // lists valid keys
  CHECK(unknown.error.find('\n') == std::string::npos);

  auto bad_value = parse_options("budget:lots");
  CHECK_FALSE(bad_value.options);
  CHECK(bad_value.error.find("budget:lots is invalid") != std::string::npos);

  CHECK_FALSE(parse_options("policy:random").options);
  CHECK_FALSE(parse_options("hidden:4").options);
  CHECK_FALSE(parse_options("hidden:32x").options);
  CHECK_FALSE(parse_options("noncolon").options);
  CHECK_FALSE(parse_options("drift_threshold:2").options);
  CHECK_FALSE(parse_options("cache_slack:1.5").options);
  CHECK_FALSE(parse_options("cache_slack:-0.01").options);
  CHECK(parse_options("cache_slack:2%").error.find("cache_slack:2% is invalid") != std::string::npos);
  CHECK_FALSE(parse_options("roundup_power2_divisions:4").options);
  auto needs_budget = parse_options("spill:host");
  CHECK_FALSE(needs_budget.options);
  CHECK(needs_budget.error.find("needs a budget") != std::string::npos);
}

TEST_CASE("options: to_conf_string round-trips", "[options]") {
  auto r = parse_options("budget:3GiB,spill:host,predictor:table,seed:7,max_split_size_mb:64");
  REQUIRE(r.options);
  auto again = parse_options(to_conf_string(*r.options));
  REQUIRE(again.options);
  CHECK(to_conf_string(*again.options) == to_conf_string(*r.options));
}

TEST_CASE("options: every table key is accepted by the parser", "[options]") {
  for (const auto& info : option_table()) {
    std::string conf = std::string(info.key) + ":";
    const std::string type = info.type;
    if (type == "bytes") conf += "1GiB";
    else if (type == "bool") conf += "false";
    else if (type == "float") conf += "0.5";
    else if (type == "path") conf += "/tmp";
    else if (std::string(info.key) == "max_split_size_mb") conf += "64";
    else if (type == "int") conf += (std::string(info.key) == "roundup_power2_divisions" ? "0" : "1000");
    else conf += info.default_text;
    if (std::string(info.key) == "hidden") conf = "hidden:32";
    INFO(conf);
    CHECK(parse_options(conf).options.has_value());
  }
}
