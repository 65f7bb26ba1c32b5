// mqtt_forward: end-to-end MQTT -> MQTT forwarding benchmark, three paths side by side in one run.
//
//   direct  : publisher and subscriber on one mosquitto (the baseline);
//   fingate : publisher on broker A, the real build/bin/fingate forwarding A -> B (two `role:
//             bridge` MQTT endpoints and one static route), subscriber on broker B;
//   bare    : publisher on broker A'', bench/mqtt_bare_forward (a minimal forwarder on the same
//             client library as fingate's MQTT plugin: subscribe on A'', republish to B'')
//             forwarding A'' -> B'', subscriber on B'';
//   bridge  : publisher on broker A', A' bridges `bench/#` out to B' (mosquitto's own
//             `connection` bridge), subscriber on B'.
//
// For each QoS (1 and 0) and each path: a throughput phase (N messages of 1 KiB as fast as the
// publisher's bounded in-flight window allows; received msgs/s between the first and the last
// receipt; lost / duplicated / out-of-order counts) and a latency phase (a fixed offered rate,
// 10 000 msg/s for 3 s by default; p50/p90/p99/p99.9/max end-to-end latency and the latency a
// forwarder ADDS = its percentile minus the direct path's).
//
// Every payload carries a run id, a sequence number and the send time (steady clock ns) in a
// fixed-width text header, padded to the payload size. Publisher and subscriber live in this
// process, so both ends read the same clock.
//
// Real processes only (mosquitto, fingate, mqtt_bare_forward), loopback only, every process
// stopped by pid at the end (bench_support.hpp: Mosquitto, Gateway, Process). Bounded
// everywhere: a phase that stops making progress gives up and reports what it got.
// The fingate binary and its plugins directory are arguments, so one build of this harness
// measures any build of the gateway (e.g. an older commit's).
//
// Usage: mqtt_forward [--fingate BIN] [--plugins-dir DIR] [--bare BIN] [--bare-window W]
//                     [--messages N] [--rate R] [--seconds S] [--qos 0|1|both] [--repeat K]
//                     [--payload BYTES] [--window W] [--paths direct,fingate,bare,bridge]
//                     [--fingate-options "mqtt_version: 3"] [--keep-logs]
#include <dirent.h>
#include <mqtt/async_client.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <charconv>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <condition_variable>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "../plugins/mqtt/tcp_nodelay.hpp"
#include "bench_support.hpp"

namespace fingate::bench {

// ---- payload ------------------------------------------------------------------------------------
// "r%08x s%010llu t%020lld " then '.' padding up to the payload size (44 bytes of header).
constexpr size_t kHeaderBytes = 44;

void fillPayload(std::string& buf, uint32_t run, uint64_t seq, int64_t ts_ns) {
  char head[96];
  std::snprintf(head, sizeof head, "r%08x s%010" PRIu64 " t%020" PRId64 " ", run, seq, ts_ns);
  std::memcpy(buf.data(), head, kHeaderBytes);
}

struct Stamp {
  uint32_t run = 0;
  uint64_t seq = 0;
  int64_t ts_ns = 0;
};

bool parsePayload(const char* p, size_t n, Stamp& out) {
  if (n < kHeaderBytes || p[0] != 'r' || p[10] != 's' || p[22] != 't') return false;
  auto a = std::from_chars(p + 1, p + 9, out.run, 16);
  auto b = std::from_chars(p + 11, p + 21, out.seq);
  auto c = std::from_chars(p + 23, p + 43, out.ts_ns);
  return a.ec == std::errc() && b.ec == std::errc() && c.ec == std::errc();
}

// Every process of this benchmark (the brokers, the gateway/forwarder while it runs): the rest
// of the machine's busy time is other people's work, reported as "other load" next to each result.
std::vector<int> g_our_pids;

// ---- TCP_NODELAY for the benchmark's own clients ---------------------------------------------------
// libpaho-mqtt3as never calls setsockopt (it imports only getsockopt), so its sockets keep Nagle's
// algorithm: a QoS 0 publisher then waits for the broker's delayed ACK (up to ~40 ms) before it
// sends the next small segment. The benchmark's clients must not add that to every path, so after
// each connect every TCP socket of this process gets TCP_NODELAY (the brokers get set_tcp_nodelay).
// (The gateway's MQTT plugin does the same for its own connections, with the same helper.)
// ---- subscriber ---------------------------------------------------------------------------------

struct PhaseResult {
  size_t expected = 0;
  size_t unique = 0;
  size_t dups = 0;
  size_t out_of_order = 0;
  size_t strays = 0;  // other runs' late messages (ignored)
  int64_t first_ns = 0, last_ns = 0;
  std::vector<int64_t> latencies_ns;  // first receipt of each message
  size_t lost() const { return expected - unique; }
  double recvRate() const {
    if (unique < 2 || last_ns <= first_ns) return 0;
    return static_cast<double>(unique - 1) * 1e9 / static_cast<double>(last_ns - first_ns);
  }
};

class Subscriber {
 public:
  Subscriber(const std::string& url, const std::string& client_id, const std::string& filter, int qos)
      : cli_(url, client_id, mqtt::create_options(MQTTVERSION_3_1_1)) {
    cli_.set_message_callback([this](mqtt::const_message_ptr m) { onMessage(m); });
    auto opts = mqtt::connect_options_builder()
                    .mqtt_version(MQTTVERSION_3_1_1)
                    .clean_session(true)
                    .keep_alive_interval(std::chrono::seconds(30))
                    .finalize();
    cli_.connect(opts)->wait_for(10s);
    if (!cli_.is_connected()) throw std::runtime_error("subscriber could not connect to " + url);
    fingate::setTcpNoDelayToPort(0);  // see above
    if (!cli_.subscribe(filter, qos)->wait_for(10s)) throw std::runtime_error("subscribe timed out on " + url);
  }
  ~Subscriber() {
    try {
      cli_.disable_callbacks();
      if (cli_.is_connected()) cli_.disconnect()->wait_for(2s);
    } catch (...) {
    }
  }

  void arm(uint32_t run, size_t expected) {
    std::lock_guard lk(mu_);
    run_ = run;
    expected_ = expected;
    seen_.assign(expected, 0);
    lat_.assign(expected, -1);
    unique_ = 0;
    dups_ = out_of_order_ = strays_ = 0;
    max_seq_ = -1;
    first_ns_ = last_ns_ = 0;
    last_rx_ns_.store(nowNs());
  }
  size_t unique() const { return unique_.load(); }
  int64_t lastRxNs() const { return last_rx_ns_.load(); }
  // Messages of `run` seen at all (the probe uses it).
  bool sawRun(uint32_t run) {
    std::lock_guard lk(mu_);
    return probe_run_ == run;
  }

  PhaseResult take() {
    std::lock_guard lk(mu_);
    PhaseResult r;
    r.expected = expected_;
    r.unique = unique_;
    r.dups = dups_;
    r.out_of_order = out_of_order_;
    r.strays = strays_;
    r.first_ns = first_ns_;
    r.last_ns = last_ns_;
    r.latencies_ns.reserve(unique_);
    for (int64_t l : lat_)
      if (l >= 0) r.latencies_ns.push_back(l);
    run_ = 0;
    return r;
  }

 private:
  void onMessage(const mqtt::const_message_ptr& m) {
    int64_t now = nowNs();
    const auto& p = m->get_payload_ref();
    Stamp s;
    std::lock_guard lk(mu_);
    if (!parsePayload(p.data(), p.size(), s)) {
      ++strays_;
      return;
    }
    probe_run_ = s.run;
    if (s.run != run_ || run_ == 0 || s.seq >= expected_) {
      ++strays_;
      return;
    }
    last_rx_ns_.store(now, std::memory_order_relaxed);
    if (seen_[s.seq]++) {
      ++dups_;
      return;
    }
    lat_[s.seq] = now - s.ts_ns;
    if (static_cast<int64_t>(s.seq) < max_seq_)
      ++out_of_order_;
    else
      max_seq_ = static_cast<int64_t>(s.seq);
    if (!first_ns_) first_ns_ = now;
    last_ns_ = now;
    unique_.fetch_add(1, std::memory_order_release);
  }

  std::mutex mu_;
  uint32_t run_ = 0;
  uint32_t probe_run_ = 0;
  size_t expected_ = 0;
  std::vector<uint32_t> seen_;
  std::vector<int64_t> lat_;
  std::atomic<size_t> unique_{0};
  std::atomic<int64_t> last_rx_ns_{0};
  size_t dups_ = 0, out_of_order_ = 0, strays_ = 0;
  int64_t max_seq_ = -1;
  int64_t first_ns_ = 0, last_ns_ = 0;
  mqtt::async_client cli_;  // last: destroyed first, before what its callback touches
};

// ---- publisher ----------------------------------------------------------------------------------

// Paho async with our own bounded window: never more than `window` publishes handed to paho and
// not completed (PUBACK for QoS 1, written for QoS 0). Paho parks publishes beyond its
// max_inflight and only looks at them again when its send thread wakes up by itself, so the
// window stays at or below max_inflight.
class Publisher {
 public:
  Publisher(const std::string& url, const std::string& client_id, int qos, int window)
      : qos_(qos),
        window_(window),
        listener_(this),
        cli_(url, client_id, mqtt::create_options(MQTTVERSION_3_1_1, window + 1000)) {
    auto opts = mqtt::connect_options_builder()
                    .mqtt_version(MQTTVERSION_3_1_1)
                    .clean_session(true)
                    .keep_alive_interval(std::chrono::seconds(30))
                    .max_inflight(window)
                    .finalize();
    cli_.connect(opts)->wait_for(10s);
    if (!cli_.is_connected()) throw std::runtime_error("publisher could not connect to " + url);
    fingate::setTcpNoDelayToPort(0);  // see above
  }
  ~Publisher() {
    try {
      flush(2s);
      if (cli_.is_connected()) cli_.disconnect()->wait_for(2s);
    } catch (...) {
    }
  }

  // False when the window stayed full for 10 s or paho refused it for good.
  bool publish(const std::string& topic, const std::string& payload) {
    if (inflight_.load() >= window_) {
      auto give_up = Clock::now() + 10s;
      std::unique_lock lk(wait_mu_);
      waiting_ = true;
      while (!window_cv_.wait_for(lk, 10ms, [&] { return inflight_.load() < window_; }))
        if (Clock::now() > give_up || g_interrupted) {
          waiting_ = false;
          return false;
        }
      waiting_ = false;
    }
    auto msg = mqtt::message::create(topic, payload.data(), payload.size(), qos_, false);
    for (int attempt = 0; attempt < 1000; ++attempt) {
      inflight_.fetch_add(1);
      try {
        cli_.publish(msg, nullptr, listener_);
        return true;
      } catch (const mqtt::exception& e) {
        inflight_.fetch_sub(1);
        ++refusals_;
        if (e.get_return_code() != MQTTASYNC_MAX_BUFFERED_MESSAGES) return false;
        std::this_thread::sleep_for(200us);
      }
    }
    return false;
  }
  bool flush(std::chrono::milliseconds timeout) {
    auto end = Clock::now() + timeout;
    while (inflight_.load() > 0 && Clock::now() < end) std::this_thread::sleep_for(1ms);
    return inflight_.load() == 0;
  }
  uint64_t failures() const { return failures_.load(); }
  uint64_t refusals() const { return refusals_; }

 private:
  class Listener : public mqtt::iaction_listener {
   public:
    explicit Listener(Publisher* p) : p_(p) {}
    void on_success(const mqtt::token&) override { p_->done(true); }
    void on_failure(const mqtt::token&) override { p_->done(false); }

   private:
    Publisher* p_;
  };
  void done(bool ok) {
    if (!ok) failures_.fetch_add(1);
    inflight_.fetch_sub(1);
    if (waiting_.load()) {  // the publisher waits for room: wake it (a futex only then)
      std::lock_guard lk(wait_mu_);
      window_cv_.notify_one();
    }
  }

  int qos_;
  int window_;
  Listener listener_;
  std::atomic<int> inflight_{0};
  std::mutex wait_mu_;
  std::condition_variable window_cv_;
  std::atomic<bool> waiting_{false};
  std::atomic<uint64_t> failures_{0};
  uint64_t refusals_ = 0;
  mqtt::async_client cli_;  // last: destroyed first, before the listener its tokens point to
};

// ---- phases -------------------------------------------------------------------------------------

struct Options {
  size_t messages = 30000;
  int rate = 10000;
  double seconds = 3.0;
  std::string qos = "both";
  int repeat = 1;
  size_t payload = 1024;
  int window = 1000;
  std::string paths = "direct,fingate,bare,bridge";
  bool keep_logs = false;
  std::string fingate_options;  // extra flow-map entries for both MQTT endpoints, e.g. "mqtt_version: 3"
  std::string fingate = FINGATE_BENCH_DEFAULT_BIN;
  std::string plugins_dir = FINGATE_BENCH_DEFAULT_PLUGINS;
  std::string bare;  // default: mqtt_bare_forward next to this program
  // 20: paho-c looks each PUBACK up in a linear list of the client's in-flight messages, so a
  // large window costs the bare forwarder CPU per message (measured: ~40-65 µs/msg at 10-20,
  // ~70-100 at 200-1000); fingate's plugin negotiates 19 with mosquitto (MQTT 5 Receive Maximum - 1).
  int bare_window = 20;
};

struct Path {
  std::string name;
  std::string pub_url, sub_url;
  std::vector<int> server_pids;  // brokers (+ gateway) on this path, for CPU accounting
  int forwarder_pid = 0;         // the forwarder's own pid (fingate or mqtt_bare_forward; 0: none)
};

struct Throughput {
  PhaseResult r;
  double send_rate = 0;
  double server_cpu_ms = 0, fwd_cpu_ms = 0;
  uint64_t pub_failures = 0;
  bool complete = false;
  // The path drained slower than the publisher fed it (a backlog grew behind the first broker):
  // the received rate is then the path's capacity; otherwise only a lower bound of it.
  bool saturated() const { return r.recvRate() < 0.9 * send_rate; }
};

struct Latency {
  PhaseResult r;
  double offered_rate = 0;   // achieved send rate
  int64_t send_span_ns = 0;  // first to last send
  int64_t max_send_lag_ns = 0;
  double server_cpu_ms = 0, fwd_cpu_ms = 0;
  int64_t p50 = 0, p90 = 0, p99 = 0, p999 = 0, max = 0;
  bool complete = false;
};

// Waits until every message arrived, or nothing new came for `idle`, or `cap` passed.
bool waitReceived(Subscriber& sub, size_t expected, std::chrono::milliseconds idle, std::chrono::milliseconds cap) {
  auto end = Clock::now() + cap;
  while (sub.unique() < expected && Clock::now() < end && !g_interrupted) {
    if (nowNs() - sub.lastRxNs() > std::chrono::duration_cast<std::chrono::nanoseconds>(idle).count()) break;
    std::this_thread::sleep_for(2ms);
  }
  return sub.unique() >= expected;
}

uint32_t g_next_run = 1;

// Publishes probes until the subscriber hears one: the forwarding path is live end to end.
bool probe(Publisher& pub, Subscriber& sub, const std::string& topic, size_t payload_bytes) {
  uint32_t run = g_next_run++;
  std::string buf(payload_bytes, '.');
  auto end = Clock::now() + 20s;
  for (uint64_t i = 0; Clock::now() < end && !g_interrupted; ++i) {
    fillPayload(buf, run, 1u << 30, nowNs());
    pub.publish(topic, buf);
    if (waitFor([&] { return sub.sawRun(run); }, 200ms)) return true;
  }
  return false;
}

Throughput runThroughput(Publisher& pub, Subscriber& sub, const Path& path, const std::string& topic, size_t n,
                         size_t payload_bytes) {
  Throughput t;
  uint32_t run = g_next_run++;
  std::string buf(payload_bytes, '.');
  sub.arm(run, n);
  double cpu0 = cpuMs(path.server_pids), fwd0 = cpuMs(path.forwarder_pid);
  uint64_t fail0 = pub.failures();
  int64_t t0 = nowNs();
  size_t sent = 0;
  for (; sent < n && !g_interrupted; ++sent) {
    fillPayload(buf, run, sent, nowNs());
    if (!pub.publish(topic, buf)) break;
  }
  int64_t t1 = nowNs();
  t.send_rate = static_cast<double>(sent) * 1e9 / static_cast<double>(std::max<int64_t>(1, t1 - t0));
  t.complete = waitReceived(sub, n, 3s, 60s);
  t.server_cpu_ms = cpuMs(path.server_pids) - cpu0;
  t.fwd_cpu_ms = cpuMs(path.forwarder_pid) - fwd0;
  pub.flush(5s);
  t.pub_failures = pub.failures() - fail0;
  t.r = sub.take();
  return t;
}

Latency runLatency(Publisher& pub, Subscriber& sub, const Path& path, const std::string& topic, int rate,
                   double seconds, size_t payload_bytes) {
  Latency l;
  uint32_t run = g_next_run++;
  size_t n = static_cast<size_t>(rate * seconds);
  std::string buf(payload_bytes, '.');
  sub.arm(run, n);
  double cpu0 = cpuMs(path.server_pids), fwd0 = cpuMs(path.forwarder_pid);
  auto period = std::chrono::nanoseconds(1'000'000'000LL / rate);
  auto start = Clock::now() + 5ms;
  int64_t first_send = 0, last_send = 0;
  size_t sent = 0;
  for (; sent < n && !g_interrupted; ++sent) {
    auto due = start + period * static_cast<int64_t>(sent);
    if (Clock::now() < due) std::this_thread::sleep_until(due);
    int64_t now = nowNs();
    l.max_send_lag_ns = std::max<int64_t>(
        l.max_send_lag_ns, now - std::chrono::duration_cast<std::chrono::nanoseconds>(due.time_since_epoch()).count());
    if (!first_send) first_send = now;
    last_send = now;
    fillPayload(buf, run, sent, now);
    if (!pub.publish(topic, buf)) break;
  }
  l.send_span_ns = last_send - first_send;
  l.offered_rate =
      sent > 1 ? static_cast<double>(sent - 1) * 1e9 / static_cast<double>(std::max<int64_t>(1, last_send - first_send))
               : 0;
  l.complete = waitReceived(sub, n, 3s, 30s);
  l.server_cpu_ms = cpuMs(path.server_pids) - cpu0;
  l.fwd_cpu_ms = cpuMs(path.forwarder_pid) - fwd0;
  pub.flush(5s);
  l.r = sub.take();
  auto& v = l.r.latencies_ns;
  std::sort(v.begin(), v.end());
  l.p50 = percentile(v, 0.50);
  l.p90 = percentile(v, 0.90);
  l.p99 = percentile(v, 0.99);
  l.p999 = percentile(v, 0.999);
  l.max = v.empty() ? 0 : v.back();
  return l;
}

struct PathResult {
  std::string path;
  bool fwd = false;       // the path has its own forwarder process (fingate, bare)
  double other_cpus = 0;  // other processes' load during this path's phases
  bool ok = false;
  std::string error;
  Throughput tp;
  Latency lat;
};

PathResult runPath(const Path& path, int qos, const Options& o, int round) {
  PathResult pr;
  pr.path = path.name;
  pr.fwd = path.forwarder_pid > 0;
  OtherLoad load(g_our_pids);
  std::string topic = "bench/q" + std::to_string(qos) + "/load";
  std::string tag =
      std::to_string(::getpid()) + "-" + path.name + "-q" + std::to_string(qos) + "-" + std::to_string(round);
  try {
    Subscriber sub(path.sub_url, "bench-sub-" + tag, "bench/q" + std::to_string(qos) + "/#", qos);
    Publisher pub(path.pub_url, "bench-pub-" + tag, qos, o.window);
    if (!probe(pub, sub, topic, o.payload)) {
      pr.error = "no message came through within 20 s";
      return pr;
    }
    // Warm-up (not reported): caches, allocations, TCP windows.
    runThroughput(pub, sub, path, topic, std::min<size_t>(2000, o.messages), o.payload);
    pr.tp = runThroughput(pub, sub, path, topic, o.messages, o.payload);
    std::this_thread::sleep_for(300ms);
    pr.lat = runLatency(pub, sub, path, topic, o.rate, o.seconds, o.payload);
    pr.ok = true;
    pr.other_cpus = load.cpus();
  } catch (const std::exception& e) {
    pr.error = e.what();
  }
  return pr;
}

// ---- reporting ----------------------------------------------------------------------------------

std::string us(int64_t ns) { return fmt("%.0f", static_cast<double>(ns) / 1e3); }
std::string usSigned(int64_t ns) { return fmt("%+.0f", static_cast<double>(ns) / 1e3); }

void printThroughput(const std::vector<PathResult>& rs, int qos, const Options& o) {
  std::printf("\n#### Throughput, QoS %d, %zu x %zu B, publisher window %d\n\n", qos, o.messages, o.payload, o.window);
  std::printf(
      "| path | publish msg/s | **received msg/s** | MB/s | lost | dup | out-of-order | saturated | server CPU µs/msg "
      "| forwarder CPU µs/msg | other load (CPUs) |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|\n");
  for (auto& p : rs) {
    if (!p.ok) {
      std::printf("| %s | FAILED: %s |||||||||\n", p.path.c_str(), p.error.c_str());
      continue;
    }
    auto& t = p.tp;
    double n = static_cast<double>(std::max<size_t>(1, t.r.unique));
    std::printf("| %s | %.0f | **%.0f** | %.1f | %zu | %zu | %zu | %s | %.1f | %s | %.2f |\n", p.path.c_str(),
                t.send_rate, t.r.recvRate(), t.r.recvRate() * static_cast<double>(o.payload) / 1e6, t.r.lost(),
                t.r.dups, t.r.out_of_order, t.saturated() ? "yes" : "no", t.server_cpu_ms * 1000.0 / n,
                p.fwd ? fmt("%.1f", t.fwd_cpu_ms * 1000.0 / n).c_str() : "–", p.other_cpus);
  }
}

void printLatency(const std::vector<PathResult>& rs, int qos, const Options& o) {
  const PathResult* direct = nullptr;
  for (auto& p : rs)
    if (p.path == "direct" && p.ok) direct = &p;
  std::printf("\n#### Latency, QoS %d, offered %d msg/s for %.1f s, %zu B (µs)\n\n", qos, o.rate, o.seconds, o.payload);
  std::printf(
      "| path | sent msg/s | kept up | received | lost | dup | ooo | p50 | p90 | **p99** | p99.9 | max | added p50 | "
      "**added p99** | server CPU µs/msg | forwarder CPU µs/msg |\n");
  std::printf("|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (auto& p : rs) {
    if (!p.ok) {
      std::printf("| %s | FAILED: %s ||||||||||||||\n", p.path.c_str(), p.error.c_str());
      continue;
    }
    auto& l = p.lat;
    std::string a50 = "–", a99 = "–";
    if (direct && p.path != "direct") {
      a50 = usSigned(l.p50 - direct->lat.p50);
      a99 = usSigned(l.p99 - direct->lat.p99);
    }
    double n = static_cast<double>(std::max<size_t>(1, l.r.unique));
    // Kept up: the offered rate went out (the publisher's window to the first broker did not
    // throttle it below 98%) and the receipts took no longer than the sends + 50 ms (no backlog).
    bool kept_up = l.r.unique == l.r.expected && l.offered_rate >= 0.98 * o.rate &&
                   l.r.last_ns - l.r.first_ns <= l.send_span_ns + 50'000'000;
    std::printf("| %s | %.0f | %s | %zu | %zu | %zu | %zu | %s | %s | **%s** | %s | %s | %s | **%s** | %.1f | %s |\n",
                p.path.c_str(), l.offered_rate, kept_up ? "yes" : "**no**", l.r.unique, l.r.lost(), l.r.dups,
                l.r.out_of_order, us(l.p50).c_str(), us(l.p90).c_str(), us(l.p99).c_str(), us(l.p999).c_str(),
                us(l.max).c_str(), a50.c_str(), a99.c_str(), l.server_cpu_ms * 1000.0 / n,
                p.fwd ? fmt("%.1f", l.fwd_cpu_ms * 1000.0 / n).c_str() : "–");
  }
}

// Per round and QoS: the forwarding paths' throughput phase side by side.
struct Summary {
  int qos = 0;
  int round = 0;
  struct Row {
    bool ok = false, saturated = false;
    double rate = 0, fwd_cpu = 0, server_cpu = 0, added_p99_us = 0;
  } fingate, bare, bridge;
  bool has_direct = false;
};

Summary summarize(const std::vector<PathResult>& rs, int qos, int round) {
  Summary s;
  s.qos = qos;
  s.round = round;
  const PathResult* d = nullptr;
  for (auto& p : rs)
    if (p.ok && p.path == "direct") d = &p;
  s.has_direct = d != nullptr;
  for (auto& p : rs) {
    Summary::Row* row = p.path == "fingate"  ? &s.fingate
                        : p.path == "bare"   ? &s.bare
                        : p.path == "bridge" ? &s.bridge
                                             : nullptr;
    if (!row || !p.ok) continue;
    double n = static_cast<double>(std::max<size_t>(1, p.tp.r.unique));
    row->ok = true;
    row->saturated = p.tp.saturated();
    row->rate = p.tp.r.recvRate();
    row->fwd_cpu = p.tp.fwd_cpu_ms * 1000.0 / n;
    row->server_cpu = p.tp.server_cpu_ms * 1000.0 / n;
    if (d) row->added_p99_us = static_cast<double>(p.lat.p99 - d->lat.p99) / 1e3;
  }
  return s;
}

void printSummary(const std::vector<Summary>& ss, const Options& o) {
  auto cell = [](const Summary::Row& r, const char* f, double v) { return r.ok ? fmt(f, v) : std::string("–"); };
  auto ratio = [](const Summary::Row& a, const Summary::Row& b, double x, double y) {
    return a.ok && b.ok && y > 0 ? fmt("%.2fx", x / y) : std::string("–");
  };
  std::printf("\n#### Summary (throughput phase; goal: fingate >= 0.9x the bare forwarder)\n\n");
  std::printf(
      "| round | QoS | received msg/s fingate / bare / bridge | saturated f / ba / br | **fingate/bare** | "
      "fingate/bridge "
      "| forwarder CPU µs/msg fingate / bare | **CPU fingate/bare** | server CPU µs/msg fingate / bare / bridge "
      "| added p99 µs at %d msg/s fingate / bare / bridge | goal |\n",
      o.rate);
  std::printf("|---:|---:|---|---|---:|---:|---|---:|---|---|---|\n");
  for (auto& s : ss) {
    const auto &f = s.fingate, &b = s.bare, &br = s.bridge;
    std::string goal = "–";
    if (f.ok && b.ok && b.rate > 0) {
      double r = f.rate / b.rate;
      // A ratio decides only when the path that should be the slower one was saturated.
      goal = r >= 0.9 ? (b.saturated ? "met" : "met? (bare not saturated)")
                      : (f.saturated ? "**missed**" : "missed? (fingate not saturated)");
    }
    auto yn = [](const Summary::Row& r) { return r.ok ? (r.saturated ? "yes" : "no") : "–"; };
    std::printf(
        "| %d | %d | %s / %s / %s | %s / %s / %s | **%s** | %s | %s / %s | **%s** | %s / %s / %s | %s / %s / %s | %s "
        "|\n",
        s.round, s.qos, cell(f, "%.0f", f.rate).c_str(), cell(b, "%.0f", b.rate).c_str(),
        cell(br, "%.0f", br.rate).c_str(), yn(f), yn(b), yn(br), ratio(f, b, f.rate, b.rate).c_str(),
        ratio(f, br, f.rate, br.rate).c_str(), cell(f, "%.1f", f.fwd_cpu).c_str(), cell(b, "%.1f", b.fwd_cpu).c_str(),
        ratio(f, b, f.fwd_cpu, b.fwd_cpu).c_str(), cell(f, "%.1f", f.server_cpu).c_str(),
        cell(b, "%.1f", b.server_cpu).c_str(), cell(br, "%.1f", br.server_cpu).c_str(),
        s.has_direct ? cell(f, "%+.0f", f.added_p99_us).c_str() : "–",
        s.has_direct ? cell(b, "%+.0f", b.added_p99_us).c_str() : "–",
        s.has_direct ? cell(br, "%+.0f", br.added_p99_us).c_str() : "–", goal.c_str());
  }
  std::fflush(stdout);
}

// ---- setup ----------------------------------------------------------------------------------------

// Same settings on every broker: no per-client queue limit (a forwarding benchmark, not a test of
// mosquitto's drop policy), everything else mosquitto 2's defaults (max_inflight_messages 20).
const char* kBrokerExtra = "max_queued_messages 0\nmax_queued_bytes 0\nset_tcp_nodelay true\n";

std::string gatewayConfig(const std::string& a_url, const std::string& b_url, int qos, const std::string& extra) {
  std::string q = std::to_string(qos) + (extra.empty() ? "" : ", " + extra);
  return "endpoints:\n"
         "  a: { plugin: mqtt, role: bridge, url: \"" +
         a_url + "\", qos: " + q +
         " }\n"
         "  b: { plugin: mqtt, role: bridge, url: \"" +
         b_url + "\", qos: " + q +
         " }\n"
         "routes:\n"
         "  - from: { endpoint: a, topic: \"bench/#\" }\n"
         "    to:   { endpoint: b, topic: \"{topic}\" }\n";
}

int run(const Options& o) {
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);  // sleep_until as precise as the kernel allows
  std::vector<int> qoses;
  if (o.qos == "both")
    qoses = {1, 0};
  else
    qoses = {std::stoi(o.qos)};
  auto wants = [&](const std::string& p) { return o.paths.find(p) != std::string::npos; };

  std::printf("## mqtt_forward: %s, %u cpus, load %s\n", cpuModel().c_str(), std::thread::hardware_concurrency(),
              loadLine().c_str());
  std::fflush(stdout);

  std::string extra = kBrokerExtra;
  Mosquitto direct(extra), a(extra), b(extra), a3(extra), b3(extra), b2(extra);
  Mosquitto a2(extra +
               "connection benchbridge\n"
               "address 127.0.0.1:" +
               std::to_string(b2.port()) +
               "\n"
               "topic bench/q0/# out 0\n"
               "topic bench/q1/# out 1\n"
               "cleansession true\n"
               "notifications false\n"
               "restart_timeout 1\n");
  g_our_pids = {direct.pid(), a.pid(), b.pid(), a3.pid(), b3.pid(), a2.pid(), b2.pid()};
  std::fprintf(stderr, "brokers: direct %d, fingate A %d -> B %d, bare A'' %d -> B'' %d, bridge A' %d -> B' %d\n",
               direct.port(), a.port(), b.port(), a3.port(), b3.port(), a2.port(), b2.port());
  std::printf("fingate: %s (plugins %s)\nbare forwarder: %s (window %d)\n", o.fingate.c_str(), o.plugins_dir.c_str(),
              o.bare.c_str(), o.bare_window);

  std::vector<Summary> summaries;
  bool all_ok = true;
  for (int round = 1; round <= o.repeat && !g_interrupted; ++round) {
    for (int qos : qoses) {
      if (g_interrupted) break;
      std::vector<PathResult> rs;
      if (wants("direct")) {
        Path p{"direct", direct.url(), direct.url(), {direct.pid()}, 0};
        rs.push_back(runPath(p, qos, o, round));
      }
      if (wants("fingate")) {
        Gateway gw(o.fingate, o.plugins_dir, "fingate-q" + std::to_string(qos),
                   gatewayConfig(a.url(), b.url(), qos, o.fingate_options));
        if (!gw.start(20s)) {
          PathResult pr;
          pr.path = "fingate";
          pr.error = "gateway did not start";
          rs.push_back(pr);
        } else {
          Path p{"fingate", a.url(), b.url(), {a.pid(), b.pid(), gw.pid()}, gw.pid()};
          g_our_pids.push_back(gw.pid());
          rs.push_back(runPath(p, qos, o, round));
          g_our_pids.pop_back();
          if (o.keep_logs) std::fprintf(stderr, "fingate log: %s\n", gw.logPath().c_str());
        }
        gw.stop();
      }
      if (wants("bare")) {
        std::string dir = tempDir("bare-q" + std::to_string(qos));
        Process fwd({o.bare, "--from", a3.url(), "--to", b3.url(), "--filter", "bench/#", "--qos", std::to_string(qos),
                     "--window", std::to_string(o.bare_window), "--max-seconds", "300"},
                    dir + "/bare.log");
        if (!waitFor([&] { return !fwd.running() || fwd.log().find("bare forwarder: up") != std::string::npos; },
                     20s) ||
            !fwd.running()) {
          PathResult pr;
          pr.path = "bare";
          pr.error = "bare forwarder did not start: " + fwd.log();
          rs.push_back(pr);
        } else {
          Path p{"bare", a3.url(), b3.url(), {a3.pid(), b3.pid(), fwd.pid()}, fwd.pid()};
          g_our_pids.push_back(fwd.pid());
          rs.push_back(runPath(p, qos, o, round));
          g_our_pids.pop_back();
        }
        fwd.terminate();
        std::string log = fwd.log();
        auto at = log.find("bare forwarder: received");
        if (at != std::string::npos) std::fprintf(stderr, "%s", log.substr(at).c_str());
      }
      if (wants("bridge")) {
        Path p{"bridge", a2.url(), b2.url(), {a2.pid(), b2.pid()}, 0};
        rs.push_back(runPath(p, qos, o, round));
      }
      for (auto& r : rs) all_ok &= r.ok;
      std::printf("\n### Round %d, QoS %d (load %s)\n", round, qos, loadLine().c_str());
      printThroughput(rs, qos, o);
      printLatency(rs, qos, o);
      summaries.push_back(summarize(rs, qos, round));
      std::fflush(stdout);
    }
  }

  printSummary(summaries, o);
  // Brokers stop by pid in their destructors (SIGTERM, then SIGKILL).
  return all_ok ? 0 : 1;
}

}  // namespace fingate::bench

int main(int argc, char** argv) {
  fingate::bench::Options o;
  o.bare = fingate::bench::selfDir() + "/mqtt_bare_forward";
  CLI::App app{"MQTT -> MQTT forwarding benchmark: direct vs fingate vs a bare paho forwarder vs mosquitto bridge"};
  app.add_option("--fingate", o.fingate, "fingate binary")->capture_default_str();
  app.add_option("--plugins-dir", o.plugins_dir, "directory with libfingate-mqtt.so")->capture_default_str();
  app.add_option("--bare", o.bare, "mqtt_bare_forward binary")->capture_default_str();
  app.add_option("--bare-window", o.bare_window, "the bare forwarder's in-flight window")
      ->capture_default_str()
      ->check(CLI::Range(1, 60000));
  app.add_option("--messages", o.messages, "messages per throughput phase")->capture_default_str();
  app.add_option("--rate", o.rate, "offered rate of the latency phase, msg/s")
      ->capture_default_str()
      ->check(CLI::Range(1, 1000000));
  app.add_option("--seconds", o.seconds, "length of the latency phase")
      ->capture_default_str()
      ->check(CLI::Range(0.1, 60.0));
  app.add_option("--qos", o.qos, "0, 1 or both")->capture_default_str()->check(CLI::IsMember({"0", "1", "both"}));
  app.add_option("--repeat", o.repeat, "rounds")->capture_default_str()->check(CLI::Range(1, 10));
  app.add_option("--payload", o.payload, "payload bytes")->capture_default_str()->check(CLI::Range(64, 1 << 20));
  app.add_option("--window", o.window, "publisher in-flight window")
      ->capture_default_str()
      ->check(CLI::Range(1, 65535));
  app.add_option("--paths", o.paths, "comma-separated subset of direct,fingate,bare,bridge")->capture_default_str();
  app.add_option("--fingate-options", o.fingate_options,
                 "extra options for both fingate MQTT endpoints, YAML flow-map entries (e.g. \"mqtt_version: 3\")");
  app.add_flag("--keep-logs", o.keep_logs,
               "keep /tmp/fingate-bench-<pid> (process logs) and print where the gateway logs are");
  CLI11_PARSE(app, argc, argv);
  if (o.messages < 10 || o.messages > 10'000'000) {
    std::fprintf(stderr, "--messages must be in [10, 10000000]\n");
    return 2;
  }
  std::signal(SIGINT, [](int) { fingate::bench::g_interrupted = true; });
  std::signal(SIGTERM, [](int) { fingate::bench::g_interrupted = true; });
  int rc;
  try {
    rc = fingate::bench::run(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "mqtt_forward: %s\n", e.what());
    rc = 1;
  }
  if (!o.keep_logs) fingate::bench::cleanupTempRoot();
  return rc;
}
