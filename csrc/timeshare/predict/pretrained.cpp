#include "timeshare/predict/pretrained.h"

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <set>
#include <utility>

#ifdef __linux__
#include <dlfcn.h>
#endif

#include "timeshare/common/log.h"

namespace timeshare::predict {

namespace {

constexpr std::uint64_t kFnvOffset = 0xcbf29ce484222325ull;
constexpr std::uint64_t kFnvPrime = 0x100000001b3ull;
constexpr std::size_t kHeaderBytes = 8 + 4 + 3 * 4 + 8;
// A sanity bound far above any shape the options allow (a corrupt count must not allocate GiBs).
constexpr std::uint64_t kMaxParams = std::uint64_t{1} << 24;

std::uint64_t fnv1a(const unsigned char* p, std::size_t n, std::uint64_t h = kFnvOffset) {
  for (std::size_t i = 0; i < n; ++i) h = (h ^ p[i]) * kFnvPrime;
  return h;
}

template <typename T>
void put(std::string* out, T v) {
  unsigned char b[sizeof(T)];
  std::memcpy(b, &v, sizeof(T));   // little-endian hosts only (x86-64, aarch64)
  out->append(reinterpret_cast<const char*>(b), sizeof(T));
}

template <typename T>
T get(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}

WeightsLoad fail(WeightsLoad r, WeightsStatus s, std::string why) {
  r.status = s;
  r.message = std::move(why);
  return r;
}

}  // namespace

const char* to_string(WeightsStatus s) noexcept {
  switch (s) {
    case WeightsStatus::kLoaded: return "loaded";
    case WeightsStatus::kDisabled: return "disabled";
    case WeightsStatus::kMissing: return "missing";
    case WeightsStatus::kMismatch: return "mismatch";
    case WeightsStatus::kCorrupt: return "corrupt";
  }
  return "?";
}

bool save_lstm_weights(const std::string& path, const LstmParams<float>& m,
                       std::uint32_t feature_set_version, std::string* error) {
  if (m.p.size() != m.shape.param_count()) {
    if (error) *error = "parameter count does not match the shape";
    return false;
  }
  std::string buf(kWeightsMagic, sizeof kWeightsMagic);
  put<std::uint32_t>(&buf, feature_set_version);
  put<std::int32_t>(&buf, m.shape.input);
  put<std::int32_t>(&buf, m.shape.hidden);
  put<std::int32_t>(&buf, m.shape.head_hidden);
  put<std::uint64_t>(&buf, m.p.size());
  for (float v : m.p) put<float>(&buf, v);
  put<std::uint64_t>(&buf, fnv1a(reinterpret_cast<const unsigned char*>(buf.data()), buf.size()));
  const std::string tmp = path + ".tmp";
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    if (error) *error = "cannot write " + tmp;
    return false;
  }
  const bool ok = std::fwrite(buf.data(), 1, buf.size(), f) == buf.size();
  if (std::fclose(f) != 0 || !ok || std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    if (error) *error = "cannot write " + path;
    return false;
  }
  return true;
}

WeightsLoad read_lstm_weights(const std::string& path, const LstmShape& expect,
                              std::uint32_t feature_set_version) {
  WeightsLoad r;
  r.path = path;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return fail(std::move(r), WeightsStatus::kMissing, "no such file");
  std::string buf;
  char chunk[1 << 14];
  std::size_t n = 0;
  while ((n = std::fread(chunk, 1, sizeof chunk, f)) > 0) {
    buf.append(chunk, n);
    if (buf.size() > kHeaderBytes + 4 * kMaxParams + 8) break;
  }
  std::fclose(f);
  const auto* p = reinterpret_cast<const unsigned char*>(buf.data());
  if (buf.size() < kHeaderBytes + 8 || std::memcmp(p, kWeightsMagic, sizeof kWeightsMagic) != 0) {
    return fail(std::move(r), WeightsStatus::kCorrupt, "not a timeshare LSTM weights file");
  }
  const auto version = get<std::uint32_t>(p + 8);
  const LstmShape shape{get<std::int32_t>(p + 12), get<std::int32_t>(p + 16),
                        get<std::int32_t>(p + 20)};
  const auto count = get<std::uint64_t>(p + 24);
  if (count > kMaxParams || buf.size() != kHeaderBytes + 4 * count + 8) {
    return fail(std::move(r), WeightsStatus::kCorrupt, "truncated or oversized file");
  }
  const std::size_t body = kHeaderBytes + 4 * count;
  if (fnv1a(p, body) != get<std::uint64_t>(p + body)) {
    return fail(std::move(r), WeightsStatus::kCorrupt, "checksum does not match");
  }
  if (version != feature_set_version || shape.input != expect.input ||
      shape.hidden != expect.hidden || shape.head_hidden != expect.head_hidden ||
      count != expect.param_count()) {
    return fail(std::move(r), WeightsStatus::kMismatch,
                "feature set " + std::to_string(version) + " shape " +
                    std::to_string(shape.input) + "x" + std::to_string(shape.hidden) + "x" +
                    std::to_string(shape.head_hidden) + ", expected feature set " +
                    std::to_string(feature_set_version) + " shape " +
                    std::to_string(expect.input) + "x" + std::to_string(expect.hidden) + "x" +
                    std::to_string(expect.head_hidden));
  }
  r.params.shape = expect;
  r.params.p.resize(count);
  std::memcpy(r.params.p.data(), p + kHeaderBytes, 4 * count);
  r.status = WeightsStatus::kLoaded;
  return r;
}

std::string resolve_weights_path(const std::string& option) {
  if (option == kWeightsNone) return "";
  if (!option.empty()) return option;
  if (const char* env = std::getenv(kWeightsEnv); env && *env) {
    return std::string(env) == kWeightsNone ? "" : std::string(env);
  }
#ifdef __linux__
  Dl_info info{};
  if (dladdr(reinterpret_cast<void*>(&resolve_weights_path), &info) && info.dli_fname) {
    std::string lib = info.dli_fname;
    const std::size_t slash = lib.rfind('/');
    return (slash == std::string::npos ? std::string() : lib.substr(0, slash + 1)) +
           kWeightsFileName;
  }
#endif
  return kWeightsFileName;
}

WeightsLoad load_pretrained(const std::string& option, const LstmShape& expect,
                            std::uint32_t feature_set_version) {
  const std::string path = resolve_weights_path(option);
  if (path.empty()) {
    WeightsLoad r;
    r.status = WeightsStatus::kDisabled;
    return r;
  }
  WeightsLoad r = read_lstm_weights(path, expect, feature_set_version);
  static std::mutex mu;
  static std::set<std::pair<std::string, int>> reported;
  std::lock_guard<std::mutex> lk(mu);
  if (!reported.emplace(path, int(r.status)).second) return r;
  if (r.status == WeightsStatus::kLoaded) {
    log().info("pretrained LSTM weights loaded from {}", path);
  } else {
    log().warn("pretrained LSTM weights {} ({}: {}): the LSTM starts from scratch", path,
               to_string(r.status), r.message);
  }
  return r;
}

}  // namespace timeshare::predict
