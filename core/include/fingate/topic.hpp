// MQTT-style topic filters, header-only so plugins can use them without linking the core.
#pragma once

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

}  // namespace fingate
