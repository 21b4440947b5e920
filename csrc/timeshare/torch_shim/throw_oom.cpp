// libtimeshare_torch_oom.so — the one piece of timeshare built against PyTorch's c10 headers.
//
// PyTorch's Python layer turns a c10::OutOfMemoryError thrown under an allocation into
// torch.OutOfMemoryError (what training code catches to lower the batch size), but any other
// exception into a plain RuntimeError. The allocator library itself stays free of libtorch so
// one build serves every torch 2.x; it loads this shim (built at install time against the
// installed torch) only when an allocation fails, and falls back to std::runtime_error when the
// shim is missing or cannot load.
#include <string>

#include <c10/util/Exception.h>

extern "C" __attribute__((visibility("default"))) [[noreturn]] void timeshare_throw_oom(
    const char* message) {
  throw c10::OutOfMemoryError(c10::SourceLocation{"timeshare_malloc", __FILE__, __LINE__},
                              std::string(message ? message : "CUDA out of memory (timeshare)"));
}
