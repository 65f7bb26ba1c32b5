// The TCP transport's frame codec; see frame.hpp.
#include "frame.hpp"

#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <new>

namespace fingate::tcpframe {

Decoded decodeFrame(std::string_view bytes, uint32_t max_frame_bytes, uint32_t allowed_kinds) {
  Decoded d;
  const size_t avail = bytes.size();
  if (avail < kLengthBytes) return d;  // kNeedMore, size unknown
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const uint32_t rest = be32(p);
  auto fail = [&](const char* error, std::string detail) {
    d.status = Decoded::kError;
    d.error = error;
    d.detail = std::move(detail);
    d.size = 0;
    return d;
  };
  if (rest < 3)
    return fail("frame too short", "length-of-rest is " + std::to_string(rest) + ", at least 3 is needed");
  if (rest > max_frame_bytes)
    return fail("frame too large", "length-of-rest is " + std::to_string(rest) + ", max_frame_bytes is " +
                                       std::to_string(max_frame_bytes));
  d.size = kLengthBytes + size_t(rest);
  if (avail >= 5 && (allowed_kinds & kindBit(p[4])) == 0)
    return fail("unknown kind", "frame kind " + std::to_string(p[4]) + " is not accepted here");
  if (avail < kHeaderBytes) return d;
  const uint16_t topic_len = be16(p + 5);
  if (3u + topic_len > rest)
    return fail("topic length past frame", "topic length " + std::to_string(topic_len) +
                                               " does not fit in length-of-rest " + std::to_string(rest));
  if (avail < d.size) return d;
  d.status = Decoded::kFrame;
  d.kind = p[4];
  d.topic = bytes.substr(kHeaderBytes, topic_len);
  d.payload = bytes.substr(kHeaderBytes + topic_len, rest - 3 - topic_len);
  return d;
}

void encodeFrameInto(char* out, uint8_t kind, std::string_view topic, std::string_view payload) {
  const uint32_t rest = static_cast<uint32_t>(3 + topic.size() + payload.size());
  auto* p = reinterpret_cast<unsigned char*>(out);
  p[0] = static_cast<unsigned char>(rest >> 24);
  p[1] = static_cast<unsigned char>(rest >> 16);
  p[2] = static_cast<unsigned char>(rest >> 8);
  p[3] = static_cast<unsigned char>(rest);
  p[4] = kind;
  p[5] = static_cast<unsigned char>(topic.size() >> 8);
  p[6] = static_cast<unsigned char>(topic.size());
  if (!topic.empty()) std::memcpy(p + kHeaderBytes, topic.data(), topic.size());
  if (!payload.empty()) std::memcpy(p + kHeaderBytes + topic.size(), payload.data(), payload.size());
}

std::string encodeFrame(uint8_t kind, std::string_view topic, std::string_view payload) {
  std::string out(frameSize(topic.size(), payload.size()), '\0');
  encodeFrameInto(out.data(), kind, topic, payload);
  return out;
}

namespace {

// Length of the valid UTF-8 sequence starting at s[i] (a byte >= 0x80), 0 when invalid.
size_t utf8SequenceLength(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t n;
  uint32_t cp;
  if (c >= 0xC2 && c <= 0xDF) n = 2, cp = c & 0x1Fu;
  else if (c >= 0xE0 && c <= 0xEF) n = 3, cp = c & 0x0Fu;
  else if (c >= 0xF0 && c <= 0xF4) n = 4, cp = c & 0x07u;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const auto d = static_cast<unsigned char>(s[i + k]);
    if ((d & 0xC0u) != 0x80u) return 0;
    cp = cp << 6 | (d & 0x3Fu);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && (cp < 0x10000 || cp > 0x10FFFF)) || (cp >= 0xD800 && cp <= 0xDFFF))
    return 0;
  return n;
}

bool isCodeChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == ' ' || c == '_'; }

bool isCode(std::string_view s) {
  if (s.empty() || s.size() > 64 || s.front() == ' ' || s.back() == ' ') return false;
  return std::all_of(s.begin(), s.end(), isCodeChar);
}

}  // namespace

void appendJsonString(std::string& out, std::string_view s) {
  out += '"';
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      const size_t n = utf8SequenceLength(s, i);
      if (n == 0) {
        out += "\\ufffd";
        ++i;
      } else {
        out.append(s.substr(i, n));
        i += n;
      }
      continue;
    }
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\r': out += "\\r"; break;
      case '\t': out += "\\t"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        if (c < 0x20 || c == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04x", c);
          out += buf;
        } else {
          out += static_cast<char>(c);
        }
    }
    ++i;
  }
  out += '"';
}

std::string errorJson(std::string_view error, std::string_view detail) {
  std::string out = "{\"error\":";
  appendJsonString(out, error);
  out += ",\"detail\":";
  appendJsonString(out, detail);
  out += '}';
  return out;
}

CloseReason splitCloseReason(std::string_view reason) {
  if (reason.empty()) return {"slow consumer", ""};
  if (isCode(reason)) return {reason, ""};
  const size_t colon = reason.find(':');
  if (colon != std::string_view::npos && isCode(reason.substr(0, colon))) {
    std::string_view detail = reason.substr(colon + 1);
    while (!detail.empty() && detail.front() == ' ') detail.remove_prefix(1);
    return {reason.substr(0, colon), detail};
  }
  return {"closed by the gateway", reason};
}

// ---- FrameBuffer ---------------------------------------------------------------------------

void FrameBuffer::release() {
  if (!buf_) return;
  if (mapped_) ::munmap(buf_, cap_);
  else delete[] buf_;
  buf_ = nullptr;
  cap_ = 0;
  mapped_ = false;
}

void FrameBuffer::reallocate(size_t cap) {
  const size_t live = end_ - beg_;
  if (cap >= map_threshold_) {
    static const size_t page = [] {
      const long p = ::sysconf(_SC_PAGESIZE);
      return p > 0 ? size_t(p) : size_t(4096);
    }();
    cap = (cap + page - 1) / page * page;
    if (mapped_ && cap > cap_) {  // grow the mapping: the kernel moves pages, nothing is copied
      if (beg_ > 0) std::memmove(buf_, buf_ + beg_, live);
      void* p = ::mremap(buf_, cap_, cap, MREMAP_MAYMOVE);
      if (p == MAP_FAILED) throw std::bad_alloc();
      buf_ = static_cast<char*>(p);
      cap_ = cap;
      beg_ = 0;
      end_ = live;
      return;
    }
    void* p = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    if (live) std::memcpy(p, buf_ + beg_, live);
    release();
    buf_ = static_cast<char*>(p);
    cap_ = cap;
    mapped_ = true;
  } else {
    char* fresh = new char[cap];  // default-initialized: no memset
    if (live) std::memcpy(fresh, buf_ + beg_, live);
    release();
    buf_ = fresh;
    cap_ = cap;
  }
  beg_ = 0;
  end_ = live;
}

FrameBuffer::Window FrameBuffer::prepare(size_t frame_size) {
  const size_t live = end_ - beg_;
  if (live == 0) beg_ = end_ = 0;
  // The capacity this read wants: a chunk past what is buffered (many small frames per read);
  // for a frame larger than a chunk, double with what arrived, capped at the frame's size (a
  // slow sender of a big frame is not given memory it has not filled, and the buffer never
  // outgrows the frame). frame_size > live whenever it is given: the frame is unfinished.
  size_t need = live + chunk_;
  if (frame_size > chunk_ && frame_size > live) need = std::min(frame_size, std::max(need, 2 * live));
  if (cap_ > 4 * chunk_ && cap_ > 2 * need) {
    reallocate(need);  // a large frame was consumed: give the memory back
  } else if (cap_ - beg_ < need) {
    if (cap_ >= need) {  // fits once compacted
      std::memmove(buf_, buf_ + beg_, live);
      beg_ = 0;
      end_ = live;
    } else {
      reallocate(need);
    }
  }
  return Window{buf_ + end_, cap_ - end_};
}

void FrameBuffer::clear() {
  beg_ = end_ = 0;
  if (cap_ > chunk_) release();
}

}  // namespace fingate::tcpframe
