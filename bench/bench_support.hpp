// Shared helpers of the end-to-end benchmarks (tcp_forward, mqtt_forward): child processes,
// mosquitto brokers, the fingate binary, CPU accounting from /proc, percentiles, a tiny HTTP GET.
//
// Deliberately independent of core/ and tests/support: a harness built once must run against
// any fingate binary and plugins directory given on its command line (e.g. an older commit's
// build), and build with -DFINGATE_TESTS=OFF. Loopback only; every child is stopped by pid
// (and dies with the benchmark through PR_SET_PDEATHSIG if the benchmark is killed).
#pragma once

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

namespace fingate::bench {

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

// Set by SIGINT/SIGTERM (harnessMain): every loop of a harness gives up.
inline std::atomic<bool> g_interrupted{false};

inline int64_t nowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count();
}

inline std::string readFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void writeFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
}

// A fresh directory /tmp/fingate-bench-<pid>/<name>-<n> (the root is removed by cleanupTempRoot).
inline std::string tempRoot() { return "/tmp/fingate-bench-" + std::to_string(::getpid()); }
inline std::string tempDir(const std::string& name) {
  static std::atomic<int> seq{0};
  std::string dir = tempRoot() + "/" + name + "-" + std::to_string(seq++);
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}
inline void cleanupTempRoot() {
  std::error_code ec;
  std::filesystem::remove_all(tempRoot(), ec);
}

// Polls cond every `step` until it is true or timeout passes. Returns the last value.
inline bool waitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout,
                    std::chrono::milliseconds step = 10ms) {
  auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    if (cond()) return true;
    std::this_thread::sleep_for(step);
  }
  return cond();
}

// The directory of this executable (to find sibling programs such as tcp_relay).
inline std::string selfDir() {
  std::error_code ec;
  auto p = std::filesystem::read_symlink("/proc/self/exe", ec);
  return ec ? std::string(".") : p.parent_path().string();
}

// ---- ports --------------------------------------------------------------------------------------

inline bool canConnect(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  ::close(fd);
  return ok;
}

// A loopback port that was free a moment ago (bind port 0, read it, close) and that nobody
// answers on. The caller retries its start when the port was taken in between.
inline int freePort() {
  for (int attempt = 0; attempt < 20; ++attempt) {
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      ::close(fd);
      continue;
    }
    socklen_t len = sizeof a;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
    int port = ntohs(a.sin_port);
    ::close(fd);
    if (!canConnect(port)) return port;
  }
  throw std::runtime_error("no free loopback port");
}

// "... listening on HOST:PORT ..." -> PORT (0 if absent).
inline int portAfter(const std::string& text, const std::string& needle) {
  auto at = text.find(needle);
  if (at == std::string::npos) return 0;
  auto colon = text.find(':', at + needle.size());
  auto eol = text.find('\n', at);
  if (colon == std::string::npos || (eol != std::string::npos && colon > eol)) return 0;
  return std::atoi(text.c_str() + colon + 1);
}

// A TCP connection to 127.0.0.1:port (blocking); -1 when refused.
inline int connectLoopback(int port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A plain HTTP/1.1 GET to 127.0.0.1:port (Connection: close): {status, body}; status 0 = no answer.
inline std::pair<int, std::string> httpGet(int port, const std::string& path, std::chrono::milliseconds timeout = 3s) {
  int fd = connectLoopback(port);
  if (fd < 0) return {0, ""};
  std::string req = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  (void)!::send(fd, req.data(), req.size(), MSG_NOSIGNAL);
  std::string resp;
  auto end = Clock::now() + timeout;
  while (Clock::now() < end) {
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    char buf[8192];
    ssize_t n = ::recv(fd, buf, sizeof buf, 0);
    if (n <= 0) break;
    resp.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  if (resp.rfind("HTTP/1.", 0) != 0 || resp.size() < 12) return {0, ""};
  auto hdr_end = resp.find("\r\n\r\n");
  return {std::atoi(resp.c_str() + 9), hdr_end == std::string::npos ? "" : resp.substr(hdr_end + 4)};
}

// Sum of every sample of a Prometheus metric (any labels) in a /metrics text; -1 if absent.
inline double metricSum(const std::string& text, const std::string& name) {
  std::istringstream in(text);
  std::string line;
  double sum = 0;
  bool any = false;
  while (std::getline(in, line)) {
    if (line.rfind(name, 0) != 0) continue;
    char next = line.size() > name.size() ? line[name.size()] : '\0';
    if (next != ' ' && next != '{') continue;
    auto sp = line.rfind(' ');
    if (sp == std::string::npos) continue;
    sum += std::atof(line.c_str() + sp + 1);
    any = true;
  }
  return any ? sum : -1;
}

// ---- child processes ----------------------------------------------------------------------------

// fork/exec, stdout+stderr to a log file, own process group, killed by pid in the destructor.
class Process {
 public:
  Process(const std::vector<std::string>& argv, const std::string& log_path) : log_path_(log_path) {
    // Everything the child needs is built before fork(): between fork and exec only
    // async-signal-safe calls (other threads may hold malloc's locks).
    std::vector<char*> args;
    for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    const pid_t parent = ::getpid();
    pid_ = ::fork();
    if (pid_ < 0) throw std::runtime_error("fork failed");
    if (pid_ == 0) {
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);  // dies with the benchmark, whatever happens to it
      if (::getppid() != parent) ::_exit(127);
      int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
      if (fd >= 0) {
        ::dup2(fd, 1);
        ::dup2(fd, 2);
        ::close(fd);
      }
      int devnull = ::open("/dev/null", O_RDONLY);
      if (devnull >= 0) ::dup2(devnull, 0);
      ::setpgid(0, 0);
      ::execv(args[0], args.data());
      static const char msg[] = "execv failed: ";
      (void)!::write(2, msg, sizeof msg - 1);
      (void)!::write(2, args[0], std::strlen(args[0]));
      (void)!::write(2, "\n", 1);
      ::_exit(127);
    }
  }
  ~Process() {
    if (pid_ > 0 && !exited_) {
      ::kill(pid_, SIGKILL);
      int st;
      ::waitpid(pid_, &st, 0);
    }
  }
  Process(const Process&) = delete;
  Process& operator=(const Process&) = delete;

  int pid() const { return pid_; }
  bool running() {
    if (exited_ || pid_ <= 0) return false;
    int st;
    if (::waitpid(pid_, &st, WNOHANG) == pid_) {
      exited_ = true;
      status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
      return false;
    }
    return true;
  }
  // Sends sig and waits (bounded) for the exit; the exit status (128+sig if signalled), -1 on timeout.
  int stop(int sig = SIGTERM, std::chrono::milliseconds timeout = 5s) {
    if (running()) ::kill(pid_, sig);
    if (!waitFor([&] { return !running(); }, timeout, 5ms)) return -1;
    return status_;
  }
  // SIGTERM, then SIGKILL.
  void terminate() {
    if (stop(SIGTERM, 5s) == -1) stop(SIGKILL, 5s);
  }
  std::string log() const { return readFile(log_path_); }
  const std::string& logPath() const { return log_path_; }

 private:
  int pid_ = -1;
  int status_ = -1;
  bool exited_ = false;
  std::string log_path_;
};

// ---- CPU accounting -------------------------------------------------------------------------------

// utime+stime of a process in ms (clock-tick resolution, 10 ms); 0 when unreadable.
inline double cpuMs(int pid) {
  if (pid <= 0) return 0;
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto close = s.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream rest(s.substr(close + 2));
  std::string f;
  unsigned long long ut = 0, st = 0;
  for (int i = 3; i <= 15 && rest >> f; ++i) {
    if (i == 14) ut = std::stoull(f);
    if (i == 15) st = std::stoull(f);
  }
  return static_cast<double>(ut + st) * 1000.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

inline double cpuMs(const std::vector<int>& pids) {
  double sum = 0;
  for (int p : pids) sum += cpuMs(p);
  return sum;
}

// Busy CPU time of the whole machine in ms (user+nice+system+irq+softirq of every CPU).
inline double machineBusyMs() {
  std::ifstream in("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, sys = 0, idle = 0, iowait = 0, irq = 0, softirq = 0;
  in >> cpu >> user >> nice >> sys >> idle >> iowait >> irq >> softirq;
  return static_cast<double>(user + nice + sys + irq + softirq) * 1000.0 / static_cast<double>(sysconf(_SC_CLK_TCK));
}

// Average number of CPUs busy with processes other than `ours` (+ this process) since construction.
class OtherLoad {
 public:
  explicit OtherLoad(std::vector<int> ours) : ours_(std::move(ours)) { reset(); }
  void reset() {
    busy0_ = machineBusyMs();
    ours0_ = cpuMs(ours_) + cpuMs(::getpid());
    t0_ = nowNs();
  }
  double cpus() const {
    double other = (machineBusyMs() - busy0_) - (cpuMs(ours_) + cpuMs(::getpid()) - ours0_);
    double ms = static_cast<double>(nowNs() - t0_) / 1e6;
    return ms > 0 ? std::max(0.0, other / ms) : 0;
  }

 private:
  std::vector<int> ours_;
  double busy0_ = 0, ours0_ = 0;
  int64_t t0_ = 0;
};

inline std::string loadLine() {
  std::ifstream in("/proc/loadavg");
  std::string s;
  std::getline(in, s);
  return s;
}

inline std::string cpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  return "?";
}

// q-quantile of a sorted vector (nearest rank).
inline int64_t percentile(const std::vector<int64_t>& sorted, double q) {
  if (sorted.empty()) return 0;
  size_t rank = static_cast<size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, rank ? rank - 1 : 0)];
}

inline std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// ---- mosquitto ----------------------------------------------------------------------------------

// A real mosquitto on a free loopback port with its own config file; stopped by pid.
class Mosquitto {
 public:
  static constexpr const char* kBinary = "/usr/sbin/mosquitto";

  explicit Mosquitto(const std::string& extra = "") {
    dir_ = tempDir("mosquitto");
    for (int attempt = 0; attempt < 5; ++attempt) {
      int port = freePort();
      std::string conf = dir_ + "/mosquitto.conf";
      writeFile(conf,
                "user root\npersistence false\nlog_dest stderr\nlog_type error\nlog_type warning\n"
                "log_type notice\nlog_type information\nconnection_messages true\nallow_anonymous true\n"
                "listener " +
                    std::to_string(port) + " 127.0.0.1\n" + extra + "\n");
      proc_ = std::make_unique<Process>(std::vector<std::string>{kBinary, "-c", conf},
                                        dir_ + "/mosquitto-" + std::to_string(attempt) + ".log");
      bool ok = waitFor(
          [&] { return !proc_->running() || (proc_->log().find(" running") != std::string::npos && canConnect(port)); },
          10s);
      if (ok && proc_->running() && canConnect(port)) {
        port_ = port;
        return;
      }
      proc_->terminate();
    }
    throw std::runtime_error("mosquitto did not start (logs in " + dir_ + ")");
  }
  ~Mosquitto() {
    if (proc_) proc_->terminate();
  }
  Mosquitto(const Mosquitto&) = delete;
  Mosquitto& operator=(const Mosquitto&) = delete;
  int port() const { return port_; }
  int pid() const { return proc_ ? proc_->pid() : -1; }
  std::string url() const { return "tcp://127.0.0.1:" + std::to_string(port_); }

 private:
  std::string dir_;
  int port_ = 0;
  std::unique_ptr<Process> proc_;
};

// ---- the fingate binary -----------------------------------------------------------------------------

// `fingate run` on a generated config: `body` (endpoints:, routes:) with `plugins_dir`, a fresh
// `state_dir` and an admin listener on a free port prepended. Any "{PORT:<name>}" in the body is
// replaced by a free loopback port (port(name) gives it back). Ready = the process runs and
// GET /readyz answers 200 (every required endpoint up). The log format is not relied on.
class Gateway {
 public:
  Gateway(const std::string& binary, const std::string& plugins_dir, const std::string& name, std::string body)
      : binary_(binary), plugins_dir_(plugins_dir), body_(std::move(body)) {
    dir_ = tempDir(name);
  }
  ~Gateway() { stop(); }
  Gateway(const Gateway&) = delete;
  Gateway& operator=(const Gateway&) = delete;

  bool start(std::chrono::milliseconds timeout = 20s) {
    for (int attempt = 0; attempt < 3; ++attempt) {
      ports_.clear();
      admin_port_ = freePort();
      std::string body = body_;
      for (size_t at; (at = body.find("{PORT:")) != std::string::npos;) {
        size_t end = body.find('}', at);
        std::string key = body.substr(at + 6, end - at - 6);
        if (!ports_.count(key)) ports_[key] = freePort();
        body.replace(at, end - at + 1, std::to_string(ports_[key]));
      }
      std::string conf = dir_ + "/fingate.yaml";
      writeFile(conf, "plugins_dir: " + plugins_dir_ + "\nstate_dir: " + dir_ + "/state-" + std::to_string(attempt) +
                          "\nadmin: { listen: 127.0.0.1:" + std::to_string(admin_port_) +
                          " }\ndrain_timeout_ms: 2000\n" + body);
      proc_ = std::make_unique<Process>(std::vector<std::string>{binary_, "run", conf},
                                        dir_ + "/fingate-" + std::to_string(attempt) + ".log");
      bool ok =
          waitFor([&] { return !proc_->running() || httpGet(admin_port_, "/readyz", 1s).first == 200; }, timeout, 50ms);
      if (ok && proc_->running()) return true;
      std::fprintf(stderr, "fingate did not become ready (attempt %d); log %s:\n%s\n", attempt + 1,
                   proc_->logPath().c_str(), proc_->log().substr(0, 4000).c_str());
      proc_->terminate();
    }
    return false;
  }
  void stop() {
    if (proc_) proc_->terminate();
  }
  int pid() const { return proc_ ? proc_->pid() : -1; }
  int port(const std::string& key) const {
    auto it = ports_.find(key);
    return it == ports_.end() ? 0 : it->second;
  }
  int adminPort() const { return admin_port_; }
  bool running() { return proc_ && proc_->running(); }
  std::string logPath() const { return proc_ ? proc_->logPath() : ""; }
  std::string metrics() const { return httpGet(admin_port_, "/metrics").second; }

 private:
  std::string binary_, plugins_dir_, body_, dir_;
  std::unique_ptr<Process> proc_;
  std::map<std::string, int> ports_;
  int admin_port_ = 0;
};

// ---- the TCP transport's frames (docs/transports.md), for the harnesses' clients ----------------

enum Kind : uint8_t { kPublish = 1, kSubscribe = 2, kPing = 4, kPong = 5, kError = 6 };

inline std::string frame(uint8_t kind, const std::string& topic, const std::string& payload) {
  uint32_t rest = static_cast<uint32_t>(3 + topic.size() + payload.size());
  std::string f;
  f.reserve(4 + rest);
  for (int s = 24; s >= 0; s -= 8) f.push_back(static_cast<char>(rest >> s));
  f.push_back(static_cast<char>(kind));
  f.push_back(static_cast<char>(topic.size() >> 8));
  f.push_back(static_cast<char>(topic.size()));
  return f + topic + payload;
}

inline int connectTo(int port) {
  int fd = connectLoopback(port);
  if (fd < 0) return -1;
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  timeval tv{1, 0};  // a blocked write gives up after 1 s (the caller retries until its deadline)
  ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

// Writes everything or gives up at the deadline / on an error.
inline bool writeAll(int fd, const char* p, size_t n, Clock::time_point deadline) {
  while (n > 0) {
    ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
    if (w > 0) {
      p += w;
      n -= static_cast<size_t>(w);
      continue;
    }
    if (w < 0 && (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) && Clock::now() < deadline &&
        !g_interrupted)
      continue;
    return false;
  }
  return true;
}

// A thread that reads frames from a socket and hands each to `on_frame(kind, topic, payload)`
// (called with the reader's lock held; lock() gives the same lock to other threads).
class FrameReader {
 public:
  using Handler = std::function<void(uint8_t, std::string_view, std::string_view)>;
  FrameReader(int fd, Handler h) : fd_(fd), on_frame_(std::move(h)), th_([this] { loop(); }) {}
  ~FrameReader() {
    stop_ = true;
    th_.join();
  }
  std::unique_lock<std::mutex> lock() { return std::unique_lock(mu_); }
  bool closed() const { return closed_; }

 private:
  void loop() {
    std::vector<char> buf(512 * 1024);
    size_t len = 0;
    while (!stop_) {
      pollfd p{fd_, POLLIN, 0};
      if (::poll(&p, 1, 50) <= 0) continue;
      if (buf.size() - len < 64 * 1024) buf.resize(buf.size() * 2);
      ssize_t r = ::recv(fd_, buf.data() + len, buf.size() - len, 0);
      if (r <= 0) {
        if (r < 0 && errno == EINTR) continue;
        closed_ = true;
        return;
      }
      len += static_cast<size_t>(r);
      size_t pos = 0;
      std::lock_guard lk(mu_);
      while (len - pos >= 4) {
        const auto* u = reinterpret_cast<const unsigned char*>(buf.data() + pos);
        uint32_t rest = (uint32_t(u[0]) << 24) | (uint32_t(u[1]) << 16) | (uint32_t(u[2]) << 8) | uint32_t(u[3]);
        if (len - pos < 4 + size_t(rest)) break;
        uint16_t tl = static_cast<uint16_t>((u[5] << 8) | u[6]);
        if (rest < 3 || size_t(tl) + 3 > rest) {
          closed_ = true;  // not a frame stream
          return;
        }
        std::string_view topic(buf.data() + pos + 7, tl);
        std::string_view payload(buf.data() + pos + 7 + tl, rest - 3 - tl);
        on_frame_(u[4], topic, payload);
        pos += 4 + rest;
      }
      std::memmove(buf.data(), buf.data() + pos, len - pos);
      len -= pos;
    }
  }

  int fd_;
  Handler on_frame_;
  std::mutex mu_;
  std::atomic<bool> stop_{false}, closed_{false};
  std::thread th_;  // last: started after everything it uses
};

// ---- the command every harness sends ---------------------------------------------------------

// 01-a-register.json, and 03-a-command-auth.json split around its message_id and its empty
// `variables` (a padding variable goes there). Filled by loadVectors() before anything runs.
inline std::string g_register, g_command_head, g_command_mid, g_command_tail;

inline std::string readVector(const std::string& dir, const std::string& name) {
  std::ifstream f(dir + "/" + name, std::ios::binary);
  if (!f) throw std::runtime_error("cannot read " + dir + "/" + name + " (--vectors names the directory)");
  std::string s((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}

inline void loadVectors(const std::string& dir) {
  g_register = readVector(dir, "01-a-register.json");
  const std::string cmd = readVector(dir, "03-a-command-auth.json");
  const std::string id_key = "\"message_id\":\"", vars = "\"variables\":{}";
  size_t id = cmd.find(id_key), id_end = id == std::string::npos ? id : cmd.find('"', id + id_key.size());
  size_t v = cmd.find(vars);
  if (id_end == std::string::npos || v == std::string::npos || v < id_end)
    throw std::runtime_error(dir + "/03-a-command-auth.json: no message_id or empty variables to fill");
  g_command_head = cmd.substr(0, id + id_key.size());
  g_command_mid = cmd.substr(id_end, v + vars.size() - 1 - id_end) +
                  R"("__pad__":{"type":"string","name":"__pad__","description":"padding","value":")";
  g_command_tail = R"(","constant":false,"external":false})" + cmd.substr(v + vars.size() - 1);
}

// message_id = "bench-" + 8 hex run + "-" + 10 digit seq + "-" + 20 digit send time (ns): 46 chars.
inline size_t idOffset() { return g_command_head.size(); }
constexpr size_t kIdLen = 46;

inline void writeId(char* at, uint32_t run, uint64_t seq, int64_t ts) {
  char b[64];
  std::snprintf(b, sizeof b, "bench-%08x-%010" PRIu64 "-%020" PRId64, run, seq, ts);
  std::memcpy(at, b, kIdLen);
}

struct IdStamp {
  uint32_t run = 0;
  uint64_t seq = 0;
  int64_t ts = 0;
};

inline bool readId(const char* p, size_t n, IdStamp& s) {
  if (n < idOffset() + kIdLen) return false;
  const char* id = p + idOffset();
  if (std::memcmp(id, "bench-", 6) != 0) return false;
  auto a = std::from_chars(id + 6, id + 14, s.run, 16);
  auto b = std::from_chars(id + 15, id + 25, s.seq);
  auto c = std::from_chars(id + 26, id + 46, s.ts);
  return a.ec == std::errc() && b.ec == std::errc() && c.ec == std::errc();
}

// The command, padded to exactly payload_bytes (or its minimum size, if larger).
inline size_t minCommandBytes() {
  return g_command_head.size() + kIdLen + g_command_mid.size() + g_command_tail.size();
}
inline std::string makeCommand(size_t payload_bytes) {
  size_t pad = payload_bytes > minCommandBytes() ? payload_bytes - minCommandBytes() : 0;
  return g_command_head + std::string(kIdLen, '0') + g_command_mid + std::string(pad, 'x') + g_command_tail;
}

// The end of a harness's main(): the vectors, the payload size check, signals, the run itself,
// the clean-up of its temporary directory. Returns the process exit code.
inline int harnessMain(const char* name, const std::string& vectors, size_t payload, bool keep_logs,
                       const std::function<int()>& run) {
  try {
    loadVectors(vectors);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    return 2;
  }
  if (payload < minCommandBytes()) {
    std::fprintf(stderr, "--payload must be at least %zu\n", minCommandBytes());
    return 2;
  }
  std::signal(SIGINT, [](int) { g_interrupted = true; });
  std::signal(SIGTERM, [](int) { g_interrupted = true; });
  std::signal(SIGPIPE, SIG_IGN);
  int rc;
  try {
    rc = run();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    rc = 1;
  }
  if (!keep_logs) cleanupTempRoot();
  return rc;
}

}  // namespace fingate::bench
