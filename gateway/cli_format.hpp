// Small text helpers of the client tools (pub/sub, migrate and its reports).
#pragma once

#include <charconv>
#include <cstdint>
#include <fingate/fin_codec.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace fingate::cli {

// A JSON string, quotes included (the codec's escaping).
inline void appendJsonString(std::string& out, std::string_view s) {
  out += '"';
  fin::appendJsonEscaped(out, s);
  out += '"';
}

// The shortest text that reads back as v ("10", "2.5").
inline std::string numberText(double v) {
  char buf[32];
  auto res = std::to_chars(buf, buf + sizeof buf, v);
  return std::string(buf, res.ptr);
}

// "1 topic", "3 topics".
inline std::string plural(uint64_t n, const char* one, const char* many) {
  return std::to_string(n) + " " + (n == 1 ? one : many);
}

// "a, b, c".
inline std::string join(const std::vector<std::string>& v, const char* sep = ", ") {
  std::string out;
  for (auto& s : v) out += (out.empty() ? "" : sep) + s;
  return out;
}

}  // namespace fingate::cli
