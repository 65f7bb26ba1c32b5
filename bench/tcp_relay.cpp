// tcp_relay: the baseline fingate's TCP data path is compared with (bench/tcp_forward.cpp).
//
// A minimal raw relay of fingate's TCP frames
//   u32 length-of-rest | u8 kind | u16 topic-length | topic | payload   (big-endian)
// between two listening sockets, an "orchestrator" side and a "fins" side: every frame from any
// client of one side goes, unchanged, to every client of the other side. Nothing is parsed
// beyond the length prefix (no topics, no JSON, no subscriptions, no pings answered).
//
// One thread, level-triggered epoll, non-blocking sockets with TCP_NODELAY. Batching: each
// readable connection is read in large chunks (up to kReadBatch bytes per wake-up); the complete
// frames of a chunk are appended to each destination's output buffer with one copy; outputs are
// written once per epoll round (one write() covers every frame that arrived in that round).
// Back-pressure instead of drops: while any client of a side has more than kHighWater bytes
// queued, the relay stops reading from the other side (TCP flow control then slows the senders)
// until every queue of that side is below kLowWater. A frame that arrives while the other side
// has no client at all is dropped and counted (the benchmark retries its register until one
// comes through).
//
// Usage: tcp_relay [--orchestrator HOST:PORT] [--fins HOST:PORT] [--max-seconds S]
// Defaults 127.0.0.1:0 (any free port). Prints "orchestrator listening on 127.0.0.1:P" and
// "fins listening on 127.0.0.1:P". SIGTERM/SIGINT: prints counters and exits 0.
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

namespace {

constexpr size_t kReadChunk = 256 * 1024;     // one read()
constexpr size_t kReadBatch = 1024 * 1024;    // at most this much per connection per wake-up
constexpr size_t kHighWater = 4 * 1024 * 1024;  // a destination queue above this pauses the sources
constexpr size_t kLowWater = 1024 * 1024;
constexpr uint32_t kMaxFrame = 16 * 1024 * 1024;  // larger length-of-rest: the connection is closed

volatile std::sig_atomic_t g_stop = 0;

struct Conn {
  int fd = -1;
  int side = 0;  // 0 orchestrator, 1 fins
  std::vector<char> in;
  size_t in_len = 0;
  std::string out;
  size_t out_off = 0;
  bool reading = true;  // EPOLLIN armed
  bool writing = false; // EPOLLOUT armed
  size_t pending() const { return out.size() - out_off; }
};

struct Stats {
  uint64_t frames[2] = {0, 0};  // frames received from each side
  uint64_t bytes[2] = {0, 0};
  uint64_t dropped_no_peer = 0;
  uint64_t accepted = 0, closed = 0;
};

bool parseHostPort(const std::string& s, sockaddr_in& a) {
  auto colon = s.rfind(':');
  if (colon == std::string::npos) return false;
  a = {};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(std::atoi(s.c_str() + colon + 1)));
  return ::inet_pton(AF_INET, s.substr(0, colon).c_str(), &a.sin_addr) == 1;
}

int listenOn(const std::string& hp, int& port_out) {
  sockaddr_in a;
  if (!parseHostPort(hp, a)) return -1;
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  int one = 1;
  ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0 || ::listen(fd, 128) != 0) {
    ::close(fd);
    return -1;
  }
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  port_out = ntohs(a.sin_port);
  return fd;
}

class Relay {
 public:
  Relay(int lfd_orch, int lfd_fins) : lfd_{lfd_orch, lfd_fins} {
    ep_ = ::epoll_create1(EPOLL_CLOEXEC);
    for (int s = 0; s < 2; ++s) {
      epoll_event ev{};
      ev.events = EPOLLIN;
      ev.data.fd = lfd_[s];
      ::epoll_ctl(ep_, EPOLL_CTL_ADD, lfd_[s], &ev);
    }
  }

  void run(double max_seconds) {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(max_seconds);
    std::vector<epoll_event> evs(256);
    while (!g_stop && std::chrono::steady_clock::now() < deadline) {
      int n = ::epoll_wait(ep_, evs.data(), static_cast<int>(evs.size()), 200);
      if (n < 0) {
        if (errno == EINTR) continue;
        std::perror("epoll_wait");
        return;
      }
      for (int i = 0; i < n; ++i) {
        int fd = evs[i].data.fd;
        if (fd == lfd_[0] || fd == lfd_[1]) {
          acceptAll(fd == lfd_[0] ? 0 : 1);
          continue;
        }
        auto it = conns_.find(fd);
        if (it == conns_.end()) continue;
        Conn& c = *it->second;
        if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
          if (!readFrom(c)) {
            closeConn(fd);
            continue;
          }
        }
        if (evs[i].events & EPOLLOUT) dirty_.push_back(fd);
      }
      flushAll();
    }
  }

  const Stats& stats() const { return st_; }

 private:
  void acceptAll(int side) {
    for (int k = 0; k < 64; ++k) {
      int fd = ::accept4(lfd_[side], nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
      if (fd < 0) return;
      int one = 1;
      ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
      auto c = std::make_unique<Conn>();
      c->fd = fd;
      c->side = side;
      c->in.resize(kReadChunk);
      c->reading = !paused_[1 - side];  // the other side's queues may already be full
      epoll_event ev{};
      ev.events = c->reading ? uint32_t(EPOLLIN) : 0u;
      ev.data.fd = fd;
      ::epoll_ctl(ep_, EPOLL_CTL_ADD, fd, &ev);
      conns_[fd] = std::move(c);
      ++st_.accepted;
    }
  }

  void arm(Conn& c) {
    epoll_event ev{};
    ev.events = (c.reading ? EPOLLIN : 0u) | (c.writing ? EPOLLOUT : 0u);
    ev.data.fd = c.fd;
    ::epoll_ctl(ep_, EPOLL_CTL_MOD, c.fd, &ev);
  }

  void closeConn(int fd) {
    auto it = conns_.find(fd);
    if (it == conns_.end()) return;
    ::epoll_ctl(ep_, EPOLL_CTL_DEL, fd, nullptr);
    ::close(fd);
    conns_.erase(it);
    ++st_.closed;
  }

  // Reads up to kReadBatch bytes; forwards the complete frames. False: closed or broken (what
  // was complete before the end is still forwarded).
  bool readFrom(Conn& c) {
    size_t got_total = 0;
    bool open = true;
    while (got_total < kReadBatch) {
      if (c.in.size() - c.in_len < kReadChunk / 4) c.in.resize(std::max(c.in.size() * 2, c.in_len + kReadChunk));
      const size_t space = c.in.size() - c.in_len;
      ssize_t r = ::read(c.fd, c.in.data() + c.in_len, space);
      if (r == 0) {
        open = false;
        break;
      }
      if (r < 0) {
        if (errno == EINTR) continue;
        if (errno != EAGAIN && errno != EWOULDBLOCK) open = false;
        break;
      }
      c.in_len += static_cast<size_t>(r);
      got_total += static_cast<size_t>(r);
      if (static_cast<size_t>(r) < space) break;  // a short read: the socket is drained
    }
    return forward(c) && open;
  }

  // Forwards the complete frames at the start of c.in to every client of the other side.
  bool forward(Conn& c) {
    // Complete frames: walk the length prefixes only.
    size_t pos = 0;
    uint64_t frames = 0;
    bool bad = false;
    while (c.in_len - pos >= 4) {
      const auto* p = reinterpret_cast<const unsigned char*>(c.in.data() + pos);
      uint32_t rest = (uint32_t(p[0]) << 24) | (uint32_t(p[1]) << 16) | (uint32_t(p[2]) << 8) | uint32_t(p[3]);
      if (rest < 3 || rest > kMaxFrame) {
        bad = true;  // not this framing: forward what came before, then close
        break;
      }
      if (c.in_len - pos < 4 + static_cast<size_t>(rest)) break;
      pos += 4 + rest;
      ++frames;
    }
    if (pos == 0) return !bad;
    st_.frames[c.side] += frames;
    st_.bytes[c.side] += pos;
    bool any = false;
    for (auto& [fd, d] : conns_) {
      if (d->side == c.side) continue;
      if (d->out_off == d->out.size()) {
        d->out.clear();
        d->out_off = 0;
      }
      d->out.append(c.in.data(), pos);
      dirty_.push_back(fd);
      any = true;
    }
    if (!any) st_.dropped_no_peer += frames;
    std::memmove(c.in.data(), c.in.data() + pos, c.in_len - pos);
    c.in_len -= pos;
    return !bad;
  }

  // One write per dirty destination per round; then back-pressure bookkeeping.
  void flushAll() {
    for (int fd : dirty_) {
      auto it = conns_.find(fd);
      if (it == conns_.end()) continue;
      Conn& d = *it->second;
      bool broken = false;
      while (d.pending() > 0) {
        ssize_t w = ::send(d.fd, d.out.data() + d.out_off, d.pending(), MSG_NOSIGNAL);
        if (w < 0) {
          if (errno == EINTR) continue;
          if (errno != EAGAIN && errno != EWOULDBLOCK) broken = true;
          break;
        }
        d.out_off += static_cast<size_t>(w);
      }
      if (broken) {
        closeConn(fd);
        continue;
      }
      if (d.pending() == 0) {
        d.out.clear();
        d.out_off = 0;
      } else if (d.out_off > (1u << 20) && d.out_off > d.out.size() / 2) {
        d.out.erase(0, d.out_off);
        d.out_off = 0;
      }
      bool want = d.pending() > 0;
      if (want != d.writing) {
        d.writing = want;
        arm(d);
      }
    }
    dirty_.clear();
    // Per side: pause the other side's reading above the high water mark, resume below the low one.
    for (int side = 0; side < 2; ++side) {
      size_t worst = 0;
      for (auto& [fd, d] : conns_)
        if (d->side == side) worst = std::max(worst, d->pending());
      bool pause = paused_[side] ? worst > kLowWater : worst > kHighWater;
      if (pause == paused_[side]) continue;
      paused_[side] = pause;
      for (auto& [fd, s] : conns_)
        if (s->side != side && s->reading == pause) {
          s->reading = !pause;
          arm(*s);
        }
    }
  }

  int lfd_[2];
  int ep_ = -1;
  std::unordered_map<int, std::unique_ptr<Conn>> conns_;
  std::vector<int> dirty_;
  bool paused_[2] = {false, false};  // paused_[s]: side s's queues are full, the other side is not read
  Stats st_;
};

}  // namespace

int main(int argc, char** argv) {
  std::string orch = "127.0.0.1:0", fins = "127.0.0.1:0";
  double max_seconds = 600;
  for (int i = 1; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    if (k == "--orchestrator") orch = argv[i + 1];
    else if (k == "--fins") fins = argv[i + 1];
    else if (k == "--max-seconds") max_seconds = std::atof(argv[i + 1]);
    else {
      std::fprintf(stderr, "usage: tcp_relay [--orchestrator HOST:PORT] [--fins HOST:PORT] [--max-seconds S]\n");
      return 2;
    }
  }
  std::signal(SIGPIPE, SIG_IGN);
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_stop = 1; };
  ::sigaction(SIGTERM, &sa, nullptr);
  ::sigaction(SIGINT, &sa, nullptr);
  int po = 0, pf = 0;
  int lo = listenOn(orch, po), lf = listenOn(fins, pf);
  if (lo < 0 || lf < 0) {
    std::fprintf(stderr, "tcp_relay: cannot listen on %s / %s: %s\n", orch.c_str(), fins.c_str(), std::strerror(errno));
    return 1;
  }
  std::printf("orchestrator listening on 127.0.0.1:%d\nfins listening on 127.0.0.1:%d\n", po, pf);
  std::fflush(stdout);
  Relay r(lo, lf);
  r.run(max_seconds);
  const Stats& s = r.stats();
  std::printf("tcp_relay: frames from orchestrators %llu (%llu B), from fins %llu (%llu B), dropped (no peer) %llu, "
              "connections %llu accepted / %llu closed\n",
              (unsigned long long)s.frames[0], (unsigned long long)s.bytes[0], (unsigned long long)s.frames[1],
              (unsigned long long)s.bytes[1], (unsigned long long)s.dropped_no_peer, (unsigned long long)s.accepted,
              (unsigned long long)s.closed);
  return 0;
}
