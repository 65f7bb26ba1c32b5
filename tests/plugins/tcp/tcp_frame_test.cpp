// Unit tests of the TCP plugin's frame codec (plugins/tcp/frame.hpp): no sockets, no asio.
// Regression cases found by the fuzz target (tests/fuzz/tcp_frame_fuzz.cpp) belong here too.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "frame.hpp"

namespace fingate::tcpframe {
namespace {

std::string header(uint32_t rest, uint8_t kind, uint16_t topic_len) {
  std::string s;
  for (int shift : {24, 16, 8, 0}) s.push_back(char(rest >> shift));
  s.push_back(char(kind));
  s.push_back(char(topic_len >> 8));
  s.push_back(char(topic_len));
  return s;
}

TEST(TcpFrame, EncodeDecodeRoundTrip) {
  const std::string payload("pay\0load", 8);
  const std::string f = encodeFrame(kPublish, "soarca", payload);
  ASSERT_EQ(f.size(), frameSize(6, 8));
  EXPECT_EQ(f.substr(0, 7), header(3 + 6 + 8, kPublish, 6));
  const Decoded d = decodeFrame(f, 1024, kFromClients);
  ASSERT_EQ(d.status, Decoded::kFrame);
  EXPECT_EQ(d.kind, kPublish);
  EXPECT_EQ(d.topic, "soarca");
  EXPECT_EQ(d.payload, payload);
  EXPECT_EQ(d.size, f.size());
  // Every proper prefix needs more; once the length is in, the whole size is known.
  for (size_t n = 0; n < f.size(); ++n) {
    const Decoded p = decodeFrame(std::string_view(f).substr(0, n), 1024, kFromClients);
    EXPECT_EQ(p.status, Decoded::kNeedMore) << n;
    EXPECT_EQ(p.size, n < 4 ? 0u : f.size()) << n;
  }
  // Empty topic and payload.
  const Decoded e = decodeFrame(encodeFrame(kPing, "", ""), 1024, kFromClients);
  ASSERT_EQ(e.status, Decoded::kFrame);
  EXPECT_EQ(e.size, 7u);
  EXPECT_TRUE(e.topic.empty());
  EXPECT_TRUE(e.payload.empty());
}

TEST(TcpFrame, FramingErrorsAsSoonAsTheBytesShowThem) {
  struct Case {
    std::string bytes;
    const char* error;
  };
  const std::vector<Case> cases = {
      {header(2, 1, 0).substr(0, 4), "frame too short"},
      {header(2000, 1, 0).substr(0, 4), "frame too large"},  // only the length is in
      {header(10, 9, 0).substr(0, 5), "unknown kind"},
      {header(10, 5, 0), "unknown kind"},  // a pong from a client
      {header(10, 0, 0), "unknown kind"},
      {header(5, 1, 10), "topic length past frame"},
  };
  for (const auto& c : cases) {
    const Decoded d = decodeFrame(c.bytes, 1024, kFromClients);
    ASSERT_EQ(d.status, Decoded::kError) << c.error;
    EXPECT_STREQ(d.error, c.error);
    EXPECT_FALSE(d.detail.empty());
  }
  // Kinds the other direction accepts.
  EXPECT_EQ(decodeFrame(encodeFrame(kPong, "", ""), 1024, kFromServer).status, Decoded::kFrame);
  EXPECT_EQ(decodeFrame(encodeFrame(kError, "", "{}"), 1024, kFromServer).status, Decoded::kFrame);
  EXPECT_EQ(decodeFrame(encodeFrame(kSubscribe, "x", ""), 1024, kFromServer).status, Decoded::kError);
  // The largest kind byte never shifts out of range.
  EXPECT_EQ(decodeFrame(header(3, 255, 0), 1024, kFromClients).status, Decoded::kError);
  EXPECT_EQ(decodeFrame(header(3, 32, 0), 1024, 0xffffffffu).status, Decoded::kError);
  // length-of-rest at the 32-bit maximum with a huge limit: size arithmetic does not wrap.
  const Decoded big = decodeFrame(header(0xffffffffu, 1, 0), 0xffffffffu, kFromClients);
  EXPECT_EQ(big.status, Decoded::kNeedMore);
  EXPECT_EQ(big.size, size_t(0xffffffffu) + 4);
}

TEST(TcpFrame, ErrorJsonIsAlwaysValid) {
  EXPECT_EQ(errorJson("slow consumer", "a \"quoted\"\\ thing\n"),
            R"({"error":"slow consumer","detail":"a \"quoted\"\\ thing\n"})");
  EXPECT_EQ(errorJson("x", std::string("\x01\x7f\xff", 3)), R"({"error":"x","detail":"\u0001\u007f\ufffd"})");
  EXPECT_EQ(errorJson("x", "h\xc3\xa9"), "{\"error\":\"x\",\"detail\":\"h\xc3\xa9\"}");  // valid UTF-8 kept
  EXPECT_EQ(errorJson("x", "\xed\xa0\x80"), R"({"error":"x","detail":"\ufffd\ufffd\ufffd"})");  // a surrogate
  EXPECT_EQ(errorJson("x", "\xe2\x82"), R"({"error":"x","detail":"\ufffd\ufffd"})");  // truncated
}

TEST(TcpFrame, CloseReasonSplitsIntoCodeAndDetail) {
  auto split = [](std::string_view r) {
    const CloseReason c = splitCloseReason(r);
    return std::string(c.error) + "|" + std::string(c.detail);
  };
  EXPECT_EQ(split("slow consumer: 5000 messages queued for 30 s"), "slow consumer|5000 messages queued for 30 s");
  EXPECT_EQ(split("slow_consumer"), "slow_consumer|");
  EXPECT_EQ(split(""), "slow consumer|");
  EXPECT_EQ(split("Session closed: 42"), "closed by the gateway|Session closed: 42");
  EXPECT_EQ(split("no colon here!"), "closed by the gateway|no colon here!");
  EXPECT_EQ(split(": empty code"), "closed by the gateway|: empty code");
}

TEST(TcpFrame, BufferGrowsWithTheFrameAndShrinksAfterIt) {
  const size_t chunk = 64 * 1024;
  FrameBuffer b(chunk);
  const std::string big = encodeFrame(kPublish, "big", std::string(1024 * 1024, 'x'));
  size_t fed = 0, max_cap = 0, frame_size = 0;
  while (true) {
    const Decoded d = decodeFrame(b.data(), 2 * 1024 * 1024, kFromClients);
    if (d.status == Decoded::kFrame) {
      EXPECT_EQ(d.payload.size(), 1024u * 1024u);
      b.consume(d.size);
      break;
    }
    ASSERT_EQ(d.status, Decoded::kNeedMore);
    frame_size = d.size;
    const auto w = b.prepare(frame_size);
    ASSERT_GT(w.size, 0u);
    const size_t n = std::min(w.size, big.size() - fed);
    std::memcpy(w.data, big.data() + fed, n);
    b.commit(n);
    fed += n;
    max_cap = std::max(max_cap, b.capacity());
    // Never more than twice what arrived (plus a chunk), and never more than the frame.
    EXPECT_LE(b.capacity(), std::max(2 * b.size() + chunk, chunk)) << fed;
  }
  EXPECT_EQ(fed, big.size());
  EXPECT_LE(max_cap, big.size() + 4096);  // mapped buffers are whole pages
  EXPECT_TRUE(b.mapped());                // 1 MiB: an anonymous mapping
  EXPECT_TRUE(b.empty());
  // The next read gives the large buffer back.
  b.prepare(0);
  EXPECT_LE(b.capacity(), chunk);
  EXPECT_FALSE(b.mapped());
  // A small partial frame left behind a big one does not keep the big buffer either.
  FrameBuffer c(chunk);
  const std::string two = big + encodeFrame(kPublish, "t", "abc");
  size_t off = 0;
  while (off < two.size() - 3) {  // all but the last 3 bytes
    const Decoded d = decodeFrame(c.data(), 2 * 1024 * 1024, kFromClients);
    if (d.status == Decoded::kFrame) {
      c.consume(d.size);
      continue;
    }
    const auto w = c.prepare(d.size);
    const size_t n = std::min(w.size, two.size() - 3 - off);
    std::memcpy(w.data, two.data() + off, n);
    c.commit(n);
    off += n;
  }
  Decoded d = decodeFrame(c.data(), 2 * 1024 * 1024, kFromClients);
  if (d.status == Decoded::kFrame) {
    c.consume(d.size);
    d = decodeFrame(c.data(), 2 * 1024 * 1024, kFromClients);
  }
  ASSERT_EQ(d.status, Decoded::kNeedMore);
  EXPECT_EQ(c.size(), 8u);  // the 11-byte frame (7-byte header, "t", "abc") but its last 3 bytes
  c.prepare(d.size);
  EXPECT_LE(c.capacity(), 2 * chunk);
  EXPECT_EQ(c.data().substr(0, 7), header(7, kPublish, 1));
  c.clear();
  EXPECT_TRUE(c.empty());
}

// The same stream through heap-only and mapped buffers, cut into odd reads: same frames.
TEST(TcpFrame, MappedAndHeapBuffersAgree) {
  std::string stream;
  for (int i = 0; i < 40; ++i)
    stream += encodeFrame(kPublish, "t" + std::to_string(i), std::string(size_t(i) * 9000 + 1, char('a' + i % 26)));
  for (size_t threshold : {size_t(4096), SIZE_MAX}) {
    FrameBuffer b(1000, threshold);
    size_t off = 0, frames = 0, next = 0, step = 1;
    while (true) {
      const Decoded d = decodeFrame(b.data(), 1 << 20, kFromClients);
      if (d.status == Decoded::kFrame) {
        EXPECT_EQ(d.topic, "t" + std::to_string(frames));
        EXPECT_EQ(d.payload, std::string(frames * 9000 + 1, char('a' + frames % 26)));
        b.consume(d.size);
        ++frames;
        continue;
      }
      ASSERT_EQ(d.status, Decoded::kNeedMore);
      if (off == stream.size()) break;
      next = d.size;
      const auto w = b.prepare(next);
      step = step * 7 % 5003 + 1;
      const size_t n = std::min({w.size, stream.size() - off, step});
      std::memcpy(w.data, stream.data() + off, n);
      b.commit(n);
      off += n;
    }
    EXPECT_EQ(frames, 40u) << threshold;
    EXPECT_TRUE(b.empty());
  }
}

}  // namespace
}  // namespace fingate::tcpframe
