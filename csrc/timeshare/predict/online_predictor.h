// make_predictor: the one way to build a LifespanPredictor from PredictorOptions::kind.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "timeshare/predict/predictor.h"
#include "timeshare/predict/predictor_options.h"

namespace timeshare::predict {

// Returns nullptr for an unknown kind (see kPredictorKinds).
std::unique_ptr<LifespanPredictor> make_predictor(const PredictorOptions& opt);

inline const std::vector<std::string> kPredictorKinds = {
    "hybrid", "hybrid_scratch", "hybrid_nolstm", "lstm", "lstm_pre", "table", "table_cycle", "last_size", "size_mean", "prev_iter", "aligned", "constant", "oracle"};

// For kind "oracle": hands it the true lifespans (ticks, allocation order; 0 = never freed).
// Returns false when `p` is not an oracle.
bool set_oracle_truth(LifespanPredictor* p, std::vector<std::uint64_t> lifespans);

}  // namespace timeshare::predict
