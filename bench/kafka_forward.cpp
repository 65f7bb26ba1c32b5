// kafka_forward: end-to-end Kafka benchmark of fingate's Kafka plugin (issue 9), each gateway
// path beside a plain librdkafka producer/consumer pair moving the same records, in one run.
//
// Scenarios (each with its own mock Kafka cluster, started fresh and stopped by pid):
//   mqtt-kafka : SOARCA on MQTT, the fin on Kafka. A real mosquitto (free loopback port); fingate
//                with `soarca: {plugin: mqtt, role: orchestrator, qos: 1}` and `bus: {plugin:
//                kafka, role: fins}`. A plain librdkafka producer (the fin) sends the register of
//                vector 01-a on `fin.soarca`; the harness's MQTT client (SOARCA) sees it on
//                `soarca`, acks it on the fin-id topic, then publishes commands (QoS 1) on the
//                capability topic; a plain librdkafka consumer counts them on `fin.<capability>`.
//   kafka-tcp  : SOARCA on Kafka, the fin on TCP. fingate with `soarca: {plugin: kafka, role:
//                orchestrator}` and `edge: {plugin: tcp, role: fins}`. A TCP fin client registers
//                (vector 01-a on `soarca`); a plain librdkafka consumer sees the register on
//                `fin.soarca`, a plain producer acks it on `fin.<fin id>` and then produces the
//                commands on `fin.<capability>` (key and `fin-topic` header = the capability); the
//                TCP fin counts the frames.
//   mqtt-tcp   : a reference without Kafka: mqtt-kafka with a TCP fin instead of the Kafka one
//                (own mosquitto, no mock cluster), so that mqtt-kafka minus mqtt-tcp estimates
//                what the Kafka fin leg costs the gateway beyond a TCP one, in the same run.
//   baseline   : beside each scenario, in the same run and on the same mock cluster (while no
//                gateway runs), a plain producer -> `bench.baseline` -> plain consumer moving the
//                same number of the same records (the gateway's output records for mqtt-kafka:
//                key, `fin-topic`, `fingate-origin`, `fingate-group`; SOARCA's input records for
//                kafka-tcp: key and `fin-topic`).
// Commands: vector 03-a-command-auth with the message_id replaced by
// "bench-<run>-<seq>-<send time ns>" and `variables` padded so that the value is exactly --payload
// bytes (1024): valid Fin command JSON. Receivers count them by sequence number (lost, duplicated,
// out of order; other runs' records, e.g. late probes, are ignored).
//
// The mock cluster: librdkafka's rd_kafka_mock_cluster_new (the Kafka wire protocol on loopback;
// Debian has no Kafka broker), run by THIS program re-executed as a child process
// (`kafka_forward --serve-mock-cluster <brokers> <topic>...`), so the bench needs nothing that
// only the tests build (tests/tools/kafka_mock_cluster is the same thing for the tests). Topics
// are pre-created with one partition. The mock's first consumer-group join waits 3 s and each
// rebalance session.timeout.ms - 1 s, so the gateway's Kafka endpoints get session.timeout.ms 4000
// / heartbeat.interval.ms 500 (as in tests/integration/kafka_e2e_test.cpp); the harness's own
// consumers assign partition 0 of their topics from the beginning (no group, no join).
//
// Phases per path: a probe (until a command comes through: the register, its subscriptions and
// the group rebalances are done), a warm-up of --warmup (5000, not reported), then
//   * saturated: --messages (30 000) commands as fast as the path takes them, with at most
//     --window (1000) sent and not yet received; msg/s = received / (last receipt - first send);
//   * paced: --rate (5000) msg/s for --seconds (3 s); end-to-end latency p50/p90/p99/max (sender
//     and receiver are in this process, one steady clock).
// CPU µs/msg = utime+stime from /proc/<pid>/stat over the phase / messages received (10 ms tick)
// for the gateway, the mock cluster process and this harness (its clients: MQTT publisher,
// librdkafka producer/consumer, TCP fin). Before the phases the gateway's idle CPU (ms per
// second, over 1 s with nothing sent) is measured: librdkafka's threads and the 100 ms commits;
// "net of idle" subtracts it over the phase's duration.
//
// fetch.wait.max.ms of EVERY consumer (the gateway's, through `rdkafka.*`, and the harness's) is
// --fetch-wait-ms (10): the mock answers a Fetch that finds no data only after the full wait, even
// when records arrive meanwhile (a real broker answers at once), so with librdkafka's default 500
// ms every path on the mock moves one window per 500 ms (measured: ~2000 msg/s for every path).
// The cost: more empty fetches (idle CPU), and about half of it as added latency per hop.
//
// Producers here use librdkafka with enable.idempotence=true and linger.ms=1, as the gateway's
// producer does. Loopback only; every child (mock cluster, mosquitto, fingate) is stopped by pid
// and dies with the benchmark (PR_SET_PDEATHSIG). Bounded everywhere.
//
// Usage: kafka_forward [--fingate BIN] [--plugins-dir DIR] [--vectors DIR]
//                      [--scenarios mqtt-kafka,mqtt-tcp,kafka-tcp] [--messages N] [--warmup N]
//                      [--rate R] [--seconds S] [--payload B] [--window W] [--fetch-wait-ms MS]
//                      [--repeat K] [--keep-logs]
// Prints markdown tables; exits 0 when every path completed without loss, 1 otherwise.
#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <mqtt/async_client.h>
#include <netinet/tcp.h>

#include <CLI/CLI.hpp>
#include <charconv>
#include <cinttypes>
#include <condition_variable>
#include <csignal>
#include <mutex>
#include <optional>

#include "../plugins/mqtt/tcp_nodelay.hpp"
#include "bench_support.hpp"

namespace fingate::bench {

// fetch.wait.max.ms of every consumer, the gateway's and the harness's (--fetch-wait-ms). The mock
// cluster answers a Fetch that finds no data only after the full fetch.wait.max.ms, even when
// records arrive meanwhile (a real broker answers as soon as fetch.min.bytes are there), so with
// librdkafka's default of 500 ms every consumer on the mock moves about one window per 500 ms.
int g_fetch_wait_ms = 10;

// ---- Fin protocol messages: the repository's captured vectors (as in tcp_forward) -----------------

const std::string kFinId = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCapability = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegisterId = "abec7356-e6f0-11f1-acf4-02fc00000001";
const std::string kBaselineTopic = "bench.baseline";
std::string ackOf(const std::string& id) { return R"({"type":"ack","message_id":")" + id + "\"}"; }
constexpr uint64_t kProbeSeq = 1u << 30;

// ---- the receiving side: counts commands by sequence number ------------------------------------------

struct PhaseResult {
  size_t expected = 0, unique = 0, dups = 0, out_of_order = 0;
  int64_t first_send_ns = 0, last_rx_ns = 0;
  std::vector<int64_t> latencies_ns;
  size_t lost() const { return expected - unique; }
};

// Fed by a receiver thread (Kafka consumer or TCP reader); armed and read by the sender.
class Counter {
 public:
  void onPayload(std::string_view payload) {
    int64_t now = nowNs();
    IdStamp s;
    std::lock_guard lk(mu_);
    if (payload.size() != expected_size_ || !readId(payload.data(), payload.size(), s)) {
      ++malformed_;
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
    if (waiting_.load()) room_cv_.notify_one();  // the sender waits for room in its window
  }
  // Blocks until fewer than `window` of the `sent` commands are outstanding (100 ms at most).
  void waitForRoom(size_t sent, size_t window) {
    std::unique_lock lk(mu_);
    waiting_ = true;
    room_cv_.wait_for(lk, 100ms, [&] { return sent - unique_.load() < window; });
    waiting_ = false;
  }
  void noteMalformed() {
    std::lock_guard lk(mu_);
    ++malformed_;
  }
  void setExpectedSize(size_t n) { expected_size_ = n; }
  void arm(uint32_t run, size_t n) {
    std::lock_guard lk(mu_);
    run_ = run;
    expected_ = n;
    seen_.assign(n, 0);
    lat_.assign(n, -1);
    unique_ = 0;
    dups_ = ooo_ = 0;
    max_seq_ = -1;
    last_rx_ns_ = nowNs();
  }
  PhaseResult take(size_t sent) {
    std::lock_guard lk(mu_);
    PhaseResult r;
    r.expected = sent;  // a phase cut short by its deadline sent fewer than it armed for
    r.unique = unique_;
    r.dups = dups_;
    r.out_of_order = ooo_;
    r.last_rx_ns = last_rx_ns_;
    for (int64_t l : lat_)
      if (l >= 0) r.latencies_ns.push_back(l);
    run_ = 0;
    return r;
  }
  size_t unique() const { return unique_.load(std::memory_order_acquire); }
  int64_t lastRxNs() const { return last_rx_ns_.load(std::memory_order_relaxed); }
  uint32_t lastRunSeen() const { return last_run_seen_.load(); }
  uint64_t strays() {
    std::lock_guard lk(mu_);
    return strays_;
  }
  uint64_t malformed() {
    std::lock_guard lk(mu_);
    return malformed_;
  }

 private:
  std::mutex mu_;
  std::condition_variable room_cv_;
  std::atomic<bool> waiting_{false};
  size_t expected_size_ = 0;
  uint32_t run_ = 0;
  size_t expected_ = 0;
  std::vector<uint8_t> seen_;
  std::vector<int64_t> lat_;
  std::atomic<size_t> unique_{0};
  std::atomic<int64_t> last_rx_ns_{0};
  std::atomic<uint32_t> last_run_seen_{0};
  size_t dups_ = 0, ooo_ = 0;
  uint64_t strays_ = 0, malformed_ = 0;
  int64_t max_seq_ = -1;
};

// ---- librdkafka clients ---------------------------------------------------------------------------

using Headers = std::vector<std::pair<std::string, std::string>>;

rd_kafka_conf_t* kafkaConf(const std::string& bootstrap, const Headers& props) {
  rd_kafka_conf_t* c = rd_kafka_conf_new();
  char err[512];
  std::vector<std::pair<std::string, std::string>> all = {{"bootstrap.servers", bootstrap}, {"log_level", "3"}};
  all.insert(all.end(), props.begin(), props.end());
  for (auto& [k, v] : all)
    if (rd_kafka_conf_set(c, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(c);
      throw std::runtime_error(k + ": " + err);
    }
  return c;
}

// A plain producer (idempotent, linger.ms 1 like the gateway's); a thread serves its delivery reports.
class Producer {
 public:
  explicit Producer(const std::string& bootstrap) {
    rd_kafka_conf_t* c = kafkaConf(bootstrap, {{"enable.idempotence", "true"}, {"linger.ms", "1"}});
    rd_kafka_conf_set_dr_msg_cb(c, [](rd_kafka_t*, const rd_kafka_message_t* m, void* op) {
      auto* self = static_cast<Producer*>(op);
      (m->err ? self->failed_ : self->delivered_).fetch_add(1, std::memory_order_relaxed);
    });
    rd_kafka_conf_set_opaque(c, this);
    char err[512];
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!rk_) throw std::runtime_error(std::string("producer: ") + err);
    poller_ = std::thread([this] {
      while (!stop_) rd_kafka_poll(rk_, 50);
    });
  }
  ~Producer() {
    rd_kafka_flush(rk_, 5000);
    stop_ = true;
    poller_.join();
    rd_kafka_destroy(rk_);
  }
  Producer(const Producer&) = delete;
  Producer& operator=(const Producer&) = delete;

  // Queues one record (waits while librdkafka's local queue is full, 10 s at most).
  bool send(const std::string& topic, const std::string& key, const std::string& value, const Headers& headers) {
    auto give_up = Clock::now() + 10s;
    while (!g_interrupted) {
      rd_kafka_headers_t* h = rd_kafka_headers_new(headers.size());
      for (auto& [k, v] : headers) rd_kafka_header_add(h, k.c_str(), -1, v.data(), static_cast<ssize_t>(v.size()));
      rd_kafka_resp_err_t e =
          rd_kafka_producev(rk_, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
                            RD_KAFKA_V_VALUE(const_cast<char*>(value.data()), value.size()),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return true;
      rd_kafka_headers_destroy(h);
      if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL || Clock::now() > give_up) return false;
      std::this_thread::sleep_for(1ms);
    }
    return false;
  }
  bool flush(int timeout_ms = 10000) { return rd_kafka_flush(rk_, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR; }
  uint64_t delivered() const { return delivered_.load(); }
  uint64_t failed() const { return failed_.load(); }

 private:
  rd_kafka_t* rk_ = nullptr;
  std::atomic<uint64_t> delivered_{0}, failed_{0};
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

// A plain consumer without group membership: partition 0 of each topic from the beginning (the
// topics are pre-created with one partition), every record handed to `on_record` on its thread.
class Consumer {
 public:
  using Handler = std::function<void(const rd_kafka_message_t*)>;
  Consumer(const std::string& bootstrap, const std::vector<std::string>& topics, Handler h) : on_record_(std::move(h)) {
    // librdkafka's consumer API needs a group id even for assign(); with assign() it never joins.
    rd_kafka_conf_t* c = kafkaConf(bootstrap, {{"group.id", "kafka-forward-reader"},
                                               {"enable.auto.commit", "false"},
                                               {"auto.offset.reset", "earliest"},
                                               {"fetch.wait.max.ms", std::to_string(g_fetch_wait_ms)}});
    char err[512];
    rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    if (!rk_) throw std::runtime_error(std::string("consumer: ") + err);
    rd_kafka_poll_set_consumer(rk_);
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(static_cast<int>(topics.size()));
    for (auto& t : topics) rd_kafka_topic_partition_list_add(l, t.c_str(), 0)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_resp_err_t e = rd_kafka_assign(rk_, l);
    rd_kafka_topic_partition_list_destroy(l);
    if (e) {
      rd_kafka_destroy(rk_);
      throw std::runtime_error(std::string("assign: ") + rd_kafka_err2str(e));
    }
    th_ = std::thread([this] { loop(); });
  }
  ~Consumer() {
    stop_ = true;
    th_.join();
    rd_kafka_consumer_close(rk_);
    rd_kafka_destroy(rk_);
  }
  Consumer(const Consumer&) = delete;
  Consumer& operator=(const Consumer&) = delete;
  uint64_t errors() const { return errors_.load(); }

 private:
  void loop() {
    while (!stop_) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 100);
      if (!m) continue;
      if (m->err) {
        if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF) ++errors_;
      } else {
        on_record_(m);
      }
      rd_kafka_message_destroy(m);
    }
  }
  rd_kafka_t* rk_ = nullptr;
  Handler on_record_;
  std::atomic<bool> stop_{false};
  std::atomic<uint64_t> errors_{0};
  std::thread th_;  // last: started after everything it uses
};

std::string_view keyOf(const rd_kafka_message_t* m) {
  return m->key ? std::string_view(static_cast<const char*>(m->key), m->key_len) : std::string_view();
}
std::string_view valueOf(const rd_kafka_message_t* m) {
  return m->payload ? std::string_view(static_cast<const char*>(m->payload), m->len) : std::string_view();
}
bool hasHeader(const rd_kafka_message_t* m, const char* name) {
  rd_kafka_headers_t* h = nullptr;
  const void* v = nullptr;
  size_t n = 0;
  return rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR &&
         rd_kafka_header_get_last(h, name, &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR;
}

// ---- the mock cluster: this program re-executed as `--serve-mock-cluster` --------------------------

volatile sig_atomic_t g_mock_stop = 0;

// Child mode: rd_kafka_mock_cluster_new with `brokers` brokers, the topics pre-created with one
// partition, the bootstrap list printed on one line, then running until SIGTERM/SIGINT.
int serveMockCluster(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: kafka_forward --serve-mock-cluster <brokers> [topic]...\n");
    return 2;
  }
  int brokers = std::atoi(argv[2]);
  struct sigaction sa {};
  sa.sa_handler = [](int) { g_mock_stop = 1; };
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  char err[512];
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err);
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk) {
    std::fprintf(stderr, "mock cluster: %s\n", err);
    return 1;
  }
  rd_kafka_mock_cluster_t* mc = rd_kafka_mock_cluster_new(rk, std::max(1, brokers));
  if (!mc) {
    std::fprintf(stderr, "mock cluster: cannot create it\n");
    return 1;
  }
  for (int i = 3; i < argc; ++i)
    if (rd_kafka_resp_err_t e = rd_kafka_mock_topic_create(mc, argv[i], 1, 1)) {
      std::fprintf(stderr, "mock cluster: topic %s: %s\n", argv[i], rd_kafka_err2str(e));
      return 1;
    }
  std::printf("bootstrap %s\n", rd_kafka_mock_cluster_bootstraps(mc));
  std::fflush(stdout);
  while (!g_mock_stop) ::poll(nullptr, 0, 100);
  rd_kafka_mock_cluster_destroy(mc);
  rd_kafka_destroy(rk);
  return 0;
}

class MockCluster {
 public:
  explicit MockCluster(const std::vector<std::string>& topics) {
    std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
    std::vector<std::string> argv = {self, "--serve-mock-cluster", "1"};
    argv.insert(argv.end(), topics.begin(), topics.end());
    proc_ = std::make_unique<Process>(argv, tempDir("kafka-mock") + "/mock.log");
    waitFor([&] { return !(bootstrap_ = portLine()).empty() || !proc_->running(); }, 10s);
    if (bootstrap_.empty()) throw std::runtime_error("the mock cluster did not start: " + proc_->log());
  }
  ~MockCluster() { proc_->terminate(); }
  const std::string& bootstrap() const { return bootstrap_; }
  int pid() const { return proc_->pid(); }

 private:
  std::string portLine() {
    std::string log = proc_->log();
    auto at = log.find("bootstrap ");
    auto eol = at == std::string::npos ? at : log.find('\n', at);
    return eol == std::string::npos ? "" : log.substr(at + 10, eol - at - 10);
  }
  std::unique_ptr<Process> proc_;
  std::string bootstrap_;
};

// ---- MQTT: SOARCA's side for mqtt-kafka ------------------------------------------------------------

// Subscribes `soarca` (to see the fin's register come through) and publishes with QoS 1 through a
// bounded window of publishes not yet acknowledged (PUBACK), at most paho's max_inflight.
class MqttSoarca {
 public:
  MqttSoarca(const std::string& url, const std::string& client_id, int window)
      : window_(window), listener_(this), cli_(url, client_id, mqtt::create_options(MQTTVERSION_3_1_1, window + 1000)) {
    cli_.set_message_callback([this](mqtt::const_message_ptr m) {
      if (m->get_topic() == "soarca" && m->get_payload_str().find("\"type\":\"register\"") != std::string::npos)
        registered_ = true;
    });
    auto opts = mqtt::connect_options_builder()
                    .mqtt_version(MQTTVERSION_3_1_1)
                    .clean_session(true)
                    .keep_alive_interval(std::chrono::seconds(30))
                    .max_inflight(window)
                    .finalize();
    cli_.connect(opts)->wait_for(10s);
    if (!cli_.is_connected()) throw std::runtime_error("MQTT client could not connect to " + url);
    // libpaho-mqtt3as never sets TCP_NODELAY (see plugins/mqtt/tcp_nodelay.hpp and mqtt_forward).
    fingate::setTcpNoDelayToPort(0);
    if (!cli_.subscribe("soarca", 1)->wait_for(10s)) throw std::runtime_error("subscribe soarca timed out");
  }
  ~MqttSoarca() {
    try {
      cli_.disable_callbacks();
      auto end = Clock::now() + 2s;
      while (inflight_.load() > 0 && Clock::now() < end) std::this_thread::sleep_for(1ms);
      if (cli_.is_connected()) cli_.disconnect()->wait_for(2s);
    } catch (...) {
    }
  }
  bool registered() const { return registered_.load(); }

  // False when the window stayed full for 10 s or paho refused the publish.
  bool publish(const std::string& topic, const std::string& payload) {
    auto give_up = Clock::now() + 10s;
    while (inflight_.load() >= window_) {
      if (Clock::now() > give_up || g_interrupted) return false;
      std::this_thread::sleep_for(20us);
    }
    auto msg = mqtt::message::create(topic, payload.data(), payload.size(), 1, false);
    for (int attempt = 0; attempt < 1000; ++attempt) {
      inflight_.fetch_add(1);
      try {
        cli_.publish(msg, nullptr, listener_);
        return true;
      } catch (const mqtt::exception& e) {
        inflight_.fetch_sub(1);
        if (e.get_return_code() != MQTTASYNC_MAX_BUFFERED_MESSAGES) return false;
        std::this_thread::sleep_for(200us);
      }
    }
    return false;
  }
  uint64_t failures() const { return failures_.load(); }

 private:
  class Listener : public mqtt::iaction_listener {
   public:
    explicit Listener(MqttSoarca* p) : p_(p) {}
    void on_success(const mqtt::token&) override { p_->inflight_.fetch_sub(1); }
    void on_failure(const mqtt::token&) override {
      p_->failures_.fetch_add(1);
      p_->inflight_.fetch_sub(1);
    }

   private:
    MqttSoarca* p_;
  };
  int window_;
  std::atomic<int> inflight_{0};
  std::atomic<uint64_t> failures_{0};
  std::atomic<bool> registered_{false};
  Listener listener_;
  mqtt::async_client cli_;  // last: destroyed first, before what its callbacks touch
};

// ---- TCP: the fin's side for kafka-tcp (frames as in tcp_forward / docs/transports.md) -------------

// ---- phases ---------------------------------------------------------------------------------------

struct Options {
  std::string fingate = FINGATE_BENCH_DEFAULT_BIN;
  std::string plugins_dir = FINGATE_BENCH_DEFAULT_PLUGINS;
  std::string scenarios = "mqtt-kafka,mqtt-tcp,kafka-tcp";
  size_t messages = 30000;
  size_t warmup = 5000;
  double rate = 5000;
  double seconds = 3.0;
  size_t payload = 1024;
  size_t window = 1000;
  int fetch_wait_ms = 10;  // fetch.wait.max.ms of every consumer (gateway and harness), see below
  int repeat = 1;
  bool keep_logs = false;
};

struct Throughput {
  PhaseResult r;
  double rate = 0;
  double gw_us = 0, mock_us = 0, self_us = 0;  // CPU µs per received message
  double gw_net_us = 0;                        // the gateway's, minus its idle CPU over the phase
  bool complete = false;
};

struct Paced {
  PhaseResult r;
  double target_rate = 0, sent_rate = 0;
  double gw_us = 0, mock_us = 0, self_us = 0, gw_net_us = 0;
  int64_t p50 = 0, p90 = 0, p99 = 0, max = 0;
  bool kept_up = false;
};

struct PathResult {
  std::string scenario, path;  // path: "fingate" or "baseline"
  bool ok = false;
  std::string error;
  double gw_idle_ms_per_s = -1;  // fingate only
  Throughput tp;
  Paced paced;
  double other_cpus = 0;
  std::string notes;
};

// Drives one path: `send(payload)` hands a command to the path's entry, `counter` sees its exit.
class Runner {
 public:
  Runner(const Options& o, std::function<bool(const std::string&)> send, Counter& counter, int gw_pid, int mock_pid)
      : o_(o), send_(std::move(send)), counter_(counter), gw_pid_(gw_pid), mock_pid_(mock_pid) {
    payload_ = makeCommand(o.payload);
    counter_.setExpectedSize(payload_.size());
  }

  // Sends probe commands until one arrives (bounded): the path is live end to end.
  bool probe(std::chrono::seconds timeout) {
    uint32_t run = next_run_++;
    auto end = Clock::now() + timeout;
    while (Clock::now() < end && !g_interrupted) {
      writeId(payload_.data() + idOffset(), run, kProbeSeq, nowNs());
      if (!send_(payload_)) return false;
      if (waitFor([&] { return counter_.lastRunSeen() == run; }, 250ms, 1ms)) return true;
    }
    return false;
  }

  Throughput saturated(size_t n) {
    Throughput t;
    uint32_t run = next_run_++;
    counter_.arm(run, n);
    Cpu c0 = cpu();
    int64_t t0 = nowNs();
    auto deadline = Clock::now() + 60s;
    size_t sent = 0;
    while (sent < n && !g_interrupted && Clock::now() < deadline) {
      if (sent - counter_.unique() >= o_.window) {
        counter_.waitForRoom(sent, o_.window);
        continue;
      }
      writeId(payload_.data() + idOffset(), run, sent, nowNs());
      if (!send_(payload_)) break;
      ++sent;
    }
    t.complete = waitDone(sent, deadline + 10s) && sent == n;
    t.r = counter_.take(sent);
    t.r.first_send_ns = t0;
    perMsg(c0, t.r.unique, t.gw_us, t.gw_net_us, t.mock_us, t.self_us);
    t.rate = t.r.unique > 1 ? static_cast<double>(t.r.unique) * 1e9 / static_cast<double>(t.r.last_rx_ns - t0) : 0;
    return t;
  }

  Paced paced(double rate, double seconds) {
    Paced p;
    p.target_rate = rate;
    size_t n = std::max<size_t>(10, static_cast<size_t>(rate * seconds));
    uint32_t run = next_run_++;
    counter_.arm(run, n);
    Cpu c0 = cpu();
    auto period = std::chrono::nanoseconds(static_cast<int64_t>(1e9 / rate));
    auto start = Clock::now() + 5ms;
    auto deadline = start + std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(seconds * 2 + 5));
    int64_t first = 0, last = 0;
    size_t sent = 0;
    while (sent < n && !g_interrupted && Clock::now() < deadline) {
      auto due = start + period * static_cast<int64_t>(sent);
      if (Clock::now() < due) std::this_thread::sleep_until(due);
      if (sent - counter_.unique() >= o_.window) {
        counter_.waitForRoom(sent, o_.window);
        continue;
      }
      int64_t now = nowNs();
      if (!first) first = now;
      last = now;
      writeId(payload_.data() + idOffset(), run, sent, now);
      if (!send_(payload_)) break;
      ++sent;
    }
    waitDone(sent, deadline + 10s);
    p.r = counter_.take(sent);
    perMsg(c0, p.r.unique, p.gw_us, p.gw_net_us, p.mock_us, p.self_us);
    p.sent_rate =
        sent > 1 && last > first ? static_cast<double>(sent - 1) * 1e9 / static_cast<double>(last - first) : 0;
    auto& v = p.r.latencies_ns;
    std::sort(v.begin(), v.end());
    p.p50 = percentile(v, 0.50);
    p.p90 = percentile(v, 0.90);
    p.p99 = percentile(v, 0.99);
    p.max = v.empty() ? 0 : v.back();
    // Kept up: everything arrived, >= 98% of the rate went out, receipts ended <= 100 ms after the sends.
    p.kept_up = p.r.unique == p.r.expected && p.sent_rate >= 0.98 * rate && p.r.last_rx_ns - last <= 100'000'000;
    return p;
  }

  // The gateway's CPU (ms per second) over `span` with nothing sent.
  double idleCpu(std::chrono::milliseconds span) {
    double c0 = cpuMs(gw_pid_);
    int64_t t0 = nowNs();
    std::this_thread::sleep_for(span);
    idle_ms_per_s_ = (cpuMs(gw_pid_) - c0) * 1e9 / static_cast<double>(nowNs() - t0);
    return idle_ms_per_s_;
  }

 private:
  struct Cpu {
    double gw, mock, self;
    int64_t t;
  };
  Cpu cpu() const { return {gw_pid_ > 0 ? cpuMs(gw_pid_) : 0, cpuMs(mock_pid_), cpuMs(::getpid()), nowNs()}; }
  void perMsg(const Cpu& c0, size_t received, double& gw, double& gw_net, double& mock, double& self) const {
    Cpu c1 = cpu();
    double msgs = static_cast<double>(std::max<size_t>(1, received));
    gw = (c1.gw - c0.gw) * 1000.0 / msgs;
    gw_net = (c1.gw - c0.gw - idle_ms_per_s_ * static_cast<double>(c1.t - c0.t) / 1e9) * 1000.0 / msgs;
    mock = (c1.mock - c0.mock) * 1000.0 / msgs;
    self = (c1.self - c0.self) * 1000.0 / msgs;
  }
  // Every message in, or 5 s without progress, or the deadline.
  bool waitDone(size_t n, Clock::time_point deadline) {
    while (counter_.unique() < n && Clock::now() < deadline && !g_interrupted) {
      if (nowNs() - counter_.lastRxNs() > 5'000'000'000LL) break;
      std::this_thread::sleep_for(200us);
    }
    return counter_.unique() >= n;
  }

  const Options& o_;
  std::function<bool(const std::string&)> send_;
  Counter& counter_;
  int gw_pid_, mock_pid_;
  std::string payload_;
  double idle_ms_per_s_ = 0;
  static inline uint32_t next_run_ = 1;
};

// Probe, warm-up, saturated, paced: fills r (ok/error).
void runPhases(Runner& b, const Options& o, PathResult& r, OtherLoad& load, bool gateway) {
  if (!b.probe(45s)) {
    r.error = "no command came through within 45 s";
    return;
  }
  if (gateway) r.gw_idle_ms_per_s = b.idleCpu(1000ms);
  if (o.warmup) b.saturated(o.warmup);
  load.reset();
  r.tp = b.saturated(o.messages);
  std::this_thread::sleep_for(300ms);
  r.paced = b.paced(o.rate, o.seconds);
  r.other_cpus = load.cpus();
  r.ok = r.tp.complete && r.tp.r.lost() == 0 && r.paced.r.lost() == 0;
  if (!r.ok) r.error = "messages lost";
}

// The plain producer -> bench.baseline -> plain consumer pair, with `headers` on every record.
PathResult runBaseline(const std::string& scenario, const Options& o, MockCluster& mock, const Headers& headers) {
  PathResult r;
  r.scenario = scenario;
  r.path = "baseline";
  Counter counter;
  try {
    Consumer consumer(mock.bootstrap(), {kBaselineTopic}, [&](const rd_kafka_message_t* m) {
      if (keyOf(m) != kCapability)
        counter.noteMalformed();
      else
        counter.onPayload(valueOf(m));
    });
    Producer producer(mock.bootstrap());
    OtherLoad load({mock.pid()});
    Runner b(
        o, [&](const std::string& v) { return producer.send(kBaselineTopic, kCapability, v, headers); }, counter, 0,
        mock.pid());
    runPhases(b, o, r, load, false);
    producer.flush();
    r.notes = "producer delivery reports: " + std::to_string(producer.delivered()) + " ok, " +
              std::to_string(producer.failed()) + " failed; consumer errors " + std::to_string(consumer.errors());
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  r.notes += "; strays (other runs: probes, warm-up) " + std::to_string(counter.strays()) + ", malformed " +
             std::to_string(counter.malformed());
  return r;
}

std::string gatewayNotes(Gateway& gw) {
  std::string m = gw.metrics();
  if (m.empty()) return "fingate /metrics: no answer";
  auto val = [&](const char* name) { return fmt("%.0f", std::max(0.0, metricSum(m, name))); };
  return "fingate /metrics: dead letters " + val("fingate_dead_letters_total") + ", nacks sent " +
         val("fingate_nacks_sent_total") + ", routed " + val("fingate_routed_total");
}

std::string kafkaEndpoint(const std::string& name, const std::string& role, const MockCluster& mock,
                          const std::string& group) {
  return "  " + name + ": { plugin: kafka, role: " + role + ", brokers: \"" + mock.bootstrap() + "\", group: " + group +
         ", rdkafka: { session.timeout.ms: \"4000\", heartbeat.interval.ms: \"500\", fetch.wait.max.ms: \"" +
         std::to_string(g_fetch_wait_ms) + "\" } }\n";
}

// SOARCA on MQTT -> fingate -> the fin on Kafka.
PathResult runMqttKafka(const Options& o, MockCluster& mock, Mosquitto& broker) {
  PathResult r;
  r.scenario = "mqtt-kafka";
  r.path = "fingate";
  Gateway gw(o.fingate, o.plugins_dir, "gw-mqtt-kafka",
             "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + broker.url() + "\", qos: 1 }\n" +
                 kafkaEndpoint("bus", "fins", mock, "fingate-bench-a") + "routes: []\n");
  if (!gw.start()) {
    r.error = "fingate did not start";
    return r;
  }
  Counter counter;
  uint64_t wrong_key = 0;
  try {
    Consumer fin_in(mock.bootstrap(), {"fin." + kCapability}, [&](const rd_kafka_message_t* m) {
      if (keyOf(m) != kCapability || !hasHeader(m, "fingate-origin")) {
        ++wrong_key;
        counter.noteMalformed();
      } else {
        counter.onPayload(valueOf(m));
      }
    });
    Producer fin(mock.bootstrap());
    std::string tag = std::to_string(::getpid()) + "-" + std::to_string(nowNs() % 1000000);
    MqttSoarca soarca(broker.url(), "bench-soarca-" + tag, static_cast<int>(o.window));
    std::fprintf(stderr, "mqtt-kafka: fingate pid %d, mock pid %d (%s), mosquitto pid %d\n", gw.pid(), mock.pid(),
                 mock.bootstrap().c_str(), broker.pid());
    if (!fin.send("fin.soarca", "soarca", g_register, {{"fin-topic", "soarca"}}) || !fin.flush()) {
      r.error = "the fin's register could not be produced";
      return r;
    }
    // The gateway's fins endpoint joins its group (>= 3 s on the mock) before it reads the register.
    if (!waitFor([&] { return soarca.registered(); }, 45s)) {
      r.error = "the register never reached SOARCA on MQTT";
      return r;
    }
    soarca.publish(kFinId, ackOf(kRegisterId));
    OtherLoad load({gw.pid(), mock.pid(), broker.pid()});
    Runner b(
        o, [&](const std::string& v) { return soarca.publish(kCapability, v); }, counter, gw.pid(), mock.pid());
    runPhases(b, o, r, load, true);
    r.notes = "MQTT publish failures " + std::to_string(soarca.failures()) + "; consumer errors " +
              std::to_string(fin_in.errors());
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  r.notes += "; strays (other runs) " + std::to_string(counter.strays()) + ", malformed " +
             std::to_string(counter.malformed()) + " (wrong key/no origin header " + std::to_string(wrong_key) + "); " +
             gatewayNotes(gw);
  if (o.keep_logs) std::fprintf(stderr, "fingate log: %s\n", gw.logPath().c_str());
  gw.stop();
  return r;
}

// SOARCA on Kafka -> fingate -> the fin on TCP.
// Reference without Kafka: SOARCA on MQTT -> fingate -> the fin on TCP (the same MQTT ingress as
// mqtt-kafka, a TCP fin instead of the Kafka one), so that the Kafka producer leg can be told apart
// from the MQTT leg in the same run.
PathResult runMqttTcp(const Options& o, Mosquitto& broker) {
  PathResult r;
  r.scenario = "mqtt-tcp (reference)";
  r.path = "fingate";
  Gateway gw(o.fingate, o.plugins_dir, "gw-mqtt-tcp",
             "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + broker.url() + "\", qos: 1 }\n" +
                 "  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:{PORT:edge}\" }\nroutes: []\n");
  if (!gw.start()) {
    r.error = "fingate did not start";
    return r;
  }
  std::fprintf(stderr, "mqtt-tcp: fingate pid %d, mosquitto pid %d\n", gw.pid(), broker.pid());
  Counter counter;
  std::atomic<uint64_t> other_frames{0};
  int fd = connectLoopback(gw.port("edge"));
  if (fd < 0) {
    r.error = "cannot connect to the TCP fins endpoint";
    return r;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  try {
    std::string tag = std::to_string(::getpid()) + "-" + std::to_string(nowNs() % 1000000);
    MqttSoarca soarca(broker.url(), "bench-soarca-ref-" + tag, static_cast<int>(o.window));
    FrameReader fin(fd, [&](uint8_t kind, std::string_view topic, std::string_view payload) {
      if (kind == kPublish && topic == kCapability)
        counter.onPayload(payload);
      else
        ++other_frames;
    });
    std::string reg = frame(kPublish, "soarca", g_register);
    if (!writeAll(fd, reg.data(), reg.size(), Clock::now() + 5s) ||
        !waitFor([&] { return soarca.registered(); }, 30s)) {
      r.error = "the register never reached SOARCA on MQTT";
    } else {
      soarca.publish(kFinId, ackOf(kRegisterId));
      OtherLoad load({gw.pid(), broker.pid()});
      Runner b(
          o, [&](const std::string& v) { return soarca.publish(kCapability, v); }, counter, gw.pid(), 0);
      runPhases(b, o, r, load, true);
      r.notes = "MQTT publish failures " + std::to_string(soarca.failures()) + "; fin heard " +
                std::to_string(other_frames.load()) + " other frames (the register's ack)";
    }
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  ::close(fd);
  r.notes += "; strays (other runs) " + std::to_string(counter.strays()) + ", malformed " +
             std::to_string(counter.malformed()) + "; " + gatewayNotes(gw);
  if (o.keep_logs) std::fprintf(stderr, "fingate log: %s\n", gw.logPath().c_str());
  gw.stop();
  return r;
}

PathResult runKafkaTcp(const Options& o, MockCluster& mock) {
  PathResult r;
  r.scenario = "kafka-tcp";
  r.path = "fingate";
  Gateway gw(o.fingate, o.plugins_dir, "gw-kafka-tcp",
             "endpoints:\n" + kafkaEndpoint("soarca", "orchestrator", mock, "fingate-bench-b") +
                 "  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:{PORT:edge}\" }\nroutes: []\n");
  if (!gw.start()) {
    r.error = "fingate did not start";
    return r;
  }
  std::fprintf(stderr, "kafka-tcp: fingate pid %d, mock pid %d (%s)\n", gw.pid(), mock.pid(), mock.bootstrap().c_str());
  Counter counter;
  std::atomic<uint64_t> other_frames{0}, error_frames{0};
  int fd = connectLoopback(gw.port("edge"));
  if (fd < 0) {
    r.error = "cannot connect to the TCP fins endpoint";
    return r;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  try {
    std::atomic<bool> registered{false}, acked{false};
    Consumer soarca_in(mock.bootstrap(), {"fin.soarca"}, [&](const rd_kafka_message_t* m) {
      if (hasHeader(m, "fingate-origin") && valueOf(m).find("\"type\":\"register\"") != std::string_view::npos)
        registered = true;
    });
    Producer soarca(mock.bootstrap());
    FrameReader fin(fd, [&](uint8_t kind, std::string_view topic, std::string_view payload) {
      if (kind == kPublish && topic == kCapability)
        counter.onPayload(payload);
      else if (kind == kPublish && topic == kFinId)
        acked = true;
      else if (kind == kError)
        ++error_frames;
      else
        ++other_frames;
    });
    std::string reg = frame(kPublish, "soarca", g_register);
    if (!writeAll(fd, reg.data(), reg.size(), Clock::now() + 5s) || !waitFor([&] { return registered.load(); }, 30s)) {
      r.error = "the register never reached SOARCA on Kafka";
    } else {
      Headers cap_hdr = {{"fin-topic", kCapability}};
      soarca.send("fin." + kFinId, kFinId, ackOf(kRegisterId), {{"fin-topic", kFinId}});
      OtherLoad load({gw.pid(), mock.pid()});
      Runner b(
          o, [&](const std::string& v) { return soarca.send("fin." + kCapability, kCapability, v, cap_hdr); }, counter,
          gw.pid(), mock.pid());
      runPhases(b, o, r, load, true);
      soarca.flush();
      r.notes = "register ack reached the fin: " + std::string(acked ? "yes" : "no") + "; producer delivery reports " +
                std::to_string(soarca.delivered()) + " ok, " + std::to_string(soarca.failed()) + " failed; fin heard " +
                std::to_string(other_frames.load()) + " other frames, " + std::to_string(error_frames.load()) +
                " error frames" + (fin.closed() ? "; the gateway closed the fin's connection" : "");
    }
  } catch (const std::exception& e) {
    r.error = e.what();
  }
  ::close(fd);
  r.notes += "; strays (other runs: probes, warm-up) " + std::to_string(counter.strays()) + ", malformed " +
             std::to_string(counter.malformed()) + "; " + gatewayNotes(gw);
  if (o.keep_logs) std::fprintf(stderr, "fingate log: %s\n", gw.logPath().c_str());
  gw.stop();
  return r;
}

// ---- report ---------------------------------------------------------------------------------------

// The mock cluster's column ("–" for the reference scenario, which has none).
std::string mockCol(const PathResult& r, double v) {
  return r.scenario.rfind("mqtt-tcp", 0) == 0 ? std::string("–") : fmt("%.2f", v);
}

std::string us(int64_t ns) { return fmt("%.0f", static_cast<double>(ns) / 1e3); }

void print(const std::vector<PathResult>& rs, const Options& o, int round) {
  std::printf("\n### Round %d (load %s)\n\n", round, loadLine().c_str());
  std::printf("#### Saturated: %zu commands of %zu B, window %zu\n\n", o.messages, o.payload, o.window);
  std::printf(
      "| scenario | path | received | **msg/s** | lost | dup | ooo | **gateway CPU µs/msg** | gateway net of idle | "
      "mock CPU µs/msg | harness CPU µs/msg | gateway idle CPU ms/s | other load (CPUs) |\n");
  std::printf("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (auto& r : rs) {
    if (!r.tp.r.expected) {
      std::printf("| %s | %s | FAILED: %s |||||||||\n", r.scenario.c_str(), r.path.c_str(), r.error.c_str());
      continue;
    }
    bool gw = r.path == "fingate";
    std::printf("| %s | %s | %zu | **%.0f** | %zu | %zu | %zu | **%s** | %s | %s | %.2f | %s | %.2f |\n",
                r.scenario.c_str(), r.path.c_str(), r.tp.r.unique, r.tp.rate, r.tp.r.lost(), r.tp.r.dups,
                r.tp.r.out_of_order, gw ? fmt("%.2f", r.tp.gw_us).c_str() : "–",
                gw ? fmt("%.2f", r.tp.gw_net_us).c_str() : "–", mockCol(r, r.tp.mock_us).c_str(), r.tp.self_us,
                gw ? fmt("%.1f", r.gw_idle_ms_per_s).c_str() : "–", r.other_cpus);
  }
  std::printf("\n#### Paced: %.0f msg/s for %.1f s (latency µs, send to receipt)\n\n", o.rate, o.seconds);
  std::printf(
      "| scenario | path | sent msg/s | kept up | received | lost | dup | p50 | p90 | **p99** | max | "
      "**gateway CPU µs/msg** | gateway net of idle | mock CPU µs/msg | harness CPU µs/msg |\n");
  std::printf("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  for (auto& r : rs) {
    const Paced& p = r.paced;
    if (!p.r.expected) {
      std::printf("| %s | %s | FAILED: %s |||||||||||\n", r.scenario.c_str(), r.path.c_str(), r.error.c_str());
      continue;
    }
    bool gw = r.path == "fingate";
    std::printf("| %s | %s | %.0f | %s | %zu | %zu | %zu | %s | %s | **%s** | %s | **%s** | %s | %s | %.2f |\n",
                r.scenario.c_str(), r.path.c_str(), p.sent_rate, p.kept_up ? "yes" : "**no**", p.r.unique, p.r.lost(),
                p.r.dups, us(p.p50).c_str(), us(p.p90).c_str(), us(p.p99).c_str(), us(p.max).c_str(),
                gw ? fmt("%.2f", p.gw_us).c_str() : "–", gw ? fmt("%.2f", p.gw_net_us).c_str() : "–",
                mockCol(r, p.mock_us).c_str(), p.self_us);
  }
  std::printf("\n#### fingate / baseline (same run)\n\n");
  std::printf(
      "| scenario | saturated msg/s | p50 at %.0f/s | p99 at %.0f/s | gateway CPU µs/msg saturated / paced "
      "| vs baseline clients' CPU µs/msg (producer+consumer) saturated / paced | goal ≤ 10 µs/msg |\n",
      o.rate, o.rate);
  std::printf("|---|---:|---:|---:|---|---|---|\n");
  for (auto& g : rs) {
    if (g.path != "fingate" || !g.tp.r.expected) continue;
    const PathResult* b = nullptr;
    for (auto& x : rs)
      if (x.scenario == g.scenario && x.path == "baseline" && x.tp.r.expected) b = &x;
    if (!b) continue;
    auto ratio = [](double a, double c) { return c > 0 ? fmt("%.2fx", a / c) : std::string("–"); };
    auto p = [](int64_t v) { return static_cast<double>(v); };
    bool met = g.tp.gw_us <= 10.0 && g.paced.gw_us <= 10.0;
    std::printf("| %s | %s | %s | %s | %.2f / %.2f | %.2f / %.2f (%s / %s) | %s |\n", g.scenario.c_str(),
                ratio(g.tp.rate, b->tp.rate).c_str(), ratio(p(g.paced.p50), p(b->paced.p50)).c_str(),
                ratio(p(g.paced.p99), p(b->paced.p99)).c_str(), g.tp.gw_us, g.paced.gw_us, b->tp.self_us,
                b->paced.self_us, ratio(g.tp.gw_us, b->tp.self_us).c_str(),
                ratio(g.paced.gw_us, b->paced.self_us).c_str(),
                met ? "met" : (g.tp.gw_us <= 10.0 ? "met saturated only" : "**not met**"));
  }
  const PathResult *mk = nullptr, *mt = nullptr;
  for (auto& r : rs) {
    if (r.scenario == "mqtt-kafka" && r.path == "fingate" && r.tp.r.expected) mk = &r;
    if (r.scenario == "mqtt-tcp (reference)" && r.tp.r.expected) mt = &r;
  }
  if (mk && mt)
    std::printf(
        "\nThe Kafka fin leg instead of a TCP fin leg behind the same MQTT ingress (mqtt-kafka minus "
        "mqtt-tcp, gateway CPU µs/msg): saturated %+.2f, paced %+.2f (net of idle: %+.2f, %+.2f)\n",
        mk->tp.gw_us - mt->tp.gw_us, mk->paced.gw_us - mt->paced.gw_us, mk->tp.gw_net_us - mt->tp.gw_net_us,
        mk->paced.gw_net_us - mt->paced.gw_net_us);
  std::printf("\n");
  for (auto& r : rs) {
    if (r.ok)
      std::printf("* %s / %s: no loss; %s\n", r.scenario.c_str(), r.path.c_str(), r.notes.c_str());
    else
      std::printf("* %s / %s: **%s**; %s\n", r.scenario.c_str(), r.path.c_str(), r.error.c_str(), r.notes.c_str());
  }
  std::fflush(stdout);
}

int run(const Options& o) {
  ::prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
  std::printf("## kafka_forward: %s, %u cpus, load %s, librdkafka %s\n\nfingate: %s (plugins %s)\n", cpuModel().c_str(),
              std::thread::hardware_concurrency(), loadLine().c_str(), rd_kafka_version_str(), o.fingate.c_str(),
              o.plugins_dir.c_str());
  const std::vector<std::string> topics = {"fin.soarca", "fin." + kFinId, "fin." + kCapability, kBaselineTopic};
  bool all_ok = true;
  for (int round = 1; round <= o.repeat && !g_interrupted; ++round) {
    std::vector<PathResult> rs;
    bool baseline_first = round % 2 == 1;  // alternate the order between rounds
    if (o.scenarios.find("mqtt-kafka") != std::string::npos) {
      // The gateway's output records: key + fin-topic + the two origin headers (same sizes).
      Headers hdr = {{"fin-topic", kCapability},
                     {"fingate-origin", "fingate-" + std::to_string(::getpid()) + "-0123456789abcdef"},
                     {"fingate-group", "fingate-bench-a"}};
      try {
        MockCluster mock(topics);
        Mosquitto broker;
        if (baseline_first) rs.push_back(runBaseline("mqtt-kafka", o, mock, hdr));
        rs.push_back(runMqttKafka(o, mock, broker));
        if (!baseline_first) rs.push_back(runBaseline("mqtt-kafka", o, mock, hdr));
      } catch (const std::exception& e) {
        PathResult r;
        r.scenario = "mqtt-kafka";
        r.path = "setup";
        r.error = e.what();
        rs.push_back(r);
      }
    }
    if (o.scenarios.find("mqtt-tcp") != std::string::npos && !g_interrupted) {
      try {
        Mosquitto broker;
        rs.push_back(runMqttTcp(o, broker));
      } catch (const std::exception& e) {
        PathResult r;
        r.scenario = "mqtt-tcp (reference)";
        r.path = "setup";
        r.error = e.what();
        rs.push_back(r);
      }
    }
    if (o.scenarios.find("kafka-tcp") != std::string::npos && !g_interrupted) {
      Headers hdr = {{"fin-topic", kCapability}};  // SOARCA's records
      try {
        MockCluster mock(topics);
        if (baseline_first) rs.push_back(runBaseline("kafka-tcp", o, mock, hdr));
        rs.push_back(runKafkaTcp(o, mock));
        if (!baseline_first) rs.push_back(runBaseline("kafka-tcp", o, mock, hdr));
      } catch (const std::exception& e) {
        PathResult r;
        r.scenario = "kafka-tcp";
        r.path = "setup";
        r.error = e.what();
        rs.push_back(r);
      }
    }
    for (auto& r : rs) all_ok &= r.ok;
    print(rs, o, round);
  }
  return all_ok ? 0 : 1;
}

}  // namespace fingate::bench

int main(int argc, char** argv) {
  if (argc > 1 && std::string(argv[1]) == "--serve-mock-cluster") return fingate::bench::serveMockCluster(argc, argv);
  fingate::bench::Options o;
  CLI::App app{"Kafka: MQTT -> fingate -> Kafka and Kafka -> fingate -> TCP, each beside a plain librdkafka pair"};
  app.add_option("--fingate", o.fingate, "fingate binary")->capture_default_str();
  app.add_option("--plugins-dir", o.plugins_dir, "directory with libfingate-{kafka,mqtt,tcp}.so")
      ->capture_default_str();
  app.add_option("--scenarios", o.scenarios, "comma-separated subset of mqtt-kafka,mqtt-tcp,kafka-tcp")
      ->capture_default_str();
  app.add_option("--messages", o.messages, "commands in the saturated phase")
      ->capture_default_str()
      ->check(CLI::Range(size_t(1000), size_t(2'000'000)));
  app.add_option("--warmup", o.warmup, "warm-up commands (not reported)")
      ->capture_default_str()
      ->check(CLI::Range(size_t(0), size_t(1'000'000)));
  app.add_option("--rate", o.rate, "paced phase rate, msg/s")->capture_default_str()->check(CLI::Range(10.0, 1e6));
  app.add_option("--seconds", o.seconds, "paced phase length")->capture_default_str()->check(CLI::Range(0.1, 30.0));
  app.add_option("--payload", o.payload, "command bytes (at least the command JSON itself, ~800)")
      ->capture_default_str()
      ->check(CLI::Range(size_t(1), size_t(1) << 20));
  app.add_option("--window", o.window, "commands sent and not yet received, at most")
      ->capture_default_str()
      ->check(CLI::Range(1, 100000));
  app.add_option(
         "--fetch-wait-ms", fingate::bench::g_fetch_wait_ms,
         "fetch.wait.max.ms of every consumer, gateway's and harness's (the mock answers an empty fetch only after it)")
      ->capture_default_str()
      ->check(CLI::Range(0, 500));
  app.add_option("--repeat", o.repeat, "rounds")->capture_default_str()->check(CLI::Range(1, 10));
  app.add_flag("--keep-logs", o.keep_logs, "keep /tmp/fingate-bench-<pid> (process logs)");
  std::string vectors = FINGATE_VECTORS_DIR;
  app.add_option("--vectors", vectors, "the captured Fin vectors (register, command)")->capture_default_str();
  CLI11_PARSE(app, argc, argv);
  return fingate::bench::harnessMain("kafka_forward", vectors, o.payload, o.keep_logs,
                                     [&] { return fingate::bench::run(o); });
}
