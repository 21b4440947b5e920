// Bindings for the spill engine (spill/): the engine the offload hooks drive, and the make_room
// registry the allocator calls on a conflict.
//
// On the sim backend the engine's virtual clock follows the host's steady clock (it is set
// before every call), so copies "take" their modelled time in real time: CPU tensors stand in
// for device tensors and the hooks behave as they would on a GPU, only in host memory.
#include <chrono>
#include <memory>
#include <stdexcept>
#include <string>

#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include "timeshare/common/units.h"
#include "timeshare/device/sim/sim_backend.h"
#include "timeshare/python/bindings.h"
#include "timeshare/spill/make_room.h"
#include "timeshare/spill/spill_engine.h"
#ifdef TIMESHARE_WITH_CUDA
#include "timeshare/device/cuda/cuda_backend.h"
#endif

namespace py = pybind11;

namespace timeshare::python {

namespace {

using spill::Handle;

std::uint64_t steady_ns() {
  return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                        std::chrono::steady_clock::now().time_since_epoch())
                                        .count());
}

void* as_ptr(std::uintptr_t p) { return reinterpret_cast<void*>(p); }

// An engine with the backend it runs on.
class PyEngine {
 public:
  PyEngine(std::size_t pinned_bytes, bool ssd, const std::string& spill_dir,
           std::size_t prefetch_bytes, std::size_t ssd_capacity_bytes, double ssd_high_water,
           const std::string& backend, int device) {
    if (backend == "sim") {
      device::SimOptions o;
      o.backing = true;
      o.pinned_capacity_bytes = pinned_bytes + kMiB;
      auto sim = std::make_unique<device::SimBackend>(o, device);
      sim_ = sim.get();
      backend_ = std::move(sim);
      epoch_ns_ = steady_ns();
    } else if (backend == "cuda") {
#ifdef TIMESHARE_WITH_CUDA
      std::string why;
      backend_ = device::make_cuda_backend(device, &why);
      if (!backend_) throw std::runtime_error("timeshare.spill: no CUDA backend: " + why);
#else
      throw std::runtime_error("timeshare.spill: this build has no CUDA backend (built without the CUDA toolkit)");
#endif
    } else {
      throw py::value_error("timeshare.spill: backend must be 'sim' or 'cuda', not '" + backend + "'");
    }
    spill::SpillConfig c;
    c.pinned_bytes = pinned_bytes;
    c.ssd = ssd;
    c.spill_dir = spill_dir;
    c.prefetch_bytes = prefetch_bytes;
    c.ssd_capacity_bytes = ssd_capacity_bytes;
    c.ssd_high_water = ssd_high_water;
    engine_ = std::make_unique<spill::SpillEngine>(*backend_, c);
  }
  ~PyEngine() {
    tick();
    engine_.reset();
  }

  void tick() {
    if (sim_) sim_->set_now(steady_ns() - epoch_ns_);
  }
  device::SimBackend& sim() {
    if (!sim_) throw py::value_error("timeshare.spill: fault injection needs the sim backend");
    return *sim_;
  }
  spill::SpillEngine& engine() { return *engine_; }
  bool is_sim() const { return sim_ != nullptr; }

 private:
  std::unique_ptr<device::Backend> backend_;
  device::SimBackend* sim_ = nullptr;
  std::uint64_t epoch_ns_ = 0;
  std::unique_ptr<spill::SpillEngine> engine_;
};

py::dict stats_dict(const spill::SpillStats& s) {
  py::dict d;
  d["timeshare.spill.spills"] = s.spills;
  d["timeshare.spill.restores"] = s.restores;
  d["timeshare.spill.spilled_bytes.pinned"] = s.spilled_bytes_pinned;
  d["timeshare.spill.spilled_bytes.ssd"] = s.spilled_bytes_ssd;
  d["timeshare.spill.restored_bytes.pinned"] = s.restored_bytes_pinned;
  d["timeshare.spill.restored_bytes.ssd"] = s.restored_bytes_ssd;
  d["timeshare.spill.prefetch_hits"] = s.prefetch_hits;
  d["timeshare.spill.late_restores"] = s.late_restores;
  d["timeshare.spill.demand_ssd_reads"] = s.demand_ssd_reads;
  d["timeshare.spill.wait_ns"] = s.wait_ns;
  d["timeshare.spill.current_bytes.pinned"] = s.current_pinned_bytes;
  d["timeshare.spill.peak_bytes.pinned"] = s.peak_pinned_bytes;
  d["timeshare.spill.current_bytes.ssd"] = s.current_ssd_bytes;
  d["timeshare.spill.peak_bytes.ssd"] = s.peak_ssd_bytes;
  d["timeshare.spill.pinned_capacity"] = s.pinned_capacity_bytes;
  d["timeshare.spill.entries"] = s.entries;
  d["timeshare.spill.pinned_full"] = s.pinned_full;
  d["timeshare.spill.copy_failures"] = s.copy_failures;
  d["timeshare.spill.ssd_write_failures"] = s.ssd_write_failures;
  d["timeshare.spill.ssd_full"] = s.ssd_full;
  d["timeshare.spill.ssd_read_failures"] = s.ssd_read_failures;
  return d;
}

// A Python callable held by C++: destroyed with the GIL held.
std::shared_ptr<py::function> hold(py::function f) {
  return std::shared_ptr<py::function>(new py::function(std::move(f)), [](py::function* p) {
    py::gil_scoped_acquire gil;
    delete p;
  });
}

}  // namespace

void register_spill(py::module_& m) {
  using rg = py::call_guard<py::gil_scoped_release>;
  py::class_<PyEngine>(m, "SpillEngine",
                       "The spill engine on a sim (host memory) or CUDA backend; see spill_engine.h.")
      .def(py::init<std::size_t, bool, const std::string&, std::size_t, std::size_t, double,
                    const std::string&, int>(),
           py::arg("pinned"), py::arg("ssd") = false, py::arg("spill_dir") = "",
           py::arg("prefetch") = 512 * kMiB, py::arg("ssd_capacity") = SIZE_MAX,
           py::arg("ssd_high_water") = spill::kDefaultSsdHighWater, py::arg("backend") = "sim",
           py::arg("device") = 0)
      .def("init", [](PyEngine& e) { e.tick(); return e.engine().init(); }, rg(),
           "Allocate the pinned arena and copy streams; '' or why not (spills then stay resident).")
      .def("spill",
           [](PyEngine& e, std::uintptr_t ptr, std::size_t bytes, std::uint64_t stream,
              std::uint64_t key) {
             e.tick();
             return e.engine().spill(reinterpret_cast<const void*>(ptr), bytes, stream, key);
           },
           rg(), py::arg("ptr"), py::arg("bytes"), py::arg("stream"), py::arg("key"),
           "Start the device-to-host copy; 0 when the data must stay where it is.")
      .def("spill_complete", [](PyEngine& e, Handle h) { e.tick(); return e.engine().spill_complete(h); },
           rg())
      .def("wait_spill", [](PyEngine& e, Handle h) { e.tick(); e.engine().wait_spill(h); }, rg())
      .def("start_restore",
           [](PyEngine& e, Handle h, std::uintptr_t dst, std::uint64_t stream, bool prefetch) {
             e.tick();
             return e.engine().start_restore(h, as_ptr(dst), stream, prefetch) == device::Status::kOk;
           },
           rg(), py::arg("handle"), py::arg("dst"), py::arg("stream"), py::arg("prefetch") = false)
      .def("finish_restore",
           [](PyEngine& e, Handle h, std::uint64_t stream, bool host_wait) {
             e.tick();
             return e.engine().finish_restore(h, stream, host_wait) == device::Status::kOk;
           },
           rg(), py::arg("handle"), py::arg("stream"), py::arg("host_wait"))
      .def("is_restoring", [](PyEngine& e, Handle h) { return e.engine().is_restoring(h); }, rg())
      .def("copy_to_host",
           [](PyEngine& e, Handle h, std::uintptr_t dst) {
             e.tick();
             return e.engine().copy_to_host(h, as_ptr(dst));
           },
           rg(), "Synchronous fallback: the entry's bytes into host memory.")
      .def("release", [](PyEngine& e, Handle h) { e.tick(); e.engine().release(h); }, rg())
      .def("prefetch_candidates",
           [](PyEngine& e, std::size_t lookahead) {
             e.tick();
             return e.engine().prefetch_candidates(lookahead);
           },
           rg())
      .def("end_iteration", [](PyEngine& e) { e.engine().end_iteration(); }, rg())
      .def("tier_of",
           [](PyEngine& e, Handle h) -> py::object {
             const auto t = e.engine().tier_of(h);
             if (!t) return py::none();
             return py::str(*t == spill::Tier::kPinned ? "pinned" : "ssd");
           })
      .def("stats", [](PyEngine& e) { return stats_dict(e.engine().stats()); })
      .def("drain_io", [](PyEngine& e) { e.engine().drain_io(); }, rg())
      .def_property_readonly("ssd_dir", [](PyEngine& e) { return e.engine().ssd_dir(); })
      .def_property_readonly("is_sim", &PyEngine::is_sim)
      .def("fail_copy_at", [](PyEngine& e, std::uint64_t n) { e.sim().fail_copy_at(n); },
           "Sim only: the nth copy from now fails.")
      .def("fail_pinned_at", [](PyEngine& e, std::uint64_t n) { e.sim().fail_pinned_at(n); },
           "Sim only: the nth pinned allocation from now fails (call before init).")
      .def("fail_ssd_write_at",
           [](PyEngine& e, std::uint64_t n) {
             if (!e.engine().ssd()) throw py::value_error("timeshare.spill: no SSD tier (spill='host+ssd', after init)");
             e.engine().ssd()->fail_write_at(n);
           });

  m.def("register_make_room",
        [](py::function fn) {
          auto held = hold(std::move(fn));
          return spill::register_make_room([held](int device, std::size_t bytes) -> std::size_t {
            py::gil_scoped_acquire gil;
            return (*held)(device, bytes).cast<std::size_t>();
          });
        },
        py::arg("fn"),
        "Register fn(device, bytes) -> bytes freed, called by the allocator (outside its lock) "
        "when an allocation would pass the budget; returns a token.");
  m.def("unregister_make_room", &spill::unregister_make_room, py::arg("token"));
  m.def("make_room", &spill::make_room, py::arg("device"), py::arg("bytes"), rg(),
        "Ask the registered callbacks to free `bytes` on `device` (what the allocator calls).");
}

}  // namespace timeshare::python
