// libFuzzer target for the config loader (core/include/fingate/config.hpp): parseConfig on any
// bytes.
//
// Checked (beside ASan/UBSan): the only exception that leaves parseConfig is ConfigError, its
// what() is "c.yaml:line:col: message" / "c.yaml: message" and names no position past the input;
// an accepted config has at least one endpoint, valid names, every route naming a defined
// endpoint, and parses to the same result a second time. ${ENV} expansion is exercised with one
// variable set (FUZZ_ENV) and others unset.
//
// Build and run: scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined).
#include <fingate/config.hpp>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "fuzz_check.hpp"

namespace {


size_t lines(const std::string& s) {
  size_t n = 1;
  for (char c : s) n += c == '\n' || c == '\r';
  return n;
}

bool sameConfig(const fingate::Config& a, const fingate::Config& b) {
  if (a.endpoints.size() != b.endpoints.size() || a.routes.size() != b.routes.size()) return false;
  for (size_t i = 0; i < a.endpoints.size(); ++i) {
    auto& x = a.endpoints[i];
    auto& y = b.endpoints[i];
    if (x.name != y.name || x.plugin != y.plugin || x.role != y.role || x.options.size() != y.options.size()) return false;
    for (size_t k = 0; k < x.options.size(); ++k)
      if (x.options[k].key != y.options[k].key || x.options[k].value != y.options[k].value) return false;
  }
  return a.admin.listen == b.admin.listen && a.admin.token == b.admin.token && a.state_dir == b.state_dir;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  ::setenv("FUZZ_ENV", "from-env", 1);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  fingate::Config cfg;
  try {
    cfg = fingate::parseConfig(text, "c.yaml");
  } catch (const fingate::ConfigError& e) {
    std::string what = e.what();
    CHECK(what.rfind("c.yaml", 0) == 0);
    CHECK(!e.message().empty());
    CHECK(e.mark().line >= 0 && static_cast<size_t>(e.mark().line) <= lines(text) + 1);
    return 0;
  }
  // Anything else escaping (a yaml-cpp exception, std::out_of_range, ...) ends the run here.
  CHECK(!cfg.endpoints.empty());
  for (auto& e : cfg.endpoints) {
    CHECK(!e.name.empty() && !e.plugin.empty());
    for (auto& o : e.options) CHECK(!o.key.empty());
  }
  for (auto& r : cfg.routes) {
    bool from = false, to = false;
    for (auto& e : cfg.endpoints) {
      from = from || e.name == r.from_endpoint;
      to = to || e.name == r.to_endpoint;
    }
    CHECK(from && to);
  }
  CHECK(cfg.admin.token.empty() || cfg.admin.token.size() >= 16);
  CHECK(sameConfig(cfg, fingate::parseConfig(text, "c.yaml")));
  return 0;
}
