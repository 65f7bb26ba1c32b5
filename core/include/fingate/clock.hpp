// The clocks the core reads: wall time for what is shown (dead letters, reports), the steady
// clock for what is measured (timeouts, ages).
#pragma once

#include <chrono>
#include <cstdint>

namespace fingate {

inline int64_t wallMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}
inline int64_t steadyNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
inline int64_t steadyMs() { return steadyNs() / 1000000; }

}  // namespace fingate
