// http_forward: HTTP -> TCP through fingate, beside cpp-httplib's own keep-alive POST rate to a
// trivial server, in the same run.
//
// Targets:
//   trivial : an httplib::Server in this process whose POST handler answers 202 at once (what
//             cpp-httplib itself costs: the ceiling for any httplib-based gateway);
//   fingate : `fingate run` with `orchestrator` (tcp, listen) and `web` (http, role fins, a
//             token), each on a free loopback port; publish_wait_ms default (the answer waits for
//             the outcome: the TCP frame handed to the orchestrator's socket);
//   fingate-taken : the same with publish_wait_ms 0 (202 as soon as the core took the message).
// Per fingate target: a TCP orchestrator client O subscribes to `soarca` and to the capability
// topic (ping barrier); the register of vector 01-a-register is POSTed on `soarca` (binds the fin
// to the endpoint); then --connections (4) threads, each with one keep-alive httplib::Client,
// POST results (vector 14-b-ok-result, padded to --payload bytes, 1024 by default) on the
// capability topic for --seconds; O reads every frame and counts them. req/s = 202 answers /
// elapsed. Every 202 must have reached O (checked at the end: lost = 202s - frames received).
// CPU ms of the fingate process from /proc/<pid>/stat.
//
// Usage: http_forward [--fingate BIN] [--plugins-dir DIR] [--vectors DIR] [--seconds S]
//                     [--connections N] [--payload B]
// No timed assertions: prints a markdown table; exits 1 if a target lost messages or failed.
#include <httplib.h>
#include <netinet/tcp.h>

#include <CLI/CLI.hpp>
#include <atomic>
#include <mutex>

#include "bench_support.hpp"

using namespace fingate::bench;

namespace {

const std::string kToken = "bench-token-0123456789abcdef";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";

// Counts publish frames (kind 1) arriving on fd; stops when `stop` is set.
struct Reader {
  int fd;
  std::atomic<uint64_t> frames{0};
  std::atomic<bool> stop{false};
  std::thread th;
  explicit Reader(int f) : fd(f) {
    th = std::thread([this] {
      std::string buf;
      char tmp[65536];
      while (!stop) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, 50) <= 0) continue;
        ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
        if (n <= 0) return;
        buf.append(tmp, static_cast<size_t>(n));
        size_t off = 0;
        while (buf.size() - off >= 4) {
          const auto* b = reinterpret_cast<const unsigned char*>(buf.data() + off);
          const uint32_t rest = (uint32_t(b[0]) << 24) | (uint32_t(b[1]) << 16) | (uint32_t(b[2]) << 8) | b[3];
          if (buf.size() - off < 4 + rest) break;
          if (b[4] == 1) frames++;
          off += 4 + rest;
        }
        buf.erase(0, off);
      }
    });
  }
  ~Reader() {
    stop = true;
    th.join();
  }
};

struct Result {
  std::string target;
  uint64_t ok = 0, other = 0, received = 0;
  double seconds = 0, cpu_ms = 0;
  bool failed = false;
};

// --connections keep-alive clients POSTing `body` to path for `seconds`.
void load(int port, const std::string& path, const std::string& body, int conns, double seconds, Result& r,
          const std::string& token) {
  std::atomic<uint64_t> ok{0}, other{0};
  std::vector<std::thread> ts;
  const auto t0 = Clock::now();
  const auto end = t0 + std::chrono::duration<double>(seconds);
  for (int i = 0; i < conns; ++i)
    ts.emplace_back([&] {
      httplib::Client c("127.0.0.1", port);
      c.set_keep_alive(true);
      c.set_tcp_nodelay(true);
      c.set_url_encode(false);
      if (!token.empty()) c.set_bearer_token_auth(token.c_str());
      while (Clock::now() < end) {
        auto res = c.Post(path.c_str(), body, "application/json");
        if (res && res->status == 202)
          ok++;
        else
          other++;
      }
    });
  for (auto& t : ts) t.join();
  r.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  r.ok = ok;
  r.other = other;
}

Result runTrivial(const std::string& body, int conns, double seconds) {
  Result r{"cpp-httplib trivial server (in process)"};
  httplib::Server svr;
  svr.set_tcp_nodelay(true);
  svr.set_keep_alive_max_count(1000000);
  svr.Post("/v1/publish/x", [](const httplib::Request&, httplib::Response& res) {
    res.status = 202;
    res.set_content("{\"outcome\":\"accepted\"}\n", "application/json");
  });
  const int port = svr.bind_to_any_port("127.0.0.1");
  std::thread th([&] { svr.listen_after_bind(); });
  waitFor([&] { return svr.is_running(); }, 5s);
  load(port, "/v1/publish/x", body, conns, seconds, r, "");
  r.received = r.ok;
  svr.stop();
  th.join();
  return r;
}

Result runFingate(const std::string& bin, const std::string& plugins, const std::string& reg, const std::string& body,
                  int conns, double seconds, bool wait_outcome) {
  Result r{wait_outcome ? "fingate HTTP->TCP, 202 after the outcome" : "fingate HTTP->TCP, 202 when taken"};
  Gateway gw(bin, plugins, wait_outcome ? "http-outcome" : "http-taken",
             "endpoints:\n  orchestrator: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:{PORT:orch}\" }\n"
             "  web: { plugin: http, role: fins, listen: \"127.0.0.1:{PORT:http}\", token: \"" +
                 kToken + "\"" + (wait_outcome ? "" : ", publish_wait_ms: 0") + " }\n");
  if (!gw.start()) {
    r.failed = true;
    return r;
  }
  const int fd = connectLoopback(gw.port("orch"));
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  const std::string subs = frame(2, "soarca", "") + frame(2, kCap, "") + frame(4, "", "ready");
  (void)!::send(fd, subs.data(), subs.size(), MSG_NOSIGNAL);
  {
    // Wait for the pong: the subscriptions are in place.
    std::string got;
    char tmp[4096];
    waitFor(
        [&] {
          pollfd p{fd, POLLIN, 0};
          if (::poll(&p, 1, 50) > 0) {
            ssize_t n = ::recv(fd, tmp, sizeof tmp, 0);
            if (n > 0) got.append(tmp, static_cast<size_t>(n));
          }
          return got.find("ready") != std::string::npos;
        },
        5s);
  }
  {
    httplib::Client c("127.0.0.1", gw.port("http"));
    c.set_bearer_token_auth(kToken.c_str());
    auto res = c.Post("/v1/publish/soarca", reg, "application/json");
    if (!res || res->status != 202) {
      std::fprintf(stderr, "register not taken: %d\n", res ? res->status : 0);
      r.failed = true;
      ::close(fd);
      return r;
    }
  }
  Reader reader(fd);
  waitFor([&] { return reader.frames.load() >= 1; }, 5s);  // the register itself
  const uint64_t before_frames = reader.frames.load();
  const double cpu0 = cpuMs(gw.pid());
  load(gw.port("http"), "/v1/publish/" + kCap, body, conns, seconds, r, kToken);
  const double cpu1 = cpuMs(gw.pid());
  waitFor([&] { return reader.frames.load() - before_frames >= r.ok; }, 10s);
  r.received = reader.frames.load() - before_frames;
  r.cpu_ms = cpu1 - cpu0;
  reader.stop = true;
  ::close(fd);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::signal(SIGPIPE, SIG_IGN);
  CLI::App app{"HTTP -> TCP through fingate beside a trivial cpp-httplib server"};
  std::string bin = FINGATE_BENCH_DEFAULT_BIN, plugins = FINGATE_BENCH_DEFAULT_PLUGINS, vectors = FINGATE_VECTORS_DIR;
  double seconds = 5;
  int conns = 4;
  size_t payload = 1024;
  app.add_option("--fingate", bin);
  app.add_option("--plugins-dir", plugins);
  app.add_option("--vectors", vectors);
  app.add_option("--seconds", seconds);
  app.add_option("--connections", conns);
  app.add_option("--payload", payload);
  CLI11_PARSE(app, argc, argv);

  std::string reg = readFile(vectors + "/01-a-register.json");
  std::string result = readFile(vectors + "/14-b-ok-result.json");
  while (!reg.empty() && (reg.back() == '\n' || reg.back() == '\r')) reg.pop_back();
  while (!result.empty() && (result.back() == '\n' || result.back() == '\r')) result.pop_back();
  if (reg.empty() || result.empty()) {
    std::fprintf(stderr, "cannot read the vectors in %s\n", vectors.c_str());
    return 1;
  }
  // Pad the result's meta to exactly `payload` bytes (still valid Fin JSON).
  const std::string pad_key = ",\"pad\":\"";
  const size_t at = result.rfind('}');
  const size_t base = result.size() + pad_key.size() + 1;
  if (payload > base) result.insert(at, pad_key + std::string(payload - base, 'x') + "\"");

  std::printf("machine: %s, %u cpus; load before: %s\n", cpuModel().c_str(), std::thread::hardware_concurrency(),
              loadLine().c_str());
  std::printf("payload %zu bytes, %d keep-alive connections, %.1f s per target\n\n", result.size(), conns, seconds);
  std::vector<Result> rs;
  rs.push_back(runTrivial(result, conns, seconds));
  rs.push_back(runFingate(bin, plugins, reg, result, conns, seconds, true));
  rs.push_back(runFingate(bin, plugins, reg, result, conns, seconds, false));
  cleanupTempRoot();
  const double trivial = rs[0].seconds > 0 ? rs[0].ok / rs[0].seconds : 0;
  std::printf("| target | req/s | x trivial | non-202 | reached TCP | lost | fingate CPU ms/1k req |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  int rc = 0;
  for (auto& r : rs) {
    const double rate = r.seconds > 0 ? r.ok / r.seconds : 0;
    const long lost = static_cast<long>(r.ok) - static_cast<long>(r.received);
    if (r.failed || lost != 0) rc = 1;
    std::printf("| %s | %.0f | %.2f | %llu | %llu | %ld | %s |\n", r.target.c_str(), rate,
                trivial > 0 ? rate / trivial : 0, static_cast<unsigned long long>(r.other),
                static_cast<unsigned long long>(r.received), lost,
                r.cpu_ms > 0 ? fmt("%.1f", r.cpu_ms / (r.ok / 1000.0)).c_str() : "-");
  }
  std::printf("\nload after: %s\n", loadLine().c_str());
  return rc;
}
