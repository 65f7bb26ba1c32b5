// The TCP transport's frame codec (DESIGN §5, docs/transports.md "TCP"), without any I/O:
// decoding bytes into frames with the framing checks, encoding frames and error payloads,
// and the read buffer a connection parses from. Pure code (no asio, no threads), so the
// plugin, the unit tests and the libFuzzer target (tests/fuzz/tcp_frame_fuzz.cpp) share it.
//
// Frames, big-endian:  u32 length-of-rest | u8 kind | u16 topic-length | topic | payload
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

namespace fingate::tcpframe {

enum Kind : uint8_t { kPublish = 1, kSubscribe = 2, kUnsubscribe = 3, kPing = 4, kPong = 5, kError = 6 };

constexpr size_t kLengthBytes = 4;  // u32 length-of-rest
constexpr size_t kHeaderBytes = 7;  // u32 length-of-rest + u8 kind + u16 topic length
constexpr size_t kMaxTopicBytes = 0xFFFF;

// Sets of kinds a receiver accepts (bit k = kind k).
constexpr uint32_t kindBit(uint8_t kind) { return kind < 32 ? (1u << kind) : 0u; }
// What a listen-mode server accepts from its clients: publish, subscribe, unsubscribe, ping.
constexpr uint32_t kFromClients = kindBit(kPublish) | kindBit(kSubscribe) | kindBit(kUnsubscribe) | kindBit(kPing);
// What a connect-mode client accepts from its server: publish, ping, pong, error.
constexpr uint32_t kFromServer = kindBit(kPublish) | kindBit(kPing) | kindBit(kPong) | kindBit(kError);

inline uint32_t be32(const unsigned char* p) {
  return uint32_t(p[0]) << 24 | uint32_t(p[1]) << 16 | uint32_t(p[2]) << 8 | uint32_t(p[3]);
}
inline uint16_t be16(const unsigned char* p) { return uint16_t(uint16_t(p[0]) << 8 | uint16_t(p[1])); }

// The result of looking at the front of a byte buffer.
struct Decoded {
  enum Status { kFrame, kNeedMore, kError };
  Status status = kNeedMore;
  // kFrame: the frame (views into the decoded bytes) and its size including the length field.
  uint8_t kind = 0;
  std::string_view topic, payload;
  // kFrame: bytes the frame occupies. kNeedMore: the whole frame's size once its length field
  // arrived (so the caller can size its buffer), else 0.
  size_t size = 0;
  // kError: one of the fixed error codes of docs/transports.md ("frame too short", "frame too
  // large", "topic length past frame", "unknown kind") and a human detail.
  const char* error = nullptr;
  std::string detail;
};

// Decodes the frame at the front of `bytes`. Framing errors are reported as soon as the bytes
// that show them are there (a too large length with only its 4 bytes in), in this order:
// length < 3, length > max_frame_bytes, kind not in `allowed_kinds`, topic length past the
// frame. Never reads past bytes.size(); allocates only for an error's detail.
Decoded decodeFrame(std::string_view bytes, uint32_t max_frame_bytes, uint32_t allowed_kinds);

// The size of an encoded frame (topic.size() <= 0xFFFF is the caller's check).
inline size_t frameSize(size_t topic_len, size_t payload_len) { return kHeaderBytes + topic_len + payload_len; }
// Writes a whole frame into out[0 .. frameSize(topic, payload)).
void encodeFrameInto(char* out, uint8_t kind, std::string_view topic, std::string_view payload);
// A whole frame as a string.
std::string encodeFrame(uint8_t kind, std::string_view topic, std::string_view payload);

// A JSON string literal: quotes, backslashes and control characters escaped; bytes that are
// not valid UTF-8 become U+FFFD, so the result is always valid JSON (and valid UTF-8).
void appendJsonString(std::string& out, std::string_view s);
// The payload of an error frame: {"error":"...","detail":"..."}.
std::string errorJson(std::string_view error, std::string_view detail);
// Splits a close reason given to close_session into the error frame's code and detail:
// "<code>: <detail>" where <code> is 1..64 bytes of lowercase ASCII letters, digits, spaces
// and '_' gives {code, detail}; a reason that is only such a code gives {code, ""}; any other
// text gives {"closed by the gateway", reason}; an empty reason gives {"slow consumer", ""}.
struct CloseReason {
  std::string_view error, detail;
};
CloseReason splitCloseReason(std::string_view reason);

// The bytes a connection has received and not consumed yet, with the buffer policy of the
// TCP plugin: room for a read of at least `chunk` bytes; a frame larger than that gets a
// buffer that doubles with the bytes actually received (never more than the frame needs), and
// after a large frame was consumed the buffer shrinks back, so an idle connection never keeps
// a large allocation. Buffers of map_threshold bytes or more are anonymous mappings (mmap):
// they grow with mremap (no copy), only the pages actually received are resident, and a
// released one goes back to the system at once instead of staying in the allocator's free
// lists. No I/O: the caller reads into prepare()'s window and commit()s.
class FrameBuffer {
 public:
  explicit FrameBuffer(size_t chunk = 64 * 1024, size_t map_threshold = 256 * 1024)
      : chunk_(chunk ? chunk : 1), map_threshold_(map_threshold) {}
  ~FrameBuffer() { release(); }
  FrameBuffer(const FrameBuffer&) = delete;
  FrameBuffer& operator=(const FrameBuffer&) = delete;

  struct Window {
    char* data;
    size_t size;
  };
  // Space for the next read. frame_size: the size of the frame at the front when known
  // (Decoded::size of kNeedMore), else 0. The window is never empty. Throws std::bad_alloc.
  Window prepare(size_t frame_size = 0);
  // n bytes of the window were filled.
  void commit(size_t n) { end_ += n; }
  // The received, unconsumed bytes.
  std::string_view data() const { return std::string_view(buf_ + beg_, end_ - beg_); }
  size_t size() const { return end_ - beg_; }
  bool empty() const { return beg_ == end_; }
  // The first n bytes of data() were used.
  void consume(size_t n) {
    beg_ += n;
    if (beg_ == end_) beg_ = end_ = 0;
  }
  // Drops everything and releases a buffer larger than one chunk.
  void clear();
  // The allocated bytes.
  size_t capacity() const { return cap_; }
  bool mapped() const { return mapped_; }

 private:
  void reallocate(size_t cap);
  void release();
  size_t chunk_;
  size_t map_threshold_;
  char* buf_ = nullptr;
  size_t cap_ = 0;
  bool mapped_ = false;
  size_t beg_ = 0, end_ = 0;  // data() is [beg_, end_)
};

}  // namespace fingate::tcpframe
