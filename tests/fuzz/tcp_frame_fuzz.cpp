// libFuzzer target for the TCP plugin's frame codec (plugins/tcp/frame.hpp): the decoder, the
// read buffer a connection parses from, the error-frame JSON and the close-reason split.
//
// Input: byte 0 chooses the limits (max_frame_bytes, which side's kinds are accepted), byte 1
// seeds how the rest is cut into reads and whether buffers are mapped; the rest is the byte stream a peer sent.
// Checked: the decoder never reads out of bounds (ASan), frames lie inside the input and add up,
// decoding the stream whole and decoding it read by read through FrameBuffer give the same
// frames and the same error, re-encoding a frame gives its bytes back, the buffer never holds
// far more than it was given, and error JSON is valid UTF-8 without raw control characters.
//
// Build (clang only): cmake -S . -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ \
//   -DCMAKE_C_COMPILER=clang -DFINGATE_BENCH=OFF && ninja -C build-fuzz tcp_frame_fuzz
// Run:   build-fuzz/bin/tcp_frame_fuzz -max_total_time=30 -max_len=20000 tests/fuzz/corpus/tcp_frame
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>
#include <vector>

#include "frame.hpp"

#include "fuzz_check.hpp"

using namespace fingate::tcpframe;

namespace {


struct Seen {
  uint8_t kind;
  std::string topic, payload;
  bool operator==(const Seen& o) const { return kind == o.kind && topic == o.topic && payload == o.payload; }
};

struct Outcome {
  std::vector<Seen> frames;
  std::string error;  // empty: ended needing more (or exactly at a frame boundary)
};

// Validates a decoded frame against the bytes it came from.
void checkFrame(const Decoded& d, std::string_view bytes, uint32_t max_frame, uint32_t allowed) {
  CHECK(d.size >= kHeaderBytes);
  CHECK(d.size <= bytes.size());
  CHECK(d.size - kLengthBytes <= max_frame);
  CHECK(d.topic.size() + d.payload.size() + kHeaderBytes == d.size);
  CHECK(d.topic.data() == bytes.data() + kHeaderBytes);
  CHECK(d.payload.data() == d.topic.data() + d.topic.size());
  CHECK((allowed & kindBit(d.kind)) != 0);
  CHECK(d.topic.size() <= kMaxTopicBytes);
  // Re-encoding gives exactly the frame's bytes.
  const std::string again = encodeFrame(d.kind, d.topic, d.payload);
  CHECK(again.size() == d.size);
  CHECK(std::memcmp(again.data(), bytes.data(), d.size) == 0);
}

Outcome decodeWhole(std::string_view in, uint32_t max_frame, uint32_t allowed) {
  Outcome out;
  while (true) {
    const Decoded d = decodeFrame(in, max_frame, allowed);
    if (d.status == Decoded::kError) {
      CHECK(d.error != nullptr && *d.error != '\0');
      CHECK(!d.detail.empty());
      out.error = d.error;
      return out;
    }
    if (d.status == Decoded::kNeedMore) {
      CHECK(d.size == 0 || d.size > in.size());
      if (in.size() >= kLengthBytes) CHECK(d.size >= kHeaderBytes);
      return out;
    }
    checkFrame(d, in, max_frame, allowed);
    out.frames.push_back(Seen{d.kind, std::string(d.topic), std::string(d.payload)});
    in.remove_prefix(d.size);
  }
}

// The same bytes arriving in reads of pseudo-random sizes, parsed the way a connection does.
Outcome decodeStreamed(std::string_view in, uint32_t max_frame, uint32_t allowed, uint8_t seed) {
  Outcome out;
  const size_t chunk = 8 + (seed % 61);
  // Half the cases keep every buffer on the heap (ASan sees its bounds), half map buffers from
  // one page on (the mmap/mremap path).
  FrameBuffer buf(chunk, (seed & 0x80) ? 4096 : SIZE_MAX);
  uint32_t rng = 0x9e3779b9u ^ seed;
  size_t fed = 0, next_size = 0;
  while (true) {
    // Consume what is complete.
    while (true) {
      const Decoded d = decodeFrame(buf.data(), max_frame, allowed);
      if (d.status == Decoded::kError) {
        out.error = d.error;
        return out;
      }
      if (d.status == Decoded::kNeedMore) {
        next_size = d.size;
        break;
      }
      checkFrame(d, buf.data(), max_frame, allowed);
      out.frames.push_back(Seen{d.kind, std::string(d.topic), std::string(d.payload)});
      buf.consume(d.size);
    }
    if (fed == in.size()) return out;
    const FrameBuffer::Window w = buf.prepare(next_size);
    CHECK(w.size > 0);
    // Never much more memory than the bytes it holds (or its frame's size) call for.
    // Never much more memory than the bytes it holds (or its frame's size) call for; a mapped
    // buffer is rounded up to whole pages (one page of slack: with the fuzzer's tiny chunks a
    // page is many chunks, with the real 64 KiB chunk it is noise).
    const size_t slack = buf.mapped() ? 4096 : 0;
    CHECK(buf.capacity() <= 2 * buf.size() + 2 * chunk + slack || buf.capacity() <= 4 * chunk + slack);
    rng = rng * 1103515245u + 12345u;
    size_t n = 1 + (rng >> 8) % (2 * chunk);
    n = std::min({n, w.size, in.size() - fed});
    std::memcpy(w.data, in.data() + fed, n);
    buf.commit(n);
    fed += n;
  }
}

bool validUtf8NoControls(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c < 0x20 || c == 0x7f) return false;
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
    if (n == 0 || c > 0xF4 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return false;
    i += n;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) return 0;
  const uint8_t cfg = data[0], seed = data[1];
  const std::string_view in(reinterpret_cast<const char*>(data + 2), size - 2);
  static const uint32_t kLimits[] = {16, 64, 1024, 1048576, 0xffffffffu};
  const uint32_t max_frame = kLimits[(cfg & 0x7) % 5];
  const uint32_t allowed = (cfg & 0x8) ? kFromServer : (cfg & 0x10) ? 0xffffffffu : kFromClients;

  const Outcome whole = decodeWhole(in, max_frame, allowed);
  const Outcome streamed = decodeStreamed(in, max_frame, allowed, seed);
  CHECK(whole.frames == streamed.frames);
  CHECK(whole.error == streamed.error);

  // Error frames quote client text: always valid JSON string content.
  const std::string json = errorJson(in.substr(0, 64), in);
  CHECK(json.rfind("{\"error\":\"", 0) == 0);
  CHECK(json.back() == '}');
  CHECK(validUtf8NoControls(json));
  const CloseReason r = splitCloseReason(in);
  CHECK(!r.error.empty());
  CHECK(r.error.size() <= in.size() || r.error == "slow consumer" || r.error == "closed by the gateway");
  return 0;
}
