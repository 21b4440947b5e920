#include "timeshare/python/bindings.h"

namespace timeshare::python {
// Areas whose binding file has not landed yet are declared weak so the module still builds.
[[gnu::weak]] void register_predict(pybind11::module_& m);
[[gnu::weak]] void register_spill(pybind11::module_& m);
[[gnu::weak]] void register_trace(pybind11::module_& m);
}  // namespace timeshare::python

PYBIND11_MODULE(_C, m) {
  namespace tp = timeshare::python;
  m.doc() = "timeshare's compiled core: allocator, predictor, replay and spill engine";
  tp::register_allocator(m);
  if (&tp::register_trace) tp::register_trace(m);
  if (&tp::register_predict) tp::register_predict(m);
  if (&tp::register_spill) tp::register_spill(m);
}
