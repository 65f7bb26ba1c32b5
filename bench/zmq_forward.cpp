// zmq_forward: ZeroMQ -> ZeroMQ through fingate, beside a plain ZeroMQ relay (bench/zmq_relay.cpp,
// ROUTER -> DEALER, no parsing) in the same run.
//
// Targets (each a real process, started fresh, stopped by pid):
//   fingate : `fingate run` with two zmq endpoints, `orchestrator` (role orchestrator) and `fins`
//             (role fins), each binding a ROUTER on a free loopback port;
//   relay   : zmq_relay FRONT BACK.
// Per target, in this process: an orchestrator DEALER O on the orchestrator side and a fin DEALER
// F on the fins side. For fingate F registers (vector 01-a-register on `soarca`, after a PING
// barrier), O receives it and acks it on the fin id (F receives the ack). Then O sends --messages
// commands [PUB, capability id, payload] (vector 13-b-ok-command-auth, message_id replaced by
// "bench-<seq>", `variables` padded so the payload is exactly --payload bytes), at most --window
// not yet received; F (its own thread) counts them by sequence number (lost / out of order).
// msg/s = received / (last receipt - first send); gateway CPU µs/msg = utime+stime of the target
// process over the phase / messages (10 ms tick resolution). Prints a markdown table; exit 0 when
// every target delivered every message, 1 otherwise. No timed assertions anywhere.
//
// Usage: zmq_forward [--fingate BIN] [--plugins-dir DIR] [--relay BIN] [--messages N]
//                    [--payload B] [--window W] [--repeat K]
#include <CLI/CLI.hpp>
#include <atomic>
#include <thread>
#include <zmq.hpp>

#include "bench_support.hpp"

using namespace fingate::bench;

namespace {

const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";

struct Result {
  std::string target;
  size_t sent = 0, received = 0, out_of_order = 0;
  double seconds = 0, cpu_ms = 0, own_cpu_ms = 0;
  bool ok = false;
};

std::string commandPayload(const std::string& tmpl, uint64_t seq, size_t size) {
  std::string s = tmpl;
  const std::string old_id = "1b57ed0d-e6f1-11f1-bac7-e6e1bc57048a";
  s.replace(s.find(old_id), old_id.size(), "bench-" + std::to_string(seq));
  const std::string vars = "\"variables\":{}";
  const size_t at = s.find(vars);
  const std::string head = "\"variables\":{\"pad\":\"", tail = "\"}";
  const size_t base = s.size() - vars.size() + head.size() + tail.size();
  const size_t pad = size > base ? size - base : 0;
  s.replace(at, vars.size(), head + std::string(pad, 'x') + tail);
  return s;
}

uint64_t seqOf(const zmq::message_t& payload) {
  const std::string_view v = payload.to_string_view();
  const size_t at = v.find("bench-");
  if (at == std::string_view::npos) return UINT64_MAX;
  uint64_t n = 0;
  for (size_t i = at + 6; i < v.size() && v[i] >= '0' && v[i] <= '9'; ++i) n = n * 10 + uint64_t(v[i] - '0');
  return n;
}

bool sendParts(zmq::socket_t& s, const std::string& a, const std::string& b, const std::string& c) {
  return s.send(zmq::buffer(a), zmq::send_flags::sndmore) && s.send(zmq::buffer(b), zmq::send_flags::sndmore) &&
         s.send(zmq::buffer(c), zmq::send_flags::none);
}

// Receives one multipart message (bounded wait); its frames as strings.
std::vector<std::string> recvParts(zmq::socket_t& s, int timeout_ms) {
  zmq::pollitem_t it{s.handle(), 0, ZMQ_POLLIN, 0};
  if (zmq::poll(&it, 1, std::chrono::milliseconds(timeout_ms)) <= 0) return {};
  std::vector<std::string> parts;
  while (true) {
    zmq::message_t m;
    if (!s.recv(m)) break;
    parts.push_back(m.to_string());
    if (!m.more()) break;
  }
  return parts;
}

Result runTarget(const std::string& target, const std::string& o_addr, const std::string& f_addr, int pid,
                 const std::string& reg, const std::string& cmd_tmpl, size_t n, size_t payload, size_t window) {
  Result r;
  r.target = target;
  zmq::context_t ctx(1);
  zmq::socket_t o(ctx, zmq::socket_type::dealer), f(ctx, zmq::socket_type::dealer);
  for (auto* s : {&o, &f}) {
    s->set(zmq::sockopt::linger, 0);
    s->set(zmq::sockopt::sndhwm, 100000);
    s->set(zmq::sockopt::rcvhwm, 100000);
  }
  o.connect(o_addr);
  f.connect(f_addr);
  if (target == "fingate") {
    sendParts(o, "SUB", "soarca", "");
    sendParts(o, "PING", "", "o");
    while (true) {
      auto p = recvParts(o, 5000);
      if (p.empty()) return r;
      if (p[0] == "PONG") break;
    }
    sendParts(f, "PING", "", "f");
    if (recvParts(f, 5000).empty()) return r;
    sendParts(f, "PUB", "soarca", reg);
    auto got = recvParts(o, 5000);
    if (got.size() != 3 || got[2] != reg) return r;
    sendParts(o, "PUB", kFin, "{\"type\":\"ack\",\"message_id\":\"abec7356-e6f0-11f1-acf4-02fc00000001\"}");
    if (recvParts(f, 5000).empty()) return r;
  } else {  // the relay forwards only once both sides are connected: probe until one passes
    bool through = false;
    for (int i = 0; i < 50 && !through; ++i) {
      sendParts(o, "PUB", kCap, "probe");
      through = !recvParts(f, 100).empty();
    }
    if (!through) return r;
    while (!recvParts(f, 200).empty()) {
    }
  }
  std::atomic<size_t> received{0};
  std::atomic<int64_t> last_ns{0};
  std::atomic<size_t> disorder{0};
  std::thread reader([&] {
    uint64_t expect = 0;
    while (received.load() < n) {
      zmq::pollitem_t it{f.handle(), 0, ZMQ_POLLIN, 0};
      if (zmq::poll(&it, 1, std::chrono::milliseconds(10000)) <= 0) return;  // stalled: report loss
      while (received.load() < n) {
        zmq::message_t parts[3];
        if (!f.recv(parts[0], zmq::recv_flags::dontwait)) break;
        size_t k = 1;
        while (parts[k - 1].more() && k < 3) (void)f.recv(parts[k++]);
        const uint64_t seq = seqOf(parts[2]);
        if (seq != expect) ++disorder;
        expect = seq + 1;
        last_ns = nowNs();
        ++received;
      }
    }
  });
  const double cpu0 = cpuMs(pid), own0 = cpuMs(::getpid());
  const int64_t t0 = nowNs();
  for (size_t i = 0; i < n; ++i) {
    while (i - received.load() >= window) std::this_thread::yield();
    const std::string p = commandPayload(cmd_tmpl, i, payload);
    sendParts(o, "PUB", kCap, p);
    ++r.sent;
  }
  reader.join();
  r.received = received.load();
  r.out_of_order = disorder.load();
  r.seconds = double(last_ns.load() - t0) / 1e9;
  r.cpu_ms = cpuMs(pid) - cpu0;
  r.own_cpu_ms = cpuMs(::getpid()) - own0;
  r.ok = r.received == n && r.out_of_order == 0;
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app("ZeroMQ -> ZeroMQ through fingate beside a plain ZeroMQ relay");
  std::string fingate = FINGATE_BENCH_DEFAULT_BIN, plugins = FINGATE_BENCH_DEFAULT_PLUGINS,
              relay = selfDir() + "/zmq_relay", vectors = FINGATE_VECTORS_DIR;
  size_t n = 200000, payload = 1024, window = 2000;
  int repeat = 1;
  app.add_option("--fingate", fingate);
  app.add_option("--plugins-dir", plugins);
  app.add_option("--relay", relay);
  app.add_option("--vectors", vectors);
  app.add_option("--messages", n);
  app.add_option("--payload", payload);
  app.add_option("--window", window);
  app.add_option("--repeat", repeat);
  CLI11_PARSE(app, argc, argv);
  auto strip = [](std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
    return s;
  };
  const std::string reg = strip(readFile(vectors + "/01-a-register.json"));
  const std::string cmd = strip(readFile(vectors + "/13-b-ok-command-auth.json"));
  if (reg.empty() || cmd.empty()) {
    std::fprintf(stderr, "cannot read the vectors in %s\n", vectors.c_str());
    return 1;
  }
  std::printf("# zmq_forward: %zu commands of %zu B, window %zu, %s\n", n, payload, window, cpuModel().c_str());
  std::printf("load before: %s\n\n", loadLine().c_str());
  std::vector<Result> results;
  for (int k = 0; k < repeat; ++k) {
    {
      Gateway gw(fingate, plugins, "zmq-forward",
                 "endpoints:\n"
                 "  orchestrator: { plugin: zmq, role: orchestrator, bind: \"tcp://127.0.0.1:{PORT:o}\" }\n"
                 "  fins: { plugin: zmq, role: fins, bind: \"tcp://127.0.0.1:{PORT:f}\" }\n");
      if (!gw.start()) return 1;
      results.push_back(runTarget("fingate", "tcp://127.0.0.1:" + std::to_string(gw.port("o")),
                                  "tcp://127.0.0.1:" + std::to_string(gw.port("f")), gw.pid(), reg, cmd, n, payload,
                                  window));
      if (!results.back().ok) std::fprintf(stderr, "fingate log: %s\n", gw.logPath().c_str());
    }
    {
      const int p1 = freePort(), p2 = freePort();
      Process rp({relay, "tcp://127.0.0.1:" + std::to_string(p1), "tcp://127.0.0.1:" + std::to_string(p2)},
                 tempDir("zmq-relay") + "/relay.log");
      waitFor([&] { return rp.log().find("relay ready") != std::string::npos || !rp.running(); }, 5s);
      results.push_back(runTarget("relay", "tcp://127.0.0.1:" + std::to_string(p1),
                                  "tcp://127.0.0.1:" + std::to_string(p2), rp.pid(), reg, cmd, n, payload, window));
      rp.terminate();
    }
  }
  std::printf("| target | sent | received | out of order | msg/s | target CPU µs/msg | harness CPU µs/msg |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
  bool all_ok = true;
  for (auto& r : results) {
    all_ok = all_ok && r.ok;
    const double rate = r.seconds > 0 ? double(r.received) / r.seconds : 0;
    std::printf("| %s | %zu | %zu | %zu | %.0f | %.2f | %.2f |\n", r.target.c_str(), r.sent, r.received, r.out_of_order,
                rate, r.received ? r.cpu_ms * 1000 / double(r.received) : 0,
                r.received ? r.own_cpu_ms * 1000 / double(r.received) : 0);
  }
  for (size_t i = 0; i + 1 < results.size(); i += 2) {
    const double a = results[i].seconds > 0 ? double(results[i].received) / results[i].seconds : 0;
    const double b = results[i + 1].seconds > 0 ? double(results[i + 1].received) / results[i + 1].seconds : 0;
    std::printf("\nrun %zu: fingate / relay = %.2f\n", i / 2 + 1, b > 0 ? a / b : 0);
  }
  std::printf("load after: %s\n", loadLine().c_str());
  cleanupTempRoot();
  return all_ok ? 0 : 1;
}
