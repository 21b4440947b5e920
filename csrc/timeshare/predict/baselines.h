// Baseline predictors, under the same online protocol as the hybrid: each learns a lifespan
// only when that block is freed. Unknown cases answer the running mean log2 lifespan of all
// frees so far (64 ticks before the first free).
//   last_size  — the last lifespan seen for the same requested size
//   size_mean  — per-size running mean, in log2 space (a geometric mean)
//   prev_iter  — the lifespan of the allocation at the same position in the previous detected
//                iteration (period detector); last_size when no period or not yet freed
//   table      — the context table alone (longest known context of previous sizes)
//   table_cycle — the same plus the occurrence-in-iteration level (period detector), no LSTM
//   aligned    — AlignedHistory (the twin one detected period back), table_cycle when it has none
//   constant   — always constant_lifespan_events
//   oracle     — the truth, given beforehand with set_truth() (alloc order)
#pragma once

#include <cstdint>
#include <memory>
#include <unordered_map>
#include <vector>

#include "timeshare/predict/aligned_history.h"
#include "timeshare/predict/context_table.h"
#include "timeshare/predict/hashing.h"
#include "timeshare/predict/period_detector.h"
#include "timeshare/predict/predictor.h"
#include "timeshare/predict/predictor_options.h"

namespace timeshare::predict {

// Shared bookkeeping: pending allocations, default answer, stats.
class BaselinePredictor : public LifespanPredictor {
 public:
  std::uint64_t on_alloc(const AllocEvent& e) final;
  void on_free(const FreeEvent& e) final;
  PredictorStats stats() const final;

 protected:
  struct Pending {
    std::uint64_t seq = 0;
    std::uint64_t tick = 0;
    std::uint64_t bytes = 0;
    std::uint64_t key = 0;
    float answer_log2 = 0.0f;
  };
  // Returns the answer (log2 ticks) or NaN for "unknown"; may set p->key.
  virtual float predict(const AllocEvent& e, Pending* p) = 0;
  virtual void learn(const Pending& p, float log2_life) = 0;

 private:
  IdMap<Pending> pending_;
  std::uint64_t seq_ = 0;
  std::uint64_t frees_ = 0;
  double mean_log2_ = 6.0;
  std::uint64_t predictions_ = 0, observed_ = 0;
  double rolling_ = 0.0;
};

class LastSizePredictor final : public BaselinePredictor {
 public:
  const char* name() const noexcept override { return "last_size"; }

 protected:
  float predict(const AllocEvent& e, Pending* p) override;
  void learn(const Pending& p, float log2_life) override;

 private:
  std::unordered_map<std::uint64_t, float> last_;
};

class SizeMeanPredictor final : public BaselinePredictor {
 public:
  const char* name() const noexcept override { return "size_mean"; }

 protected:
  float predict(const AllocEvent& e, Pending* p) override;
  void learn(const Pending& p, float log2_life) override;

 private:
  std::unordered_map<std::uint64_t, std::pair<double, std::uint64_t>> sum_;
};

class PrevIterPredictor final : public BaselinePredictor {
 public:
  PrevIterPredictor();
  const char* name() const noexcept override { return "prev_iter"; }

 protected:
  float predict(const AllocEvent& e, Pending* p) override;
  void learn(const Pending& p, float log2_life) override;

 private:
  PeriodDetector detector_;
  std::vector<float> life_by_seq_;          // ring of kMaxPeriodAllocs, NaN = unknown
  std::vector<std::uint64_t> seq_tag_;
  std::unordered_map<std::uint64_t, float> last_;
};

class TablePredictor final : public BaselinePredictor {
 public:
  TablePredictor(const PredictorOptions& opt, bool use_cycle);
  const char* name() const noexcept override { return use_cycle_ ? "table_cycle" : "table"; }

 protected:
  float predict(const AllocEvent& e, Pending* p) override;
  void learn(const Pending& p, float log2_life) override;

 private:
  bool use_cycle_;
  ContextTable table_;
  PeriodDetector detector_;
  IdMap<ContextKeys> keys_;
};

class AlignedPredictor final : public BaselinePredictor {
 public:
  explicit AlignedPredictor(const PredictorOptions& opt);
  const char* name() const noexcept override { return "aligned"; }

 protected:
  float predict(const AllocEvent& e, Pending* p) override;
  void learn(const Pending& p, float log2_life) override;

 private:
  PeriodDetector detector_;
  AlignedHistory aligned_;
  ContextTable table_;
  IdMap<ContextKeys> keys_;
};

class ConstantPredictor final : public BaselinePredictor {
 public:
  explicit ConstantPredictor(std::uint64_t ticks);
  const char* name() const noexcept override { return "constant"; }

 protected:
  float predict(const AllocEvent&, Pending*) override { return log2_; }
  void learn(const Pending&, float) override {}

 private:
  float log2_;
};

class OraclePredictor final : public BaselinePredictor {
 public:
  const char* name() const noexcept override { return "oracle"; }
  // lifespans[i]: true lifespan (ticks) of the i-th allocation; 0 = never freed.
  void set_truth(std::vector<std::uint64_t> lifespans) { truth_ = std::move(lifespans); }

 protected:
  float predict(const AllocEvent& e, Pending* p) override;
  void learn(const Pending&, float) override {}

 private:
  std::vector<std::uint64_t> truth_;
};

}  // namespace timeshare::predict
