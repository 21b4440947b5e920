// HybridPredictor: the context table memorises, the LSTM generalises.
//
// On each allocation the table is asked first. A known context whose last two lifespans agreed
// within 2x ("stable") is answered from the table without touching the LSTM: the common case in
// steady training, and the cheap one. Otherwise (a new context, or one whose lifespan moves),
// the LSTM head runs on the lagged recurrent state and the current features, and a gate picks
// the answer: per known context a saturating counter of which of the two was within 2x more
// often; for unknown contexts one global counter of the same. In real time the head runs for
// the gate's learning alone on a sample (kGateSampleEvery) of the allocations it would not
// answer, so that it is rarely on the hot path. With kind "lstm" the LSTM answers
// every allocation once it has weights (the table answers until then).
//
// Every allocation's features go to the trainer's history ring (staged, flushed every
// lag_allocs allocations); every free sets its label. Retraining is due at the first
// min_train_samples labels, on a schedule, and on drift: the rolling within-2x share of live
// answers (window drift_window_frees) staying drift_threshold below its best level since the
// last training for drift_window_frees frees in a row. The schedule backs off: the first
// scheduled retraining comes retrain_interval_events ticks after the first training, and each
// one after it twice as long after the last, up to retrain_backoff_max times the interval; a
// drift brings it back to the interval. A model that keeps its accuracy costs a core less and
// less (a training is tens to hundreds of milliseconds of a core, docs/predictor.md).
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "timeshare/predict/aligned_history.h"
#include "timeshare/predict/context_table.h"
#include "timeshare/predict/features.h"
#include "timeshare/predict/hashing.h"
#include "timeshare/predict/lstm_trainer.h"
#include "timeshare/predict/predictor.h"
#include "timeshare/predict/predictor_options.h"
#include "timeshare/predict/shape_twin.h"

namespace timeshare::predict {

inline constexpr int kGlobalGateMax = 64;
// Real time: where the gate would not take the LSTM's answer, the head still runs so that the
// gate can learn, but only on one such allocation in this many (deterministic mode: all).
inline constexpr std::uint64_t kGateSampleEvery = 8;
inline constexpr float kDefaultLifespanLog2 = 6.0f;   // 64 ticks before anything is known

// Where an answer came from (exposed for evaluation).
enum class AnswerSource : std::uint8_t { kDefault, kTable, kLstm, kAligned };

class HybridPredictor final : public LifespanPredictor {
 public:
  HybridPredictor(const PredictorOptions& opt, bool lstm_only);
  ~HybridPredictor() override;

  const char* name() const noexcept override {
    return lstm_only_ ? "lstm" : use_lstm_ ? "hybrid" : "hybrid_nolstm";
  }
  std::uint64_t on_alloc(const AllocEvent& e) override;
  void on_free(const FreeEvent& e) override;
  PredictorStats stats() const override;

  std::uint64_t lstm_answers() const noexcept { return lstm_answers_; }
  // Allocations on which the hot path ran the LSTM head (answering or not).
  std::uint64_t lstm_evaluations() const noexcept { return lstm_evaluations_; }
  std::uint64_t table_answers() const noexcept { return table_answers_; }
  std::uint64_t aligned_answers() const noexcept { return aligned_answers_; }
  std::uint64_t shape_answers() const noexcept { return shape_answers_; }
  const PeriodDetector& detector() const noexcept { return features_.detector(); }
  std::size_t history_bytes_reserved() const noexcept { return trainer_.history_bytes_reserved(); }
  // Blocks until the background trainer has finished any training in flight (tests).
  void request_training() { trainer_.request_training(); }
  // The LSTM started from pretrained weights (pretrained.h), not from scratch.
  bool pretrained() const noexcept { return trainer_.pretrained(); }
  // Tools (lstm_pretrain): every staged allocation (raw features) and label also goes to
  // `sink` (nullptr: off). Costs a branch per event when off.
  void record_history(HistoryStaging* sink) noexcept { record_ = sink; }

 private:
  struct Pending {
    std::uint64_t seq = 0;
    std::uint64_t alloc_tick = 0;
    ContextKeys keys;
    float answer_log2 = 0.0f;
    float table_log2 = 0.0f;
    float lstm_log2 = 0.0f;
    std::int8_t table_level = -1;
    bool lstm_evaluated = false;
    bool full_known = false;
    bool occ_compared = false;
    float occ_log2 = 0.0f;
    float plain_log2 = 0.0f;
    float aligned_log2 = 0.0f;
    bool aligned_compared = false;   // both the aligned twin and the table had an answer
    float shape_log2 = 0.0f;
    bool shape_compared = false;     // both the shape twin and the table had an answer
  };

  void refresh_model();
  bool prefer_aligned(const AlignedAnswer& al, const ContextAnswer& ans) const;
  // The twin that answers (the size twin, else the shape twin), or nullptr: the table's turn.
  const AlignedAnswer* pick_twin(const AlignedAnswer& al, const AlignedAnswer& sh,
                                 const ContextAnswer& ans) const;
  std::uint64_t finish_alloc_without_lstm(const AllocEvent& e, const AlignedAnswer* twin,
                                          bool size_twin, const ContextAnswer& ans, Pending* p);
  float run_head(const float* x);
  void after_alloc_housekeeping(std::uint64_t now_events);
  // on_alloc's steps: the context table's answer (with the occurrence level weighed against
  // the plain contexts: `plain`, `occ_log2`, `occ_answer`), the allocation handed to the
  // trainer, and the LSTM head consulted (true: its answer is taken; p->lstm_* set when it ran).
  ContextAnswer lookup_table(const ContextKeys& keys, ContextAnswer* plain, float* occ_log2,
                             bool* occ_answer);
  void stage_for_trainer(std::uint64_t seq, const RawAlloc& raw);
  bool consult_lstm(const RawAlloc& raw, const ContextAnswer& ans, Pending* p);
  void update_drift(bool within);

  const PredictorOptions opt_;
  const bool lstm_only_;
  const bool use_lstm_;   // opt.use_lstm or lstm_only
  ContextTable table_;
  AlignedHistory aligned_;
  ShapeTwin shape_;
  FeatureExtractor features_;
  LstmTrainer trainer_;
  IdMap<Pending> pending_;
  HistoryStaging staging_;
  HistoryStaging* record_ = nullptr;

  std::shared_ptr<const LstmModel> model_;
  std::uint64_t model_generation_ = 0;
  std::vector<float> h_, head_scratch_;
  int global_gate_ = 0;
  int occurrence_gate_ = 0;   // > 0: the occurrence-in-iteration level beats plain contexts
  int aligned_gate_ = 0;      // >= 0: the aligned twin answers before the table
  int shape_gate_ = 0;        // > 0: the shape twin answers before the table (no size twin)
  std::uint64_t gate_sample_ = 0;   // learning-only head evaluations considered (real time)
  DirectMemo<std::uint32_t, std::uint64_t, 256> ticks_memo_;   // answer (float bits) -> ticks
  DirectMemo<std::uint64_t, float, 256> log2_memo_;            // lifespan -> log2

  std::uint64_t seq_ = 0;
  std::uint64_t last_train_tick_ = 0;
  std::uint64_t interval_ = 0;  // ticks from the last training to the next scheduled one
  bool train_pending_ = false;
  bool ever_requested_ = false;
  double mean_log2_ = kDefaultLifespanLog2;
  std::uint64_t frees_ = 0;

  // Stats and drift.
  std::uint64_t predictions_ = 0, observed_ = 0;
  std::uint64_t lstm_answers_ = 0, table_answers_ = 0, aligned_answers_ = 0, shape_answers_ = 0;
  std::uint64_t lstm_evaluations_ = 0;
  double rolling_ = 0.0;
  double reference_ = -1.0;           // best rolling share since the last training
  std::uint64_t since_publish_ = 0;   // frees since the hot path saw new weights
  std::uint64_t below_run_ = 0;       // consecutive frees below reference - threshold
  std::uint64_t drift_triggers_ = 0;
};

}  // namespace timeshare::predict
