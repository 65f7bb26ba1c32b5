// libFuzzer target for the redaction of what the gateway shows (core/src/runtime/redact.hpp):
// redactJsonSecrets (a small JSON walker that must never leak and never crash on any bytes),
// redactText and redactUrlUserinfo.
//
// Checked (beside ASan/UBSan): redactText never adds quotes or backslashes (so JSON stays JSON)
// and is idempotent; redactJsonSecrets is idempotent; a secret planted behind a secret-named key
// after the fuzzed bytes, or in an `authentication` object or behind a secret-named key before
// them, never shows; the output never grows past a bounded overhead per value.
//
// Build and run: scripts/fuzz.sh (clang, -fsanitize=fuzzer,address,undefined).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "redact.hpp"

#include "fuzz_check.hpp"

namespace {


size_t count(const std::string& s, char c) {
  size_t n = 0;
  for (char x : s) n += x == c;
  return n;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string in(reinterpret_cast<const char*>(data), size);

  std::string text = fingate::redactText(in);
  CHECK(count(text, '"') <= count(in, '"'));
  CHECK(count(text, '\\') <= count(in, '\\'));
  CHECK(fingate::redactText(text) == text);
  (void)fingate::redactUrlUserinfo(in);

  std::string json = fingate::redactJsonSecrets(in);
  CHECK(fingate::redactJsonSecrets(json) == json);
  // Each replaced value costs at most "\"***\"" (5 bytes) for a 1-byte value; a cut adds "***".
  CHECK(json.size() <= in.size() * 5 + 3);

  // The fuzzed bytes as the value of other members of an object that also holds a secret:
  // whatever the bytes, the secret does not show. (Bytes that end the document early or break
  // the structure only make the walker cut sooner.)
  if (in.find("PLANTED") != std::string::npos) return 0;  // the fuzzer learns the marker: not a secret then
  std::string doc = "{\"a\":" + in + ",\"password\":\"PLANTED-SECRET\"}";
  std::string shown = fingate::redactText(fingate::redactJsonSecrets(doc));
  CHECK(shown.find("PLANTED-SECRET") == std::string::npos);
  // Secrets before the fuzzed bytes: whatever follows cannot take back what was hidden (an
  // `authentication` member after them is another matter: the bytes may close that object).
  std::string doc2 = "{\"authentication\":{\"k\":\"PLANTED-SECRET\",\"x\":" + in + "}}";
  CHECK(fingate::redactJsonSecrets(doc2).find("PLANTED-SECRET") == std::string::npos);
  std::string doc3 = "[{\"token\":\"PLANTED-SECRET\"}," + in + "]";
  CHECK(fingate::redactJsonSecrets(doc3).find("PLANTED-SECRET") == std::string::npos);
  return 0;
}
