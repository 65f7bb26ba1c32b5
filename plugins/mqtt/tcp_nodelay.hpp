// TCP_NODELAY for sockets that a library opened without a hook to set it.
//
// libpaho-mqtt3as never calls setsockopt (it imports only getsockopt), so its connections keep
// Nagle's algorithm: a small publish waits for the peer's delayed ACK (up to ~40 ms on Linux)
// whenever one is already unacknowledged. Paho offers no socket callback, so after a connect
// the caller finds the process's TCP sockets whose peer port is the broker's and sets the
// option on them. Setting it on another connection to a broker on that port is harmless.
//
// Other threads open and close descriptors meanwhile, so a number read from /proc may be closed
// or reused by the time it is looked at: every call on it then fails or sets TCP_NODELAY on
// another TCP socket to the same port, both harmless (nothing is read, written or closed).
// ThreadSanitizer reports these as races on the descriptor (see tests/tsan.supp).
#pragma once

#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <cstdlib>
#include <mutex>

namespace fingate {

// Calls fn(fd) for every TCP socket of the process whose peer port is peer_port (0: every TCP
// socket), one scan at a time in the process. Returns how many it found.
template <class Fn>
int forEachTcpSocketToPort(int peer_port, Fn&& fn) {
  static std::mutex one_scan_at_a_time;  // a scan must not trip over another scan's DIR
  std::lock_guard lk(one_scan_at_a_time);
  DIR* d = ::opendir("/proc/self/fd");
  if (!d) return 0;
  int n = 0;
  while (dirent* e = ::readdir(d)) {
    char* end = nullptr;
    long fd = std::strtol(e->d_name, &end, 10);
    if (*end != '\0' || end == e->d_name || fd < 0 || fd == ::dirfd(d)) continue;
    const int f = static_cast<int>(fd);
    struct stat st {};
    if (::fstat(f, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
    int type = 0;
    socklen_t len = sizeof type;
    if (::getsockopt(f, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM) continue;
    sockaddr_storage a{};
    socklen_t alen = sizeof a;
    if (::getpeername(f, reinterpret_cast<sockaddr*>(&a), &alen) != 0) continue;
    int port;
    if (a.ss_family == AF_INET)
      port = ntohs(reinterpret_cast<sockaddr_in*>(&a)->sin_port);
    else if (a.ss_family == AF_INET6)
      port = ntohs(reinterpret_cast<sockaddr_in6*>(&a)->sin6_port);
    else
      continue;
    if (peer_port && port != peer_port) continue;
    ++n;
    fn(f);
  }
  ::closedir(d);
  return n;
}

// peer_port 0: every TCP socket of the process. Returns how many sockets it looked at.
inline int setTcpNoDelayToPort(int peer_port) {
  return forEachTcpSocketToPort(peer_port, [](int fd) {
    int one = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  });
}

}  // namespace fingate
