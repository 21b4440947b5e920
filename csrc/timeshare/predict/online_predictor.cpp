#include "timeshare/predict/online_predictor.h"

#include "timeshare/predict/baselines.h"
#include "timeshare/predict/hybrid_predictor.h"
#include "timeshare/predict/pretrained.h"

namespace timeshare::predict {

std::unique_ptr<LifespanPredictor> make_predictor(const PredictorOptions& opt) {
  const std::string& k = opt.kind;
  if (k == "hybrid" || k.empty()) return std::make_unique<HybridPredictor>(opt, false);
  if (k == "hybrid_nolstm") {
    PredictorOptions o = opt;
    o.use_lstm = false;
    return std::make_unique<HybridPredictor>(o, false);
  }
  if (k == "hybrid_scratch") {
    PredictorOptions o = opt;
    o.lstm_weights = kWeightsNone;
    return std::make_unique<HybridPredictor>(o, false);
  }
  if (k == "lstm") {
    PredictorOptions o = opt;
    o.lstm_weights = kWeightsNone;
    return std::make_unique<HybridPredictor>(o, true);
  }
  if (k == "lstm_pre") return std::make_unique<HybridPredictor>(opt, true);
  if (k == "table") return std::make_unique<TablePredictor>(opt, false);
  if (k == "table_cycle") return std::make_unique<TablePredictor>(opt, true);
  if (k == "last_size") return std::make_unique<LastSizePredictor>();
  if (k == "size_mean") return std::make_unique<SizeMeanPredictor>();
  if (k == "aligned") return std::make_unique<AlignedPredictor>(opt);
  if (k == "prev_iter") return std::make_unique<PrevIterPredictor>();
  if (k == "constant") return std::make_unique<ConstantPredictor>(opt.constant_lifespan_events);
  if (k == "oracle") return std::make_unique<OraclePredictor>();
  return nullptr;
}

bool set_oracle_truth(LifespanPredictor* p, std::vector<std::uint64_t> lifespans) {
  auto* o = dynamic_cast<OraclePredictor*>(p);
  if (!o) return false;
  o->set_truth(std::move(lifespans));
  return true;
}

}  // namespace timeshare::predict
