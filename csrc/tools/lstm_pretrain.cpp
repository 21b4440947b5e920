// lstm_pretrain: trains the cold-start LSTM on a corpus of traces and writes the weights file
// the predictor loads at start-up (predict/pretrained.h). Deterministic: the same traces,
// options and binary give the same file byte for byte (scripts/corpus/pretrain.sh runs it on the
// tuning split and writes python/timeshare/lstm_pretrained.tsw).
//
//   lstm_pretrain --out FILE [--steps N] [--windows N] [--lr X] [--seed S] [--no-scramble]
//                 [--cold-share X] [--burn N] trace.tsev ...
// Iteration marks from NAME.iters beside NAME.tsev set each trace's first marked iteration
// (--cold-share: the share of training windows drawn from it).
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "timeshare/predict/features.h"
#include "timeshare/predict/pretrained.h"
#include "timeshare/predict/pretrainer.h"
#include "timeshare/trace/events.h"
#include "tool_common.h"

using namespace timeshare;
using namespace timeshare::predict;

using tools::read_marks;

int main(int argc, char** argv) {
  PredictorOptions base;
  PretrainOptions po;
  std::string out;
  std::vector<std::string> paths;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "lstm_pretrain: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return argv[++i];
    };
    if (a == "--out") out = next();
    else if (a == "--steps") po.steps = std::atoi(next().c_str());
    else if (a == "--windows") po.batch_windows = std::atoi(next().c_str());
    else if (a == "--lr") po.learning_rate = std::strtof(next().c_str(), nullptr);
    else if (a == "--seed") po.seed = std::strtoull(next().c_str(), nullptr, 10);
    else if (a == "--no-scramble") po.scramble_signature = false;
    else if (a == "--cold-share") po.cold_share = std::strtod(next().c_str(), nullptr);
    else if (a == "--burn") po.burn_steps = std::atoi(next().c_str());
    else if (a == "--help" || a == "-h") {
      std::printf("usage: lstm_pretrain --out FILE [--steps N] [--windows N] [--lr X] "
                  "[--seed S] [--no-scramble] trace.tsev ...\n");
      return 0;
    } else {
      paths.push_back(a);
    }
  }
  if (out.empty() || paths.empty()) {
    std::fprintf(stderr, "lstm_pretrain: need --out FILE and at least one trace\n");
    return 2;
  }
  std::vector<PretrainSequence> seqs;
  for (const std::string& p : paths) {
    trace::Trace t;
    std::string error;
    if (!trace::load_trace(p, &t, &error)) {
      std::fprintf(stderr, "lstm_pretrain: %s\n", error.c_str());
      return 1;
    }
    seqs.push_back(record_sequence(t.events, base, read_marks(p)));
    std::printf("%-40s %8zu allocations\n", t.name.c_str(), seqs.back().count);
  }
  const PretrainResult r = pretrain_lstm(seqs, base, po);
  std::string error;
  if (!save_lstm_weights(out, r.params, kFeatureSetVersion, &error)) {
    std::fprintf(stderr, "lstm_pretrain: %s\n", error.c_str());
    return 1;
  }
  std::printf("lstm_pretrain: %zu traces, %zu labelled allocations, %d steps x %d windows, "
              "last loss %.4f -> %s (feature set %u, %zu parameters)\n",
              seqs.size(), r.labelled, po.steps, po.batch_windows, r.last_loss, out.c_str(),
              unsigned(kFeatureSetVersion), r.params.p.size());
  return 0;
}
