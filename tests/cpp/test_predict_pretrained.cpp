// Pretrained LSTM weights: the file round-trips; a missing, mismatched or corrupt file falls
// back to from scratch with one log line; loaded weights answer from the first allocation; the
// shipped file matches the current feature set; pretraining is deterministic.
#include <catch2/catch.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/sinks/ringbuffer_sink.h>

#include "timeshare/common/log.h"
#include "timeshare/predict/features.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/online_predictor.h"
#include "timeshare/predict/pretrained.h"
#include "timeshare/predict/pretrainer.h"
#include "timeshare/predict/synthetic_trace.h"

using namespace timeshare;
using namespace timeshare::predict;

namespace {

LstmShape default_shape() {
  const PredictorOptions o;
  return {kFeatureCount, o.hidden, o.head_hidden};
}

std::string temp_path(const std::string& name) {
  return "/tmp/timeshare_test_" + std::to_string(::getpid()) + "_" + name;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}

void write_bytes(const std::string& path, const std::string& b) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(b.data(), std::streamsize(b.size()));
}

// Captures the "timeshare" logger's lines for the lifetime of the object.
struct LogCapture {
  std::shared_ptr<spdlog::sinks::ringbuffer_sink_mt> sink =
      std::make_shared<spdlog::sinks::ringbuffer_sink_mt>(64);
  LogCapture() { log().sinks().push_back(sink); }
  ~LogCapture() {
    auto& s = log().sinks();
    s.erase(std::remove(s.begin(), s.end(), sink), s.end());
  }
  std::vector<std::string> lines() { return sink->last_formatted(); }
  std::size_t count(const std::string& needle) {
    std::size_t n = 0;
    for (const auto& l : lines()) n += l.find(needle) != std::string::npos;
    return n;
  }
};

void drive(LifespanPredictor& p, const trace::Trace& t, std::size_t max_events) {
  for (std::uint64_t answer : feed_trace(p, t.events, max_events)) REQUIRE(answer >= 1);
}

}  // namespace

TEST_CASE("predict/pretrained: the weights file round-trips bit for bit", "[predict]") {
  const LstmParams<float> m = init_lstm<float>(default_shape(), 7, 5.0f);
  const std::string path = temp_path("roundtrip.tsw");
  std::string error;
  REQUIRE(save_lstm_weights(path, m, kFeatureSetVersion, &error));
  const WeightsLoad r = read_lstm_weights(path, default_shape(), kFeatureSetVersion);
  CHECK(r.status == WeightsStatus::kLoaded);
  CHECK(r.params.p == m.p);
  std::remove(path.c_str());
}

TEST_CASE("predict/pretrained: missing, mismatched, corrupt files are refused", "[predict]") {
  const LstmShape shape = default_shape();
  const LstmParams<float> m = init_lstm<float>(shape, 7, 5.0f);
  const std::string good = temp_path("good.tsw");
  REQUIRE(save_lstm_weights(good, m, kFeatureSetVersion, nullptr));
  const std::string bytes = read_bytes(good);

  CHECK(read_lstm_weights(temp_path("absent.tsw"), shape, kFeatureSetVersion).status ==
        WeightsStatus::kMissing);

  const std::string other_version = temp_path("v_next.tsw");
  REQUIRE(save_lstm_weights(other_version, m, kFeatureSetVersion + 1, nullptr));
  CHECK(read_lstm_weights(other_version, shape, kFeatureSetVersion).status ==
        WeightsStatus::kMismatch);

  const std::string other_shape = temp_path("h8.tsw");
  REQUIRE(save_lstm_weights(other_shape, init_lstm<float>({kFeatureCount, 8, 4}, 1, 5.0f),
                            kFeatureSetVersion, nullptr));
  const WeightsLoad os = read_lstm_weights(other_shape, shape, kFeatureSetVersion);
  CHECK(os.status == WeightsStatus::kMismatch);
  CHECK(os.message.find("expected feature set") != std::string::npos);

  const std::string flipped = temp_path("flipped.tsw");
  std::string f = bytes;
  f[f.size() / 2] = char(f[f.size() / 2] ^ 0x40);
  write_bytes(flipped, f);
  CHECK(read_lstm_weights(flipped, shape, kFeatureSetVersion).status == WeightsStatus::kCorrupt);

  const std::string truncated = temp_path("truncated.tsw");
  write_bytes(truncated, bytes.substr(0, bytes.size() - 9));
  CHECK(read_lstm_weights(truncated, shape, kFeatureSetVersion).status == WeightsStatus::kCorrupt);

  const std::string garbage = temp_path("garbage.tsw");
  write_bytes(garbage, "not weights at all, just text\n");
  CHECK(read_lstm_weights(garbage, shape, kFeatureSetVersion).status == WeightsStatus::kCorrupt);

  for (const std::string& p : {good, other_version, other_shape, flipped, truncated, garbage}) {
    std::remove(p.c_str());
  }
}

TEST_CASE("predict/pretrained: a bad file gives one log line and a from-scratch LSTM",
          "[predict]") {
  const trace::Trace t = make_synthetic_trace({});
  struct Case {
    const char* name;
    std::string contents;   // empty: no file
  };
  const std::string valid_path = temp_path("valid_for_corrupt.tsw");
  REQUIRE(save_lstm_weights(valid_path, init_lstm<float>(default_shape(), 3, 5.0f),
                            kFeatureSetVersion + 1, nullptr));
  const std::string mismatched = read_bytes(valid_path);
  std::remove(valid_path.c_str());
  const Case cases[] = {{"missing", ""}, {"mismatch", mismatched}, {"corrupt", "garbage"}};
  for (const Case& c : cases) {
    INFO(c.name);
    const std::string path = temp_path(std::string("fallback_") + c.name + ".tsw");
    if (!c.contents.empty()) write_bytes(path, c.contents);
    LogCapture capture;
    PredictorOptions o;
    o.deterministic = true;
    o.lstm_weights = path;
    for (int copy = 0; copy < 2; ++copy) {   // two predictors, one line
      HybridPredictor p(o, false);
      CHECK_FALSE(p.pretrained());
      drive(p, t, 200);
      CHECK_FALSE(p.stats().model_active);   // nothing trained yet: from scratch
    }
    CHECK(capture.count(path) == 1);
    CHECK(capture.count(std::string(c.name) + ":") == 1);
    CHECK(capture.count("starts from scratch") == 1);
    std::remove(path.c_str());
  }
}

TEST_CASE("predict/pretrained: 'none' is from scratch, silently", "[predict]") {
  LogCapture capture;
  PredictorOptions o;
  o.deterministic = true;
  o.lstm_weights = kWeightsNone;
  HybridPredictor p(o, false);
  CHECK_FALSE(p.pretrained());
  CHECK(capture.lines().empty());
  CHECK(resolve_weights_path(kWeightsNone).empty());
  CHECK(resolve_weights_path("/x/y.tsw") == "/x/y.tsw");
}

TEST_CASE("predict/pretrained: loaded weights answer from the first allocation", "[predict]") {
  const trace::Trace t = make_synthetic_trace({});
  const std::string path = temp_path("answer.tsw");
  REQUIRE(save_lstm_weights(path, init_lstm<float>(default_shape(), 11, 4.0f),
                            kFeatureSetVersion, nullptr));
  PredictorOptions o;
  o.deterministic = true;
  o.lstm_weights = path;
  o.kind = "lstm_pre";
  auto p = make_predictor(o);
  auto* h = dynamic_cast<HybridPredictor*>(p.get());
  REQUIRE(h != nullptr);
  CHECK(h->pretrained());
  drive(*h, t, 1);
  CHECK(h->stats().model_active);
  CHECK(h->lstm_answers() == 1);
  // From-scratch kinds ignore the weights.
  o.kind = "lstm";
  auto scratch = make_predictor(o);
  CHECK_FALSE(dynamic_cast<HybridPredictor*>(scratch.get())->pretrained());
  o.kind = "hybrid_scratch";
  auto hs = make_predictor(o);
  CHECK_FALSE(dynamic_cast<HybridPredictor*>(hs.get())->pretrained());
  std::remove(path.c_str());
}

TEST_CASE("predict/pretrained: pretraining is deterministic and lowers the loss", "[predict]") {
  SyntheticTraceOptions so;
  so.iterations = 6;
  const trace::Trace t = make_synthetic_trace(so);
  PredictorOptions base;
  const PretrainSequence s = record_sequence(t.events, base);
  REQUIRE(s.count > 200);
  PretrainOptions po;
  po.steps = 60;
  po.batch_windows = 2;
  const PretrainResult a = pretrain_lstm({s}, base, po);
  const PretrainResult b = pretrain_lstm({s}, base, po);
  CHECK(a.params.p == b.params.p);
  po.steps = 1;
  const PretrainResult first = pretrain_lstm({s}, base, po);
  CHECK(a.last_loss < first.last_loss);
  po.seed = 2;
  po.steps = 60;
  const PretrainResult c = pretrain_lstm({s}, base, po);
  CHECK(c.params.p != a.params.p);
}

#ifdef TIMESHARE_SOURCE_DIR
TEST_CASE("predict/pretrained: the shipped weights match the current feature set", "[predict]") {
  const std::string path = std::string(TIMESHARE_SOURCE_DIR) + "/python/timeshare/" +
                           kWeightsFileName;
  const WeightsLoad r = read_lstm_weights(path, default_shape(), kFeatureSetVersion);
  INFO(r.message);
  CHECK(r.status == WeightsStatus::kLoaded);
}
#endif
