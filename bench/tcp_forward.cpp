// tcp_forward: TCP -> TCP end-to-end benchmark of fingate's data path against a raw frame relay
// (bench/tcp_relay.cpp), side by side in one run.
//
// Targets (each a real process, started fresh, stopped by pid):
//   fingate : `fingate run` with two TCP endpoints, `orchestrator` (role orchestrator) and `fins`
//             (role fins), each listening on a free loopback port (config/fingate.yaml's shape);
//   relay   : tcp_relay, which copies every frame from one side's clients to the other side's.
//
// Per target, on loopback, in this process:
//   1. an orchestrator client O connects to the orchestrator side, subscribes (kind 2) to
//      `soarca` and to the fin's capability topic (for fingate: then a ping/pong barrier);
//   2. a fin client F connects to the fins side and publishes the register of vector
//      01-a-register on `soarca` (re-sent every second until O has received it, at most 10
//      times: the relay drops frames while the other side has no client yet);
//   3. O acks the register on the fin-id topic (fingate commits the binding and passes the ack to
//      F; the relay just forwards it). fingate's router binds a register provisionally at once,
//      so commands route to F's session even before that ack (core/src/router/router.cpp:
//      handleRegister binds, fromOrchestrator looks the topic up in the registry);
//   4. O publishes commands (kind 1) on the capability topic: vector 03-a-command-auth with the
//      message_id replaced by "bench-<run>-<seq>-<send time ns>" and `variables` padded so the
//      payload is exactly --payload bytes (1024 by default): valid Fin command JSON;
//      F counts them by sequence number (lost / duplicated / out of order).
//   Phases: a probe (until a command comes through), a warm-up of 20000 (not reported; its rate
//   sizes the next phase to about --tp-seconds, at most --max-messages), then
//   * throughput: that many commands as fast as the pipe takes them, with at most --window
//     (1000) commands sent and not yet received, ~1 MB in flight: enough to saturate, and within
//     what the gateway holds for one session (before the core rewrite: an 8 MiB outbound buffer
//     per connection; after it: a per-session queue of 1024 messages, beyond which commands
//     are dead-lettered and nacked, which this harness counts as lost); O batches up to 32
//     frames per write(). msg/s = received / (last receipt - first send);
//   * latency: a paced sender at --rate-fraction (0.5) x the throughput just measured for the
//     same target, for --seconds; each command carries its send time (steady clock ns, O and F
//     live in this process); p50/p90/p99/p99.9/max of receive time - send time;
//   * the same at --common-rate (10 000 msg/s) for every target: equal load, comparable latency.
//   A paced sender sleeps until each command's due time and writes it on its own; when it is
//   behind (the 2 vCPUs are busy) it writes everything already due in one write().
//   CPU µs/msg = (utime+stime of the target process from /proc/<pid>/stat after - before the
//   phase) / messages received in the phase (10 ms tick resolution). The harness's own CPU per
//   message is printed too (it shares the 2 vCPUs with the target).
//
// Usage: tcp_forward [--fingate BIN] [--plugins-dir DIR] [--relay BIN] [--targets fingate,relay]
//                    [--tp-seconds S] [--max-messages N] [--seconds S] [--rate-fraction F]
//                    [--common-rate R] [--payload B] [--window W]
//                    [--repeat K] [--keep-logs]
// No timed assertions: it prints tables (markdown) and exits 0 when every target completed
// without loss, 1 otherwise.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/socket.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cinttypes>
#include <csignal>
#include <fstream>
#include <mutex>

#include "bench_support.hpp"

namespace fingate::bench {

// ---- Fin protocol messages: the repository's captured vectors (tests/data/vectors) -------------

const char* const kFinId = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const char* const kCapability = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const char* const kRegisterId = "abec7356-e6f0-11f1-acf4-02fc00000001";
// ---- frames ---------------------------------------------------------------------------------------

// ---- the fin side: counts commands by sequence number ------------------------------------------------

struct PhaseResult {
  size_t expected = 0, unique = 0, dups = 0, out_of_order = 0, strays = 0;
  int64_t first_send_ns = 0, last_rx_ns = 0;
  std::vector<int64_t> latencies_ns;
  size_t lost() const { return expected - unique; }
};

class FinCounter {
 public:
  // Called by the fin's reader thread (lock held).
  void onFrame(uint8_t kind, std::string_view topic, std::string_view payload) {
    int64_t now = nowNs();
    if (kind != kPublish || topic != kCapability) {
      ++other_frames_;
      return;
    }
    IdStamp s;
    if (!readId(payload.data(), payload.size(), s)) {
      ++strays_;
      return;
    }
    last_run_seen_.store(s.run);
    if (s.run != run_ || run_ == 0 || s.seq >= expected_) {
      ++strays_;
      return;
    }
    last_rx_ns_.store(now, std::memory_order_relaxed);
    if (seen_[s.seq]++) {
      ++dups_;
      return;
    }
    lat_[s.seq] = now - s.ts;
    if (static_cast<int64_t>(s.seq) < max_seq_)
      ++ooo_;
    else
      max_seq_ = static_cast<int64_t>(s.seq);
    unique_.fetch_add(1, std::memory_order_release);
  }
  // The caller holds the reader's lock for arm() and take().
  void arm(uint32_t run, size_t n) {
    run_ = run;
    expected_ = n;
    seen_.assign(n, 0);
    lat_.assign(n, -1);
    unique_ = 0;
    dups_ = ooo_ = strays_ = 0;
    max_seq_ = -1;
    last_rx_ns_ = nowNs();
  }
  PhaseResult take() {
    PhaseResult r;
    r.expected = expected_;
    r.unique = unique_;
    r.dups = dups_;
    r.out_of_order = ooo_;
    r.strays = strays_;
    r.last_rx_ns = last_rx_ns_;
    for (int64_t l : lat_)
      if (l >= 0) r.latencies_ns.push_back(l);
    run_ = 0;
    return r;
  }
  size_t unique() const { return unique_.load(std::memory_order_acquire); }
  int64_t lastRxNs() const { return last_rx_ns_.load(std::memory_order_relaxed); }
  uint32_t lastRunSeen() const { return last_run_seen_.load(); }
  uint64_t otherFrames() const { return other_frames_; }

 private:
  uint32_t run_ = 0;
  size_t expected_ = 0;
  std::vector<uint8_t> seen_;
  std::vector<int64_t> lat_;
  std::atomic<size_t> unique_{0};
  std::atomic<int64_t> last_rx_ns_{0};
  std::atomic<uint32_t> last_run_seen_{0};
  size_t dups_ = 0, ooo_ = 0, strays_ = 0;
  int64_t max_seq_ = -1;
  std::atomic<uint64_t> other_frames_{0};
};

// What the orchestrator client hears back (the register; errors and nacks would mean trouble).
struct OrchCounter {
  std::atomic<bool> registered{false};
  std::atomic<uint64_t> pongs{0}, errors{0}, nacks{0}, other{0};
  std::string last_error;  // reader lock
  void onFrame(uint8_t kind, std::string_view topic, std::string_view payload) {
    if (kind == kPong)
      ++pongs;
    else if (kind == kError) {
      ++errors;
      last_error = std::string(payload.substr(0, 300));
    } else if (kind == kPublish && topic == "soarca" && payload.find("\"type\":\"register\"") != std::string_view::npos)
      registered = true;
    else if (kind == kPublish && payload.find("\"type\":\"nack\"") != std::string_view::npos)
      ++nacks;
    else
      ++other;
  }
};

// ---- one target ---------------------------------------------------------------------------------

struct Options {
  std::string fingate = FINGATE_BENCH_DEFAULT_BIN;
  std::string plugins_dir = FINGATE_BENCH_DEFAULT_PLUGINS;
  std::string relay;  // default: tcp_relay next to this program
  std::string targets = "fingate,relay";
  size_t max_messages = 5'000'000;
  double tp_seconds = 3.0;
  double seconds = 3.0;
  double rate_fraction = 0.5;
  double common_rate = 10000;  // a second paced phase at the same rate for every target (0: off)
  size_t payload = 1024;
  size_t window = 1000;
  int repeat = 1;
  bool keep_logs = false;
};

struct Throughput {
  PhaseResult r;
  double rate = 0;  // received / (last receipt - first send)
  double cpu_us_per_msg = 0, self_us_per_msg = 0;
  bool complete = false;
};

struct Latency {
  PhaseResult r;
  double target_rate = 0, sent_rate = 0;
  int64_t send_span_ns = 0, max_lag_ns = 0;
  double cpu_us_per_msg = 0, self_us_per_msg = 0;
  int64_t p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
  bool kept_up = false;
};

struct TargetResult {
  std::string name;
  bool ok = false;
  std::string error;
  Throughput tp;
  Latency lat;     // at rate_fraction x its own saturated rate
  Latency common;  // at common_rate, the same for every target
  double other_cpus = 0;
  std::string notes;  // counters after the run
};

class Bench {
 public:
  Bench(const Options& o, int pid, int orch_fd, FinCounter& fin, FrameReader& fin_reader)
      : o_(o), pid_(pid), fd_(orch_fd), fin_(fin), fin_reader_(fin_reader) {
    frame_ = frame(kPublish, kCapability, makeCommand(o.payload));
    id_at_ = frame_.size() - o.payload + idOffset();
  }

  // Sends commands of a probe run until one arrives (20 s at most).
  bool probe() {
    uint32_t run = next_run_++;
    auto end = Clock::now() + 20s;
    while (Clock::now() < end && !g_interrupted) {
      writeId(frame_.data() + id_at_, run, 1u << 30, nowNs());
      if (!writeAll(fd_, frame_.data(), frame_.size(), Clock::now() + 2s)) return false;
      if (waitFor([&] { return fin_.lastRunSeen() == run; }, 200ms, 1ms)) return true;
    }
    return false;
  }

  Throughput throughput(size_t n) {
    Throughput t;
    uint32_t run = arm(n);
    const size_t kBatch = 32;
    std::string batch;
    batch.reserve(kBatch * frame_.size());
    double cpu0 = cpuMs(pid_), self0 = cpuMs(::getpid());
    int64_t t0 = nowNs();
    auto deadline = Clock::now() + 25s;
    size_t sent = 0;
    while (sent < n && !g_interrupted && Clock::now() < deadline) {
      size_t in_flight = sent - fin_.unique();
      size_t room = in_flight < o_.window ? o_.window - in_flight : 0;
      size_t k = std::min({n - sent, room, kBatch});
      if (k == 0) {
        std::this_thread::sleep_for(20us);
        continue;
      }
      batch.clear();
      int64_t now = nowNs();
      for (size_t i = 0; i < k; ++i) {
        writeId(frame_.data() + id_at_, run, sent + i, now);
        batch += frame_;
      }
      if (!writeAll(fd_, batch.data(), batch.size(), deadline)) break;
      sent += k;
    }
    t.complete = waitDone(sent, deadline + 5s) && sent == n;
    t.r = takeResult(sent);
    t.r.first_send_ns = t0;
    double msgs = static_cast<double>(std::max<size_t>(1, t.r.unique));
    t.cpu_us_per_msg = (cpuMs(pid_) - cpu0) * 1000.0 / msgs;
    t.self_us_per_msg = (cpuMs(::getpid()) - self0) * 1000.0 / msgs;
    t.rate = t.r.unique > 1 ? static_cast<double>(t.r.unique) * 1e9 / static_cast<double>(t.r.last_rx_ns - t0) : 0;
    return t;
  }

  Latency latency(double rate, double seconds) {
    Latency l;
    l.target_rate = rate;
    size_t n = std::max<size_t>(10, static_cast<size_t>(rate * seconds));
    uint32_t run = arm(n);
    std::string batch;
    double cpu0 = cpuMs(pid_), self0 = cpuMs(::getpid());
    auto period = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / rate));
    auto start = Clock::now() + 5ms;
    auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds * 2 + 5));
    int64_t first = 0, last = 0;
    size_t sent = 0;
    while (sent < n && !g_interrupted && Clock::now() < deadline) {
      auto due = start + period * static_cast<int64_t>(sent);
      if (Clock::now() < due) std::this_thread::sleep_until(due);
      if (sent - fin_.unique() >= o_.window) {  // never more than the window outstanding
        std::this_thread::sleep_for(20us);
        continue;
      }
      // Everything due by now goes in one write (only when the sender fell behind).
      auto now_tp = Clock::now();
      int64_t now = nowNs();
      l.max_lag_ns =
          std::max<int64_t>(l.max_lag_ns, std::chrono::duration_cast<std::chrono::nanoseconds>(now_tp - due).count());
      batch.clear();
      size_t k = 0;
      while (sent + k < n && k < 32 && start + period * static_cast<int64_t>(sent + k) <= now_tp) {
        writeId(frame_.data() + id_at_, run, sent + k, now);
        batch += frame_;
        ++k;
      }
      if (k == 0) continue;
      if (!first) first = now;
      last = now;
      if (!writeAll(fd_, batch.data(), batch.size(), deadline)) break;
      sent += k;
    }
    waitDone(sent, deadline + 5s);
    l.r = takeResult(sent);
    double msgs = static_cast<double>(std::max<size_t>(1, l.r.unique));
    l.cpu_us_per_msg = (cpuMs(pid_) - cpu0) * 1000.0 / msgs;
    l.self_us_per_msg = (cpuMs(::getpid()) - self0) * 1000.0 / msgs;
    l.send_span_ns = last - first;
    l.sent_rate =
        sent > 1 && last > first ? static_cast<double>(sent - 1) * 1e9 / static_cast<double>(last - first) : 0;
    auto& v = l.r.latencies_ns;
    std::sort(v.begin(), v.end());
    l.p50 = percentile(v, 0.50);
    l.p90 = percentile(v, 0.90);
    l.p99 = percentile(v, 0.99);
    l.p999 = percentile(v, 0.999);
    l.max = v.empty() ? 0 : v.back();
    // Kept up: every command arrived, >= 98% of the rate went out, and the receipts ended no
    // later than 50 ms after the sends (no backlog grew).
    l.kept_up = l.r.unique == l.r.expected && l.sent_rate >= 0.98 * rate &&
                l.r.last_rx_ns - first <= l.send_span_ns + 50'000'000;
    return l;
  }

 private:
  uint32_t arm(size_t n) {
    uint32_t run = next_run_++;
    auto lk = fin_reader_.lock();
    fin_.arm(run, n);
    return run;
  }
  PhaseResult takeResult(size_t sent) {
    auto lk = fin_reader_.lock();
    PhaseResult r = fin_.take();
    r.expected = sent;  // a phase cut short by its deadline sent fewer than it armed for
    return r;
  }
  // Every message in, or 3 s without progress, or the deadline.
  bool waitDone(size_t n, Clock::time_point deadline) {  // n: what was sent
    while (fin_.unique() < n && Clock::now() < deadline && !g_interrupted) {
      if (nowNs() - fin_.lastRxNs() > 3'000'000'000LL) break;
      std::this_thread::sleep_for(200us);
    }
    return fin_.unique() >= n;
  }

  const Options& o_;
  int pid_;
  int fd_;
  FinCounter& fin_;
  FrameReader& fin_reader_;
  std::string frame_;
  size_t id_at_ = 0;
  static inline uint32_t next_run_ = 1;
};

TargetResult runTarget(const std::string& name, const Options& o) {
  TargetResult tr;
  tr.name = name;
  std::unique_ptr<Gateway> gw;
  std::unique_ptr<Process> relay;
  int pid = 0, orch_port = 0, fins_port = 0;
  if (name == "fingate") {
    gw = std::make_unique<Gateway>(
        o.fingate, o.plugins_dir, "tcp-fingate",
        "endpoints:\n"
        "  orchestrator: { plugin: tcp, role: orchestrator, listen: \"127.0.0.1:{PORT:orchestrator}\" }\n"
        "  fins: { plugin: tcp, role: fins, listen: \"127.0.0.1:{PORT:fins}\" }\n"
        "routes: []\n");
    if (!gw->start()) {
      tr.error = "fingate did not start";
      return tr;
    }
    pid = gw->pid();
    orch_port = gw->port("orchestrator");
    fins_port = gw->port("fins");
  } else {
    std::string dir = tempDir("tcp-relay");
    relay = std::make_unique<Process>(std::vector<std::string>{o.relay, "--max-seconds", "300"}, dir + "/relay.log");
    waitFor(
        [&] {
          std::string log = relay->log();
          orch_port = portAfter(log, "orchestrator listening on");
          fins_port = portAfter(log, "fins listening on");
          return (orch_port && fins_port) || !relay->running();
        },
        10s);
    if (!orch_port || !fins_port) {
      tr.error = "tcp_relay did not start: " + relay->log();
      return tr;
    }
    pid = relay->pid();
  }
  std::fprintf(stderr, "%s: pid %d, orchestrator port %d, fins port %d\n", name.c_str(), pid, orch_port, fins_port);

  OtherLoad load({pid});
  int ofd = connectTo(orch_port), ffd = connectTo(fins_port);
  if (ofd < 0 || ffd < 0) {
    tr.error = "cannot connect";
    if (ofd >= 0) ::close(ofd);
    if (ffd >= 0) ::close(ffd);
    return tr;
  }
  {
    OrchCounter orch;
    FinCounter fin;
    FrameReader orch_reader(ofd, [&](uint8_t k, std::string_view t, std::string_view p) { orch.onFrame(k, t, p); });
    FrameReader fin_reader(ffd, [&](uint8_t k, std::string_view t, std::string_view p) { fin.onFrame(k, t, p); });
    auto dl = [] { return Clock::now() + 5s; };
    std::string setup = frame(kSubscribe, "soarca", "") + frame(kSubscribe, kCapability, "");
    bool ok = writeAll(ofd, setup.data(), setup.size(), dl());
    if (ok && gw) {  // fingate: the subscriptions are stored once the pong is in
      std::string ping = frame(kPing, "", "barrier");
      ok = writeAll(ofd, ping.data(), ping.size(), dl()) && waitFor([&] { return orch.pongs > 0; }, 5s, 1ms);
    }
    std::string reg = frame(kPublish, "soarca", g_register);
    for (int i = 0; ok && i < 10 && !orch.registered && !g_interrupted; ++i) {
      ok = writeAll(ffd, reg.data(), reg.size(), dl());
      waitFor([&] { return orch.registered.load(); }, 1s, 1ms);
    }
    if (ok && orch.registered) {
      std::string ack = frame(kPublish, kFinId, std::string(R"({"type":"ack","message_id":")") + kRegisterId + "\"}");
      ok = writeAll(ofd, ack.data(), ack.size(), dl());
      Bench b(o, pid, ofd, fin, fin_reader);
      if (!ok || !b.probe()) {
        tr.error = "no command came through within 20 s";
      } else {
        // Warm-up (not reported); its rate sizes the measured phase to about --tp-seconds.
        Throughput warm = b.throughput(20000);
        size_t n =
            static_cast<size_t>(std::clamp(warm.rate * o.tp_seconds, 20000.0, static_cast<double>(o.max_messages)));
        load.reset();
        tr.tp = b.throughput(n);
        std::this_thread::sleep_for(300ms);
        double rate = std::max(100.0, tr.tp.rate * o.rate_fraction);
        tr.lat = b.latency(rate, o.seconds);
        if (o.common_rate > 0) {
          std::this_thread::sleep_for(300ms);
          tr.common = b.latency(o.common_rate, o.seconds);
        }
        tr.other_cpus = load.cpus();
        tr.ok = tr.tp.complete && tr.tp.r.lost() == 0 && tr.lat.r.lost() == 0 && tr.common.r.lost() == 0;
        if (!tr.ok) tr.error = "messages lost";
      }
    } else if (tr.error.empty()) {
      tr.error = ok ? "the register never reached the orchestrator" : "write failed";
    }
    char notes[512];
    std::snprintf(notes, sizeof notes,
                  "orchestrator heard: register %s, %" PRIu64 " nacks, %" PRIu64 " error frames, %" PRIu64
                  " other; fin heard %" PRIu64
                  " frames besides commands (the register's ack; through the relay also O's 2 subscribes)",
                  orch.registered ? "yes" : "no", orch.nacks.load(), orch.errors.load(), orch.other.load(),
                  fin.otherFrames());
    tr.notes = notes;
    if (orch.errors) tr.notes += "; last error: " + orch.last_error;
    if (orch_reader.closed() || fin_reader.closed()) tr.notes += "; a client connection was closed by the target";
  }
  ::close(ofd);
  ::close(ffd);
  if (gw) {
    std::string m = gw->metrics();
    if (m.empty()) {
      tr.notes += "; fingate /metrics: no answer";
    } else {
      // A counter with labels has no series until it counts something.
      auto val = [&](const char* name) { return fmt("%.0f", std::max(0.0, metricSum(m, name))); };
      tr.notes += "; fingate /metrics: dead letters " + val("fingate_dead_letters_total") + ", nacks sent " +
                  val("fingate_nacks_sent_total") + ", routed " + val("fingate_routed_total");
    }
    if (o.keep_logs) std::fprintf(stderr, "fingate log: %s\n", gw->logPath().c_str());
    gw->stop();
  } else {
    relay->terminate();
    std::string log = relay->log();
    auto at = log.find("tcp_relay: frames");
    if (at != std::string::npos) tr.notes += "; " + log.substr(at, log.find('\n', at) - at);
  }
  return tr;
}

// ---- report ---------------------------------------------------------------------------------------

std::string us(int64_t ns) { return fmt("%.0f", static_cast<double>(ns) / 1e3); }

void printLatency(const std::vector<TargetResult>& rs, const Latency& (*pick)(const TargetResult&)) {
  std::printf(
      "| target | rate msg/s | sent msg/s | kept up | received | lost | dup | ooo | p50 | p90 | **p99** | p99.9 | max "
      "| max send lag | CPU µs/msg (target) | harness CPU µs/msg |\n");
  std::printf("|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (auto& t : rs) {
    const Latency& l = pick(t);
    if (!l.r.expected) {
      std::printf("| %s | FAILED: %s |||||||||||||||\n", t.name.c_str(), t.error.c_str());
      continue;
    }
    std::printf("| %s | %.0f | %.0f | %s | %zu | %zu | %zu | %zu | %s | %s | **%s** | %s | %s | %s | %.2f | %.2f |\n",
                t.name.c_str(), l.target_rate, l.sent_rate, l.kept_up ? "yes" : "**no**", l.r.unique, l.r.lost(),
                l.r.dups, l.r.out_of_order, us(l.p50).c_str(), us(l.p90).c_str(), us(l.p99).c_str(), us(l.p999).c_str(),
                us(l.max).c_str(), us(l.max_lag_ns).c_str(), l.cpu_us_per_msg, l.self_us_per_msg);
  }
}

void print(const std::vector<TargetResult>& rs, const Options& o, int round) {
  std::printf("\n### Round %d (load %s)\n\n", round, loadLine().c_str());
  std::printf("#### Saturated: ~%.0f s of commands, %zu B payload, window %zu\n\n", o.tp_seconds, o.payload, o.window);
  std::printf(
      "| target | commands | **msg/s** | MB/s | lost | dup | out-of-order | **CPU µs/msg** (target) | harness CPU "
      "µs/msg | other load (CPUs) |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (auto& t : rs) {
    if (!t.tp.r.expected) {
      std::printf("| %s | FAILED: %s |||||||||\n", t.name.c_str(), t.error.c_str());
      continue;
    }
    std::printf("| %s | %zu | **%.0f** | %.1f | %zu | %zu | %zu | **%.2f** | %.2f | %.2f |\n", t.name.c_str(),
                t.tp.r.expected, t.tp.rate, t.tp.rate * static_cast<double>(o.payload) / 1e6, t.tp.r.lost(),
                t.tp.r.dups, t.tp.r.out_of_order, t.tp.cpu_us_per_msg, t.tp.self_us_per_msg, t.other_cpus);
  }
  std::printf("\n#### Paced at %.2f x each target's own saturated rate, %.1f s (latency µs)\n\n", o.rate_fraction,
              o.seconds);
  printLatency(rs, [](const TargetResult& t) -> const Latency& { return t.lat; });
  if (o.common_rate > 0) {
    std::printf("\n#### Paced at %.0f msg/s for every target, %.1f s (latency µs)\n\n", o.common_rate, o.seconds);
    printLatency(rs, [](const TargetResult& t) -> const Latency& { return t.common; });
  }
  const TargetResult *g = nullptr, *r = nullptr;
  for (auto& t : rs) {
    if (t.name == "fingate" && t.tp.r.expected) g = &t;
    if (t.name == "relay" && t.tp.r.expected) r = &t;
  }
  if (g && r) {
    auto ratio = [](double a, double b) { return b > 0 ? fmt("%.2fx", a / b) : std::string("–"); };
    std::printf("\n#### Ratio fingate / relay (same run)\n\n");
    std::printf(
        "| saturated msg/s | CPU µs/msg saturated | CPU µs/msg at %.2fx own | p50 at %.2fx own | p99 at %.2fx own "
        "| CPU µs/msg at %.0f/s | p50 at %.0f/s | p99 at %.0f/s |\n|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        o.rate_fraction, o.rate_fraction, o.rate_fraction, o.common_rate, o.common_rate, o.common_rate);
    auto p = [](int64_t v) { return static_cast<double>(v); };
    std::printf("| %s | %s | %s | %s | %s | %s | %s | %s |\n", ratio(g->tp.rate, r->tp.rate).c_str(),
                ratio(g->tp.cpu_us_per_msg, r->tp.cpu_us_per_msg).c_str(),
                ratio(g->lat.cpu_us_per_msg, r->lat.cpu_us_per_msg).c_str(),
                ratio(p(g->lat.p50), p(r->lat.p50)).c_str(), ratio(p(g->lat.p99), p(r->lat.p99)).c_str(),
                ratio(g->common.cpu_us_per_msg, r->common.cpu_us_per_msg).c_str(),
                ratio(p(g->common.p50), p(r->common.p50)).c_str(), ratio(p(g->common.p99), p(r->common.p99)).c_str());
    std::printf(
        "\n(\"own\": each target paced at %.2f x its own saturated rate, so those rates differ; the fixed-rate columns "
        "compare equal load)\n",
        o.rate_fraction);
  }
  std::printf("\n");
  for (auto& t : rs) {
    if (t.ok)
      std::printf("* %s: no loss; %s\n", t.name.c_str(), t.notes.c_str());
    else
      std::printf("* %s: **%s**; %s\n", t.name.c_str(), t.error.c_str(), t.notes.c_str());
  }
  std::fflush(stdout);
}

int run(const Options& o) {
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  std::vector<std::string> targets;
  for (std::string t : {"fingate", "relay"})
    if (o.targets.find(t) != std::string::npos) targets.push_back(t);
  std::printf("## tcp_forward: %s, %u cpus, load %s\n\nfingate: %s (plugins %s)\nrelay: %s\n", cpuModel().c_str(),
              std::thread::hardware_concurrency(), loadLine().c_str(), o.fingate.c_str(), o.plugins_dir.c_str(),
              o.relay.c_str());
  bool all_ok = true;
  for (int round = 1; round <= o.repeat && !g_interrupted; ++round) {
    std::vector<TargetResult> rs;
    // Alternate the order between rounds (the machine's state drifts).
    auto order = targets;
    if (round % 2 == 0) std::reverse(order.begin(), order.end());
    for (auto& t : order) {
      rs.push_back(runTarget(t, o));
      all_ok &= rs.back().ok;
    }
    std::sort(rs.begin(), rs.end(), [](auto& a, auto& b) { return a.name < b.name; });
    print(rs, o, round);
  }
  return all_ok ? 0 : 1;
}

}  // namespace fingate::bench

int main(int argc, char** argv) {
  fingate::bench::Options o;
  o.relay = fingate::bench::selfDir() + "/tcp_relay";
  CLI::App app{"TCP -> TCP: fingate (orchestrator + fins TCP endpoints) vs a raw frame relay"};
  app.add_option("--fingate", o.fingate, "fingate binary")->capture_default_str();
  app.add_option("--plugins-dir", o.plugins_dir, "directory with libfingate-tcp.so")->capture_default_str();
  app.add_option("--relay", o.relay, "tcp_relay binary")->capture_default_str();
  app.add_option("--targets", o.targets, "comma-separated subset of fingate,relay")->capture_default_str();
  app.add_option("--tp-seconds", o.tp_seconds, "saturated phase length (sized from the warm-up's rate)")
      ->capture_default_str()
      ->check(CLI::Range(0.2, 20.0));
  app.add_option("--max-messages", o.max_messages, "at most this many commands in the saturated phase")
      ->capture_default_str()
      ->check(CLI::Range(20000, 20'000'000));
  app.add_option("--seconds", o.seconds, "length of the paced (latency) phase")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 30.0));
  app.add_option("--common-rate", o.common_rate, "a second paced phase at this rate for every target, msg/s (0: off)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 2e6));
  app.add_option("--rate-fraction", o.rate_fraction, "paced rate as a fraction of the saturated rate")
      ->capture_default_str()
      ->check(CLI::Range(0.01, 1.0));
  app.add_option("--payload", o.payload, "command payload bytes (at least the command JSON itself, ~800)")
      ->capture_default_str()
      ->check(CLI::Range(size_t(1), size_t(1) << 20));
  app.add_option("--window", o.window, "commands sent and not yet received, at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option("--repeat", o.repeat, "rounds")->capture_default_str()->check(CLI::Range(1, 10));
  app.add_flag("--keep-logs", o.keep_logs, "keep /tmp/fingate-bench-<pid> (process logs)");
  std::string vectors = FINGATE_VECTORS_DIR;
  app.add_option("--vectors", vectors, "the captured Fin vectors (register, command)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return fingate::bench::harnessMain("tcp_forward", vectors, o.payload, o.keep_logs,
                                     [&] { return fingate::bench::run(o); });
}
