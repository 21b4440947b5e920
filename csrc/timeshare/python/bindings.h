// timeshare._C — one register_* function per area; module.cpp only calls them.
#pragma once

#include <pybind11/pybind11.h>

namespace timeshare::python {

void register_allocator(pybind11::module_& m);  // options, stats, sim allocators, registry
void register_trace(pybind11::module_& m);      // replay of compact traces (trace/)
void register_predict(pybind11::module_& m);    // predictor evaluation (predict/)
void register_spill(pybind11::module_& m);      // spill engine (spill/)

}  // namespace timeshare::python
