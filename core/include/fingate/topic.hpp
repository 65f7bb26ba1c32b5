// MQTT-style topic filters, header-only so plugins can use them without linking the core.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace fingate {

// True when `topic` matches `filter`: levels split on '/', '+' matches exactly one level,
// '#' (last level only) matches the rest including the parent level ("a/#" matches "a").
inline bool topicMatches(std::string_view filter, std::string_view topic) noexcept {
  size_t f = 0, t = 0;
  while (true) {
    size_t fe = filter.find('/', f);
    std::string_view flevel = filter.substr(f, fe == std::string_view::npos ? std::string_view::npos : fe - f);
    if (flevel == "#") return true;
    if (t > topic.size()) return false;
    size_t te = topic.find('/', t);
    std::string_view tlevel = topic.substr(t, te == std::string_view::npos ? std::string_view::npos : te - t);
    if (flevel != "+" && flevel != tlevel) return false;
    if (fe == std::string_view::npos) return te == std::string_view::npos;
    if (te == std::string_view::npos) {
      // topic ended; only a trailing "/#" may still match ("a/#" matches "a")
      return filter.substr(fe + 1) == "#";
    }
    f = fe + 1;
    t = te + 1;
  }
}

inline bool hasWildcard(std::string_view filter) noexcept {
  return filter.find_first_of("+#") != std::string_view::npos;
}

// A filter is valid when '#' only appears as the whole last level and '+' only as a whole level.
inline bool isValidFilter(std::string_view filter) noexcept {
  if (filter.empty()) return false;
  size_t start = 0;
  while (true) {
    size_t end = filter.find('/', start);
    std::string_view level = filter.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    bool last = end == std::string_view::npos;
    if (level.find('#') != std::string_view::npos && (level != "#" || !last)) return false;
    if (level.find('+') != std::string_view::npos && level != "+") return false;
    if (last) return true;
    start = end + 1;
  }
}

// Well-formed UTF-8: no stray continuation bytes, no truncated sequences, no overlong forms, no
// surrogates, nothing above U+10FFFF.
inline bool isValidUtf8(std::string_view s) noexcept {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    size_t n;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      n = 1, cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      n = 2, cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      n = 3, cp = c & 0x07;
    } else {
      return false;
    }
    if (i + n >= s.size()) return false;  // the sequence needs bytes i+1 .. i+n
    for (size_t k = 1; k <= n; ++k) {
      const auto cc = static_cast<unsigned char>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) ||
        (cp >= 0xD800 && cp <= 0xDFFF))
      return false;
    i += n + 1;
  }
  return true;
}

}  // namespace fingate
