// timeshare._C trace bindings: replay compact traces through the named policies.
//
// Events arrive as a NumPy structured array with timeshare.snapshot.EVENT_DTYPE, whose records
// are laid out exactly like trace::Event: the replay reads the array's buffer in place (no
// copy) with the GIL released. Errors are ValueError/TypeError with one line.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "timeshare/python/bindings.h"
#include "timeshare/trace/events.h"
#include "timeshare/replay/oracle_planner.h"
#include "timeshare/replay/policies.h"
#include "timeshare/replay/replayer.h"

namespace py = pybind11;

namespace timeshare::python {

namespace {

struct EventsView {
  const trace::Event* data = nullptr;
  std::size_t size = 0;
};

// The NumPy dtype equal to trace::Event (names, formats and offsets as EVENT_DTYPE).
py::dtype event_dtype() {
  py::list names, formats, offsets;
  const char* n[] = {"op", "stream", "id", "bytes", "time_us"};
  const char* f[] = {"u1", "<u4", "<u8", "<u8", "<u8"};
  const std::size_t o[] = {offsetof(trace::Event, op), offsetof(trace::Event, stream),
                           offsetof(trace::Event, id), offsetof(trace::Event, bytes),
                           offsetof(trace::Event, time_us)};
  for (int i = 0; i < 5; ++i) {
    names.append(n[i]);
    formats.append(f[i]);
    offsets.append(o[i]);
  }
  return py::dtype(names, formats, offsets, sizeof(trace::Event));
}

EventsView events_view(const py::object& events) {
  if (!py::isinstance<py::array>(events)) {
    throw py::type_error("events must be a NumPy structured array with EVENT_DTYPE, not " +
                         std::string(py::str(py::type::of(events).attr("__name__"))));
  }
  const auto arr = py::reinterpret_borrow<py::array>(events);
  if (arr.ndim() != 1) {
    throw py::value_error("events must be one-dimensional, not " + std::to_string(arr.ndim()) +
                          "-dimensional");
  }
  const py::dtype want = event_dtype();
  if (!py::bool_(arr.dtype().attr("__eq__")(want))) {
    throw py::type_error("events have dtype " + std::string(py::str(arr.dtype())) +
                         ", expected EVENT_DTYPE " + std::string(py::str(want)));
  }
  if (arr.size() > 0 && !(arr.flags() & py::array::c_style)) {
    throw py::value_error("events must be C-contiguous (use numpy.ascontiguousarray)");
  }
  return {static_cast<const trace::Event*>(arr.data()), static_cast<std::size_t>(arr.size())};
}

std::vector<std::uint64_t> iteration_starts(const py::object& obj) {
  std::vector<std::uint64_t> starts;
  if (obj.is_none()) return starts;
  const auto arr = py::array_t<std::int64_t, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!arr) throw py::type_error("iteration_starts must be an integer array or None");
  const std::int64_t* p = arr.data();
  for (py::ssize_t i = 0; i < arr.size(); ++i) {
    if (p[i] >= 0) starts.push_back(static_cast<std::uint64_t>(p[i]));
  }
  return starts;
}

std::uint64_t as_count(const py::handle& v, const std::string& key) {
  if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v) || v.cast<std::int64_t>() < 0) {
    throw py::value_error("option '" + key + "' must be a non-negative integer");
  }
  return v.cast<std::uint64_t>();
}

void apply_options(const py::dict& options, trace::ReplayOptions* ro, trace::PolicyOptions* po) {
  for (const auto& [k, v] : options) {
    const std::string key = py::str(k);
    if (key == "timeline_points") {
      ro->timeline_points = std::max<std::uint64_t>(1, as_count(v, key));
    } else if (key == "capacity_bytes") {
      po->capacity_bytes = as_count(v, key);
    } else if (key == "limit_bytes") {
      po->limit_bytes = as_count(v, key);
    } else if (key == "constant_lifespan_events") {
      po->constant_lifespan_events = as_count(v, key);
    } else if (key == "seed") {
      po->seed = as_count(v, key);
    } else if (key == "gpu_lag_events") {
      ro->gpu_lag_events = as_count(v, key);
    } else if (key == "conf") {
      if (!py::isinstance<py::str>(v)) throw py::value_error("option 'conf' must be a string");
      po->conf = v.cast<std::string>();
    } else {
      throw py::value_error("unknown replay option '" + key +
                            "' (expected timeline_points, capacity_bytes, limit_bytes, "
                            "constant_lifespan_events, seed, gpu_lag_events, conf)");
    }
  }
}

template <typename T>
py::array_t<std::uint64_t> column(const std::vector<trace::TimelinePoint>& t, T member) {
  py::array_t<std::uint64_t> out(static_cast<py::ssize_t>(t.size()));
  std::uint64_t* p = out.mutable_data();
  for (std::size_t i = 0; i < t.size(); ++i) p[i] = t[i].*member;
  return out;
}

py::dict to_dict(const trace::ReplayResult& r, bool predicts) {
  py::dict d;
  d["policy"] = r.policy;
  d["events"] = r.events;
  d["allocs"] = r.allocs;
  d["frees"] = r.frees;
  d["peak_live_bytes"] = r.peak_live_bytes;
  d["peak_reserved_bytes"] = r.peak_reserved_bytes;
  d["fragmentation"] = r.peak_live_bytes
                           ? static_cast<double>(r.peak_reserved_bytes) /
                                 static_cast<double>(r.peak_live_bytes)
                           : 0.0;
  d["backend_peak_reserved_bytes"] = r.backend_peak_reserved_bytes;
  d["device_reserve_calls"] = r.device_reserve_calls;
  d["backend_reserve_calls"] = r.backend_reserve_calls;
  d["ooms"] = r.ooms;
  d["skipped_frees"] = r.skipped_frees;
  d["alloc_retries"] = r.alloc_retries;
  d["device_calls"] = r.device_calls;
  d["device_faults"] = r.device_faults;
  d["device_waits"] = r.device_waits;
  if (!r.first_fault.empty()) d["first_fault"] = r.first_fault;
  if (!r.device_calls_by_iteration.empty()) {
    d["device_calls_by_iteration"] = r.device_calls_by_iteration;
  }
  if (predicts) {
    d["plan_hits"] = r.plan_hits;
    d["plan_misses"] = r.plan_misses;
    d["plans"] = r.plans;
    d["plans_dropped"] = r.plans_dropped;
  }
  d["loop_ns"] = r.loop_ns;
  d["ns_per_event"] = r.ns_per_event;
  if (r.ns_per_event_deterministic > 0) d["ns_per_event_deterministic"] = r.ns_per_event_deterministic;
  d["events_per_second"] = r.events_per_second;
  py::dict timeline;
  timeline["event"] = column(r.timeline, &trace::TimelinePoint::event);
  timeline["live_bytes"] = column(r.timeline, &trace::TimelinePoint::live_bytes);
  timeline["reserved_bytes"] = column(r.timeline, &trace::TimelinePoint::reserved_bytes);
  d["timeline"] = timeline;
  if (predicts) {
    const trace::PredictionFigures& f = r.prediction;
    d["lifespan_within_2x"] = f.within_2x;
    d["lifespan_log2_mae"] = f.log2_median_abs_error;  // median, as the project defines it
    d["lifespan_log2_mean_abs_error"] = f.log2_mean_abs_error;
    d["lifespan_within_2x_warm"] = f.within_2x_warm;
    d["lifespan_within_2x_cold"] = f.within_2x_cold;
    d["lifespan_cold_scored"] = f.cold_scored;
    d["cold_from_event"] = f.cold_from_event;
    d["lifespan_scored"] = f.scored;
    d["lifespan_warm_scored"] = f.warm_scored;
    d["warm_from_event"] = f.warm_from_event;
    d["warm_source"] = trace::to_string(f.warm_source);
    if (r.answers.available || r.answered_share > 0) {
      // What the pool got through the answer board (the predictor's own answers are above).
      d["answered_share"] = r.answered_share;
      d["answers_within_2x"] = r.answers.within_2x;
      d["answers_within_2x_warm"] = r.answers.within_2x_warm;
    }
  }
  return d;
}

}  // namespace

void register_trace(py::module_& m) {
  m.def(
      "replay",
      [](const py::object& events, const std::string& policy, const py::object& starts,
         const py::object& options) {
        const EventsView view = events_view(events);
        trace::ReplayOptions ro;
        trace::PolicyOptions po;
        ro.iteration_starts = iteration_starts(starts);
        if (!options.is_none()) {
          if (!py::isinstance<py::dict>(options)) throw py::type_error("options must be a dict");
          apply_options(py::reinterpret_borrow<py::dict>(options), &ro, &po);
        }
        if (!trace::is_policy(policy)) {
          std::string known;
          for (const std::string& p : trace::policy_names()) known += (known.empty() ? "" : ", ") + p;
          throw py::value_error("unknown policy '" + policy + "' (expected one of " + known + ")");
        }
        trace::ReplayResult r;
        try {
          py::gil_scoped_release release;
          r = trace::run_policy(policy, view.data, view.size, ro, po);
        } catch (const std::invalid_argument& e) {
          throw py::value_error(e.what());
        }
        return to_dict(r, trace::policy_predicts(policy));
      },
      py::arg("events"), py::arg("policy"), py::arg("iteration_starts") = py::none(),
      py::arg("options") = py::none(),
      "Replay EVENT_DTYPE `events` through `policy`; returns the figures and a timeline.\n"
      "options: timeline_points, capacity_bytes, limit_bytes, constant_lifespan_events, seed,\n"
      "gpu_lag_events (work in flight: 0 = none), conf (TIMESHARE_CONF for timeshare policies).");
  m.def("policies", &trace::policy_names, "Every replay policy, main ones first.");
  m.def("default_policies", &trace::default_policies, "The policies replayed by default.");
  m.def("ablation_policies", &trace::ablation_policies, "The ablation policies.");
  m.def(
      "validate_events",
      [](const py::object& events) {
        const EventsView view = events_view(events);
        py::gil_scoped_release release;
        return trace::validate(view.data, view.size, nullptr);
      },
      py::arg("events"), "Empty string when `events` is a valid trace, else one line why not.");
  m.def(
      "oracle_offsets",
      [](const py::object& events) {
        const EventsView view = events_view(events);
        std::size_t allocs = 0;
        if (std::string why = trace::validate(view.data, view.size, &allocs); !why.empty()) {
          throw py::value_error("invalid trace: " + why);
        }
        trace::OraclePlan plan;
        {
          py::gil_scoped_release release;
          plan = trace::plan_oracle(view.data, view.size);
        }
        py::array_t<std::uint64_t> offsets(static_cast<py::ssize_t>(plan.offset_bytes.size()));
        if (!plan.offset_bytes.empty()) {
          std::memcpy(offsets.mutable_data(), plan.offset_bytes.data(),
                      plan.offset_bytes.size() * sizeof(std::uint64_t));
        }
        return py::make_tuple(plan.arena_bytes, offsets);
      },
      py::arg("events"),
      "The oracle plan: (arena bytes, offset of every allocation id in the arena).");
}

}  // namespace timeshare::python
