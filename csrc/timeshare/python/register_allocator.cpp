// Bindings for options, statistics, the process-wide registry and standalone sim allocators.
#include <dlfcn.h>
#include <cxxabi.h>

#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <typeinfo>

#include <pybind11/stl.h>

#include "timeshare/allocator/registry.h"
#include "timeshare/api/c_api.h"
#include "timeshare/common/log.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/python/bindings.h"
#include "timeshare/spill/make_room.h"
#ifdef TIMESHARE_WITH_CUDA
#include "timeshare/device/cuda/cuda_backend.h"
#endif

namespace py = pybind11;

namespace timeshare::python {

namespace {

Options parse_or_throw(const std::string& conf, const Options& base = {}) {
  ParseResult r = parse_options(conf, base);
  if (!r.options) throw py::value_error(r.error);
  return *r.options;
}

py::dict options_dict(const Options& o) {
  py::dict d;
  d["policy"] = to_string(o.policy);
  d["backend"] = to_string(o.backend);
  d["route"] = o.route;
  d["sim_capacity"] = o.sim_capacity_bytes;
  d["expandable_segments"] = o.expandable_segments;
  d["max_split_size_bytes"] = o.max_split_size_bytes == SIZE_MAX ? py::object(py::none())
                                                                 : py::int_(o.max_split_size_bytes);
  d["garbage_collection_threshold"] = o.garbage_collection_threshold;
  d["budget"] = o.budget_bytes;
  d["spill"] = to_string(o.spill);
  d["spill_dir"] = o.spill_dir;
  d["pinned"] = o.pinned_bytes;
  d["prefetch"] = o.prefetch_bytes;
  d["min_spill"] = o.min_spill_bytes;
  d["predictor"] = o.predictor;
  d["unsafe_unmap"] = o.unsafe_unmap;
  d["map_ahead"] = o.map_ahead_bytes;
  d["free_forecast"] = o.free_forecast_events;
  d["history"] = o.history_bytes;
  d["hidden"] = o.hidden;
  d["retrain_interval"] = o.retrain_interval_events;
  d["drift_threshold"] = o.drift_threshold;
  d["cache_slack"] = o.cache_slack;
  d["seed"] = o.seed;
  d["log"] = o.log_level;
  return d;
}

// torch.cuda.memory_stats() keys plus timeshare.* keys, all integers or floats.
py::dict stats_dict(const Allocator& a) {
  py::dict d;
  for (const auto& [k, v] : to_torch_keys(a.stats())) d[py::str(k)] = v;
  const AllocatorCounters c = a.counters();
  d["timeshare.clock_events"] = c.clock_events;
  d["timeshare.unknown_frees"] = c.unknown_frees;
  d["timeshare.zero_size_mallocs"] = c.zero_size_mallocs;
  d["timeshare.record_streams"] = c.record_streams;
  d["timeshare.empty_cache_calls"] = c.empty_cache_calls;
  d["timeshare.spill_retries"] = c.spill_retries;
  d["timeshare.c_api_errors"] = timeshare_c_api_errors();  // process-wide (api/c_api.h)
  // Giving memory back without unmapping it under running kernels (pool/temporal/temporal_granules.h).
  const pool::ReleaseStats rs = a.release_stats();
  d["timeshare.release.device_waits"] = rs.device_waits;
  d["timeshare.release.fences"] = rs.fences;
  d["timeshare.release.aliases"] = rs.aliases;
  d["timeshare.release.quarantined_bytes"] = rs.quarantined_bytes;
  const predict::PredictorStats p = a.predictor_stats();
  d["timeshare.predictor.predictions"] = p.predictions;
  d["timeshare.predictor.observed"] = p.observed;
  d["timeshare.predictor.rolling_within_2x"] = p.rolling_within_2x;
  d["timeshare.predictor.retrains"] = p.retrains;
  d["timeshare.predictor.drift_triggers"] = p.drift_triggers;
  d["timeshare.predictor.last_train_ms"] = p.last_train_ms;
  d["timeshare.predictor.model_active"] = p.model_active ? 1 : 0;
  // What the pool got without waiting (AsyncPredictor's answer board).
  d["timeshare.predictor.answered"] = p.answered;
  d["timeshare.predictor.unanswered"] = p.unanswered;
  return d;
}

// A standalone allocator on a sim device (tests, demos); not registered with PyTorch.
class SimAllocator {
 public:
  explicit SimAllocator(const std::string& conf) {
    Options o = parse_or_throw(conf);
    device::SimOptions so;
    so.capacity_bytes = o.sim_capacity_bytes;
    so.backing = true;
    auto backend = std::make_unique<device::SimBackend>(so, 0);
    sim_ = backend.get();
    allocator_ = std::make_unique<Allocator>(o, std::move(backend));
  }
  std::uintptr_t malloc(std::size_t bytes, std::uint64_t stream) {
    void* p = allocator_->malloc(bytes, stream);
    if (!p && bytes > 0) throw std::runtime_error(allocator_->last_oom_message());
    return reinterpret_cast<std::uintptr_t>(p);
  }
  bool free(std::uintptr_t ptr) { return allocator_->free(reinterpret_cast<void*>(ptr)); }
  bool record_stream(std::uintptr_t ptr, std::uint64_t stream) {
    return allocator_->record_stream(reinterpret_cast<void*>(ptr), stream);
  }
  // Writes / reads bytes of a block (the sim device is host memory): for data-integrity tests.
  void write(std::uintptr_t ptr, const py::bytes& data) {
    const std::string s = data;
    std::memcpy(reinterpret_cast<void*>(ptr), s.data(), s.size());
  }
  py::bytes read(std::uintptr_t ptr, std::size_t n) {
    return py::bytes(reinterpret_cast<const char*>(ptr), n);
  }
  Allocator& allocator() { return *allocator_; }
  device::SimBackend& sim() { return *sim_; }

 private:
  device::SimBackend* sim_ = nullptr;
  std::unique_ptr<Allocator> allocator_;
};

// The file holding the code at `addr`, as this module's linker resolved it.
std::string file_of(const void* addr, const char* what) {
  Dl_info info{};
  if (!dladdr(addr, &info) || !info.dli_fname) {
    throw std::runtime_error(std::string("timeshare: dladdr cannot locate ") + what);
  }
  return info.dli_fname;
}

// Where the core's code lives as _C sees it: the registry, the make_room list and the logger
// must all resolve into libtimeshare.so (one core per process, docs/design.md).
std::string core_library_path() {
  const std::string registry_file =
      file_of(reinterpret_cast<const void*>(&registry::get), "timeshare::registry::get");
  const std::pair<const void*, const char*> others[] = {
      {reinterpret_cast<const void*>(&spill::make_room), "timeshare::spill::make_room"},
      {reinterpret_cast<const void*>(&timeshare::log), "timeshare::log"},
      {reinterpret_cast<const void*>(&timeshare_malloc), "timeshare_malloc"},
  };
  for (const auto& [addr, what] : others) {
    if (std::string f = file_of(addr, what); f != registry_file) {
      throw std::runtime_error("timeshare: two allocator cores in this process: " +
                               std::string(what) + " is in " + f +
                               ", timeshare::registry::get in " + registry_file);
    }
  }
  return registry_file;
}

std::string demangle(const char* name) {
  int status = 0;
  char* s = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && s ? s : name;
  std::free(s);
  return out;
}

}  // namespace

void register_allocator(py::module_& m) {
  m.attr("__version__") = TIMESHARE_VERSION;

  m.def("parse_conf", [](const std::string& conf) { return options_dict(parse_or_throw(conf)); },
        py::arg("conf"),
        "Parse a TIMESHARE_CONF string ('key:value,...'); ValueError with one line if bad.");
  m.def("normalize_conf", [](const std::string& conf) { return to_conf_string(parse_or_throw(conf)); },
        py::arg("conf"), "The canonical 'key:value,...' form of a conf string.");
  m.def("option_table", [] {
    py::list out;
    for (const auto& o : option_table()) out.append(py::make_tuple(o.key, o.type, o.default_text, o.meaning));
    return out;
  }, "Every option as (key, type, default, meaning).");

  m.def("configure", [](const std::string& conf) {
    Options o = parse_or_throw(conf);
    if (std::string err = registry::configure(o); !err.empty()) throw std::runtime_error(err);
  }, py::arg("conf"), "Set the options of the process-wide allocators (before first use).");
  m.def("current_conf", [] { return to_conf_string(registry::options()); });
  m.def("any_allocator_created", &registry::any_created);
  m.def("device_stats", [](int device) -> py::dict {
    const Allocator* a = registry::existing(device);
    if (!a) return py::dict();
    return stats_dict(*a);
  }, py::arg("device"), "Stats of the process-wide allocator of `device` ({} before first use).");
  m.def("reset_peak_stats", [](int device) {
    if (Allocator* a = registry::existing(device)) a->reset_peak_stats();
  }, py::arg("device"));
  m.def("reset_accumulated_stats", [](int device) {
    if (Allocator* a = registry::existing(device)) a->reset_accumulated_stats();
  }, py::arg("device"));
  m.def("empty_cache", [] { timeshare_empty_cache(); }, "Release cached memory on every device.");
  m.def("reset_registry", [] {
    if (std::string err = registry::reset(); !err.empty()) throw std::runtime_error(err);
  }, "Destroy the process-wide allocators (refused while blocks are live).");
  m.def("library_path", [] {
    Dl_info info{};
    if (!dladdr(reinterpret_cast<void*>(&timeshare_malloc), &info) || !info.dli_fname) {
      throw std::runtime_error("cannot locate libtimeshare.so");
    }
    return std::string(info.dli_fname);
  }, "Path of the allocator shared library that PyTorch loads.");
  m.def("core_library_path", &core_library_path,
        "File holding the allocator core (registry, options, make_room, logger) as this module "
        "links it: libtimeshare.so, the library PyTorch loads. RuntimeError if they differ.");
  m.def("cuda_backend_built", [] {
#ifdef TIMESHARE_WITH_CUDA
    return true;
#else
    return false;
#endif
  });
  m.def("cuda_driver_status", [] {
#ifdef TIMESHARE_WITH_CUDA
    std::string why;
    const bool ok = device::cuda_available(&why);
    return py::make_tuple(ok, ok ? std::string("ok") : why);
#else
    return py::make_tuple(false, std::string("built without the CUDA backend"));
#endif
  }, "(available, reason): whether a CUDA driver with devices can be used here.");
  m.def("_throw_oom_through", [](const std::string& shim_path, const std::string& message) {
    void* lib = dlopen(shim_path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) throw std::runtime_error(std::string("cannot load ") + shim_path + ": " + dlerror());
    auto fn = reinterpret_cast<void (*)(const char*)>(dlsym(lib, "timeshare_throw_oom"));
    if (!fn) throw std::runtime_error("timeshare_throw_oom missing in " + shim_path);
    try {
      fn(message.c_str());
    } catch (const std::exception& e) {
      return py::make_tuple(demangle(typeid(e).name()), std::string(e.what()));
    }
    return py::make_tuple(std::string(), std::string());
  }, "Test hook: call the OOM shim and report the C++ exception type it threw.");

  py::class_<SimAllocator>(m, "SimAllocator",
                           "A standalone timeshare allocator on a simulated device (host memory).")
      .def(py::init<const std::string&>(), py::arg("conf") = "")
      .def("malloc", &SimAllocator::malloc, py::arg("bytes"), py::arg("stream") = 0,
           "Allocate; returns the address. Raises RuntimeError ('CUDA out of memory ...') on OOM.")
      .def("free", &SimAllocator::free, py::arg("ptr"), "Free; False for an unknown pointer.")
      .def("record_stream", &SimAllocator::record_stream, py::arg("ptr"), py::arg("stream"))
      .def("empty_cache", [](SimAllocator& s) { s.allocator().empty_cache(); })
      .def("set_memory_fraction", [](SimAllocator& s, double f) { s.allocator().set_memory_fraction(f); })
      .def("stats", [](SimAllocator& s) { return stats_dict(s.allocator()); })
      .def("reset_peak_stats", [](SimAllocator& s) { s.allocator().reset_peak_stats(); })
      .def("live_blocks", [](SimAllocator& s) { return s.allocator().live_blocks(); })
      .def("write", &SimAllocator::write, py::arg("ptr"), py::arg("data"))
      .def("read", &SimAllocator::read, py::arg("ptr"), py::arg("n"))
      .def("enqueue_work", [](SimAllocator& s, std::uint64_t stream, std::uint64_t ns) {
        s.sim().enqueue_work(stream, ns);
      }, py::arg("stream"), py::arg("ns"))
      .def("advance", [](SimAllocator& s, std::uint64_t ns) { s.sim().advance(ns); }, py::arg("ns"))
      .def("fail_reserve_at", [](SimAllocator& s, std::uint64_t n) { s.sim().fail_reserve_at(n); })
      .def_property_readonly("pool", [](SimAllocator& s) { return std::string(s.allocator().pool_name()); })
      .def_property_readonly("predictor", [](SimAllocator& s) { return std::string(s.allocator().predictor_name()); })
      .def_property_readonly("last_oom_message", [](SimAllocator& s) { return s.allocator().last_oom_message(); });
}

}  // namespace timeshare::python
