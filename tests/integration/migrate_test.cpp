// `fingate migrate` end to end: the fins move from an MQTT broker to Kafka while SOARCA keeps
// working. Real components only: two real mosquittos (SOARCA's broker and the fins' old one),
// librdkafka's mock cluster in its own process (the fins' new side), the real fingate binary, and
// the real `fingate migrate` CLI as a child process talking to the gateway's admin API. SOARCA
// and the fins are plain clients (paho, librdkafka) using the captured protocol vectors.
//
// Every wait is bounded and generous (shared, noisy machines); the assertions are on outcomes
// and counts, never on how long something took.
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <condition_variable>
#include <fingate/fin_codec.hpp>
#include <fingate/json.hpp>
#include <iostream>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "gateway_process.hpp"
#include "kafka_client.hpp"
#include "kafka_mock.hpp"
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;
using fingate::Json;

namespace {

const std::string kReg = vectorBytes("01-a-register.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";
const std::string kReRegId = "abec7356-e6f0-11f1-acf4-02fc00000002";
// The pair's endpoint names, as the config names them (the verify report's keys use them).
const std::string kOld = "mqtt_fins";
const std::string kNew = "kafka_fins";
// Fast group timings for the mock cluster (see kafka_e2e_test.cpp).
const std::string kFastGroup = "rdkafka: { session.timeout.ms: \"4000\", heartbeat.interval.ms: \"500\" }";

// The captured message with its (first) message_id replaced.
std::string withId(const std::string& msg, const std::string& id) {
  static const std::regex re("\"message_id\":\"[^\"]*\"");
  return std::regex_replace(msg, re, "\"message_id\":\"" + id + "\"", std::regex_constants::format_first_only);
}

// Command n's id; the fin answers it with a result whose id is the command's with "b2" for
// "a1" in front, so SOARCA's side can tell which command a result answers.
std::string commandId(int n) {
  char b[64];
  std::snprintf(b, sizeof b, "a1000000-0000-4000-8000-%012d", n);
  return b;
}
std::string resultIdFor(const std::string& command_id) { return "b2" + command_id.substr(2); }
std::string commandIdFor(const std::string& result_id) {
  return result_id.rfind("b2", 0) == 0 ? "a1" + result_id.substr(2) : "";
}

fingate::fin::Routing parsed(const std::string& payload) { return fingate::fin::parse(payload).msg; }

std::vector<std::pair<std::string, std::string>> finHeader(const std::string& topic) { return {{"fin-topic", topic}}; }

std::optional<Json> json(const std::string& text) {
  std::string err;
  return fingate::parseJson(text, err);
}

// The endpoint GET /v1/fins shows the fin on ("" when it is not bound).
std::string finEndpoint(int admin) {
  auto j = json(httpGet(admin, "/v1/fins").body);
  if (!j || !j->get("fins")) return "";
  for (auto& f : j->get("fins")->array)
    if (f.str("fin_id") == kFin) return f.str("endpoint");
  return "";
}

bool finAcked(int admin) {
  auto j = json(httpGet(admin, "/v1/fins").body);
  if (!j || !j->get("fins")) return false;
  for (auto& f : j->get("fins")->array)
    if (f.str("fin_id") == kFin) return f.flag("acked");
  return false;
}

// A field of GET /v1/migration ("" when absent).
std::string migrationField(int admin, const std::string& key) {
  auto j = json(httpGet(admin, "/v1/migration").body);
  return j ? j->str(key) : "";
}

// SOARCA on its MQTT broker (MQTT 3.1.1, QoS 1, as SOARCA's Go client). For as long as it runs
// it starts an exchange every 10 ms: a command on the capability topic (a new message id each
// time); the fin's ack and result come back; SOARCA acks the result. Exchanges overlap (each
// takes longer than 10 ms), so commands are in flight at every step of the migration. A register
// it sees on `soarca` is acked on the fin id topic. It knows which commands are still waiting
// for their result: at stop, those are the lost exchanges.
class Soarca {
 public:
  // Two connections: commands go out on their own (a publish-only connection is not slowed
  // by the PUBACKs the receiving one owes the broker).
  explicit Soarca(const std::string& url) : cli_(url, "soarca-sim", 3, 1), tx_(url, "soarca-sim-tx", 3, 1) {
    cli_.subscribe("soarca");
    cli_.subscribe(kCap);
  }
  ~Soarca() { stop(); }
  MqttTestClient& client() { return cli_; }

  void start() {
    receiver_ = std::thread([this] { receive(); });
    sender_ = std::thread([this] { send(); });
  }
  // Stops sending, waits (bounded by `drain`) for the results still due, then stops receiving.
  // Idempotent.
  void stop(std::chrono::milliseconds drain = 60s) {
    stop_sending_ = true;
    resume();
    if (sender_.joinable()) sender_.join();
    if (receiver_.joinable()) {
      waitFor([&] { return pending() == 0; }, drain);
      waitFor([&] { return false; }, 300ms);  // late duplicates still get SOARCA's ack
      stop_receiving_ = true;
      receiver_.join();
    }
  }
  // Holds back new commands and waits until every exchange in flight completed: "between two
  // exchanges". False when some did not complete (they stay counted as pending).
  bool pause(std::chrono::milliseconds timeout = 60s) {
    {
      std::lock_guard lk(mu_);
      paused_ = true;
    }
    waitFor([&] { return sender_idle_.load(); }, 10s);
    return waitFor([&] { return pending() == 0; }, timeout);
  }
  void resume() {
    {
      std::lock_guard lk(mu_);
      paused_ = false;
    }
    cv_.notify_all();
  }

  int sent() const { return sent_; }
  int completed() const { return completed_; }
  int duplicates() const { return duplicates_; }
  int registersSeen() const { return registers_; }
  size_t pending() {
    std::lock_guard lk(mu_);
    return pending_.size();
  }
  // The commands still without a result (after stop: the lost ones).
  std::string pendingIds() {
    std::lock_guard lk(mu_);
    std::string s;
    for (auto& id : pending_) s += " " + id;
    return s.empty() ? " (none)" : s;
  }
  // Waits until `more` exchanges completed after this call.
  bool waitMore(int more, std::chrono::milliseconds timeout = 60s) {
    const int target = completed_ + more;
    return waitFor([&] { return completed_ >= target; }, timeout);
  }

 private:
  void send() {
    auto next = std::chrono::steady_clock::now();
    for (int n = 0; !stop_sending_; ++n) {
      {
        std::unique_lock lk(mu_);
        if (paused_) {
          sender_idle_ = true;
          cv_.wait(lk, [&] { return !paused_; });
          sender_idle_ = false;
          next = std::chrono::steady_clock::now();
        }
        if (stop_sending_) break;
        pending_.insert(commandId(n));
      }
      try {
        tx_.publish(kCap, withId(kCmd, commandId(n)));
        ++sent_;
      } catch (const std::exception& e) {
        std::lock_guard lk(mu_);
        pending_.erase(commandId(n));
        publish_errors_ += std::string(" ") + e.what();
      }
      // One every 10 ms; after a stall (a pause, a slow publish) no burst to catch up.
      next += 10ms;
      const auto now = std::chrono::steady_clock::now();
      if (next < now) next = now;
      std::this_thread::sleep_until(next);
    }
    sender_idle_ = true;
  }
  void receive() {
    while (!stop_receiving_) {
      auto m = cli_.recv(100ms);
      if (!m) continue;
      auto r = parsed(m->payload);
      if (m->topic == "soarca") {
        if (r.type == fingate::fin::MsgType::Register && !r.fin_id.empty()) {
          ++registers_;
          safePublish(r.fin_id, fingate::fin::makeAck(r.message_id));
        }
        continue;
      }
      // On the capability topic SOARCA also gets its own commands and acks back (MQTT 3.1.1
      // has no no-local) and the fin's acks: only results need an answer.
      if (m->topic != kCap || r.type != fingate::fin::MsgType::Result) continue;
      safePublish(kCap, fingate::fin::makeAck(r.message_id));
      std::lock_guard lk(mu_);
      if (pending_.erase(commandIdFor(r.message_id)))
        ++completed_;
      else
        ++duplicates_;
    }
  }
  void safePublish(const std::string& topic, const std::string& payload) {
    try {
      cli_.publish(topic, payload);
    } catch (const std::exception& e) {
      std::lock_guard lk(mu_);
      publish_errors_ += std::string(" ") + e.what();
    }
  }

  MqttTestClient cli_, tx_;
  std::thread sender_, receiver_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool paused_ = false;
  std::set<std::string> pending_;  // command ids waiting for their result
  std::string publish_errors_;
  std::atomic<bool> stop_sending_{false}, stop_receiving_{false}, sender_idle_{false};
  std::atomic<int> sent_{0}, completed_{0}, duplicates_{0}, registers_{0};
};

// The answer a fin gives to one command: its ack, then the captured result with our id.
std::pair<std::string, std::string> answerTo(const std::string& command_id) {
  return {fingate::fin::makeAck(command_id), withId(kResult, resultIdFor(command_id))};
}

// A fin on the old MQTT broker, as the Python fin library is (MQTT 5, no-local).
class MqttFin {
 public:
  MqttFin(const std::string& url, const std::string& client_id)
      : cli_(std::make_unique<MqttTestClient>(url, client_id, 5, 1)) {
    cli_->subscribe(kFin, true);
    cli_->subscribe(kCap, true);
  }
  ~MqttFin() { leave(); }
  MqttTestClient& client() { return *cli_; }
  void start() {
    thread_ = std::thread([this] {
      while (!stop_) {
        auto m = cli_->recv(50ms);
        if (!m) continue;
        auto r = parsed(m->payload);
        if (m->topic == kCap && r.type == fingate::fin::MsgType::Command) {
          auto [ack, result] = answerTo(r.message_id);
          try {
            cli_->publish(kCap, ack);
            cli_->publish(kCap, result);
          } catch (const std::exception&) {
          }
          ++commands_;
        } else if (r.type == fingate::fin::MsgType::Ack) {
          ++acks_;
        }
      }
    });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  // Stops answering and disconnects from the broker (the fin process is gone).
  void leave() {
    stop();
    cli_.reset();
  }
  int commands() const { return commands_; }
  int acks() const { return acks_; }

 private:
  std::unique_ptr<MqttTestClient> cli_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> commands_{0}, acks_{0};
};

// The same fin after its move: a librdkafka producer and consumer on the new side. It reads its
// topics from the offsets given (where the old fin stopped), registers on fin.soarca and
// answers the commands the gateway produces there.
class KafkaFin {
 public:
  KafkaFin(const std::string& bootstrap, std::map<std::string, int64_t> from_offsets)
      : producer_(bootstrap), consumer_(bootstrap, {"fin." + kFin, "fin." + kCap}), from_(std::move(from_offsets)) {}
  ~KafkaFin() { stop(); }
  // The restarted fin's register: a new message id, the same fin and capability.
  bool registerNow() {
    return producer_.send("fin.soarca", std::string("soarca"), withId(kReg, kReRegId), finHeader("soarca")) &&
           producer_.flush();
  }
  void start() {
    thread_ = std::thread([this] {
      while (!stop_) {
        producer_.poll();
        auto r = consumer_.next(100ms);
        if (!r || !r->value) continue;
        if (r->offset < from_[r->topic]) continue;   // the old fin's time
        if (!r->header("fingate-origin")) continue;  // our own records
        auto m = parsed(*r->value);
        if (r->topic == "fin." + kCap && m.type == fingate::fin::MsgType::Command) {
          auto [ack, result] = answerTo(m.message_id);
          producer_.send("fin." + kCap, kCap, ack, finHeader(kCap));
          producer_.send("fin." + kCap, kCap, result, finHeader(kCap));
          ++commands_;
        } else if (m.type == fingate::fin::MsgType::Ack) {
          ++acks_;
        }
      }
    });
  }
  void stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  int commands() const { return commands_; }
  int acks() const { return acks_; }

 private:
  KafkaProducer producer_;
  KafkaConsumer consumer_;
  std::map<std::string, int64_t> from_;
  std::thread thread_;
  std::atomic<bool> stop_{false};
  std::atomic<int> commands_{0}, acks_{0};
};

// One `fingate migrate ...` run: stdout and stderr in files of their own.
class Cli {
 public:
  Cli(const std::string& name, const std::vector<std::string>& args) {
    dir_ = tempDir("migrate-cli-" + name);
    err_ = dir_ + "/stderr";
    std::vector<std::string> argv{"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>\"$FG_ERR\" </dev/null", FINGATE_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    for (auto& a : args) line_ += " " + a;
    proc_ = std::make_unique<Process>(argv, dir_ + "/stdout", std::map<std::string, std::string>{{"FG_ERR", err_}});
  }
  int wait(std::chrono::milliseconds t = 60s) { return proc_->wait(t); }
  bool running() { return proc_->running(); }
  std::string out() const { return proc_->log(); }
  std::string err() const { return readFile(err_); }
  const std::string& line() const { return line_; }

 private:
  std::string dir_, err_, line_;
  std::unique_ptr<Process> proc_;
};

// What verify writes on stderr (no terminal: plain lines) once it observes both sides.
const std::string kObservingMarker = "observing";

struct CliResult {
  int rc = -1;
  std::string out, err;
};

// Reads the verify report's entry for `topic` (nullptr when absent).
const Json* topicEntry(const Json& report, const std::string& topic) {
  const Json* topics = report.get("topics");
  if (!topics) return nullptr;
  for (auto& t : topics->array)
    if (t.str("topic") == topic) return &t;
  return nullptr;
}

bool contains(const Json* list, const std::string& s) {
  if (!list) return false;
  for (auto& x : list->array)
    if (x.string == s) return true;
  return false;
}

// Waits until a running `migrate verify` has begun its observation (its progress on stderr).
bool waitObserving(Cli& c, std::chrono::milliseconds timeout = 60s) {
  return waitFor([&] { return c.err().find(kObservingMarker) != std::string::npos || !c.running(); }, timeout) &&
         c.running();
}

class Migrate : public ::testing::Test {
 protected:
  void SetUp() override {
    soarca_broker = std::make_unique<Mosquitto>();
    fins_broker = std::make_unique<Mosquitto>();
    kafka = std::make_unique<KafkaMock>(
        KafkaMockOptions{.brokers = 1, .partitions = 1, .topics = {"fin.soarca", "fin." + kFin, "fin." + kCap}});
    std::string body = "endpoints:\n";
    body += "  soarca: { plugin: mqtt, role: orchestrator, url: \"" + soarca_broker->url() + "\", qos: 1 }\n";
    body += "  " + kOld + ": { plugin: mqtt, role: fins, url: \"" + fins_broker->url() + "\", qos: 1 }\n";
    body += "  " + kNew + ": { plugin: kafka, role: fins, brokers: \"" + kafka->bootstrap() +
            "\", group: fingate-fins, " + kFastGroup + " }\n";
    body += "migration: { from: " + kOld + ", to: " + kNew + " }\n";
    gw = std::make_unique<GatewayProcess>("migrate", body);
    ASSERT_TRUE(gw->start({"soarca", kOld, kNew}, 60s)) << gw->log();
    admin = gw->adminPort();
  }

  void TearDown() override {
    const bool failed = HasFailure();
    if (failed) {
      std::cerr << "---- fingate migrate runs ----\n" << cli_log.str();
      if (soarca) std::cerr << "---- commands without a result:" << soarca->pendingIds() << "\n";
      if (gw) std::cerr << "---- GET /v1/migration ----\n" << httpGet(gw->adminPort(), "/v1/migration").body << "\n";
      if (gw) std::cerr << "---- fingate log ----\n" << gw->log() << "\n";
    }
    if (soarca) soarca->stop(failed ? 2s : 60s);  // after a failure: no long drain under ctest's timeout
    if (mqtt_fin) mqtt_fin->stop();
    if (kafka_fin) kafka_fin->stop();
  }

  // `fingate migrate <step> -c <the gateway's config> --admin 127.0.0.1:<its admin port> <args>`.
  std::unique_ptr<Cli> startMigrate(const std::string& step, const std::vector<std::string>& args = {}) {
    std::vector<std::string> argv{"migrate",        step,      "-c",
                                  gw->configPath(), "--admin", "127.0.0.1:" + std::to_string(admin)};
    argv.insert(argv.end(), args.begin(), args.end());
    return std::make_unique<Cli>(step, argv);
  }
  CliResult finish(Cli& c, std::chrono::milliseconds t = 60s) {
    CliResult r;
    r.rc = c.wait(t);
    r.out = c.out();
    r.err = c.err();
    cli_log << "$ fingate" << c.line() << "\n  exit " << r.rc << "\n  stdout: " << r.out << "\n  stderr: " << r.err
            << "\n";
    return r;
  }
  CliResult migrate(const std::string& step, const std::vector<std::string>& args = {}) {
    auto c = startMigrate(step, args);
    return finish(*c);
  }

  // SOARCA and the fin on the old broker: the fin registers, SOARCA acks, the binding is acked.
  void registerMqttFin() {
    soarca = std::make_unique<Soarca>(soarca_broker->url());
    mqtt_fin = std::make_unique<MqttFin>(fins_broker->url(), "pingpong-fin");
    mqtt_fin->client().publish("soarca", kReg);
    auto reg = soarca->client().recvOn("soarca", 30s);
    ASSERT_TRUE(reg) << "SOARCA did not get the fin's register";
    ASSERT_EQ(reg->payload, kReg);
    soarca->client().publish(kFin, fingate::fin::makeAck(kRegId));
    auto ack = mqtt_fin->client().recvOn(kFin, 30s);
    ASSERT_TRUE(ack) << "the fin did not get SOARCA's ack";
    ASSERT_EQ(ack->payload, fingate::fin::makeAck(kRegId));
    ASSERT_TRUE(waitFor([&] { return finAcked(admin); }, 30s)) << httpGet(admin, "/v1/fins").body;
    EXPECT_EQ(finEndpoint(admin), kOld);
  }
  // Starts the traffic and waits for the first exchanges to complete.
  void startTraffic() {
    mqtt_fin->start();
    soarca->start();
    ASSERT_TRUE(soarca->waitMore(20)) << "waiting:" << soarca->pendingIds();
  }
  // The report `migrate verify --json` printed (its stdout).
  std::optional<Json> report(const CliResult& r) {
    auto j = json(r.out);
    EXPECT_TRUE(j) << "verify's stdout is not one JSON document: " << r.out;
    return j;
  }
  // A verify that passes: exit 0 and the report checked.
  void verifyPasses() {
    auto v = migrate("verify", {"--window", "3", "--grace", "1.5", "--json"});
    ASSERT_EQ(v.rc, 0) << v.out << v.err;
    auto j = report(v);
    ASSERT_TRUE(j);
    EXPECT_TRUE(j->flag("parity")) << v.out;
    EXPECT_EQ(j->str("from"), kOld);
    EXPECT_EQ(j->str("to"), kNew);
    EXPECT_EQ(j->str("active"), kOld);
    const Json* msgs = j->get("messages");
    ASSERT_TRUE(msgs) << v.out;
    EXPECT_GT(msgs->num(kOld), 0) << v.out;
    EXPECT_GT(msgs->num(kNew), 0) << v.out;
    EXPECT_EQ(msgs->num(kOld), msgs->num(kNew)) << v.out;
    ASSERT_TRUE(j->get("differing_topics")) << v.out;
    EXPECT_TRUE(j->get("differing_topics")->array.empty()) << v.out;
    // The fin's topics were observed: its capability carried the traffic, equal on both sides.
    const Json* cap = topicEntry(*j, kCap);
    ASSERT_TRUE(cap) << "no entry for " << kCap << ": " << v.out;
    EXPECT_TRUE(cap->flag("parity")) << v.out;
    EXPECT_GT(cap->num(kOld), 0) << v.out;
    EXPECT_EQ(cap->num(kOld), cap->num(kNew)) << v.out;
    EXPECT_FALSE(cap->str("digest_" + kOld).empty()) << v.out;
    EXPECT_EQ(cap->str("digest_" + kOld), cap->str("digest_" + kNew)) << v.out;
    EXPECT_EQ(cap->num("missing_on_" + kOld, -1), 0) << v.out;
    EXPECT_EQ(cap->num("missing_on_" + kNew, -1), 0) << v.out;
    // The fin id topic carried nothing in the window (no register, pause or stop): the report
    // lists only topics that carried messages.
    if (const Json* fin = topicEntry(*j, kFin)) {
      EXPECT_EQ(fin->num(kOld, -1), fin->num(kNew, -2)) << v.out;
    }
    EXPECT_GE(j->num("topics_checked"), 1) << v.out;
    // The gateway keeps the report: a cutover is allowed now.
    auto m = json(httpGet(admin, "/v1/migration").body);
    ASSERT_TRUE(m);
    ASSERT_TRUE(m->get("verify") && !m->get("verify")->isNull()) << httpGet(admin, "/v1/migration").body;
    EXPECT_TRUE(m->get("verify")->flag("parity"));
    EXPECT_TRUE(m->flag("cutover_allowed")) << httpGet(admin, "/v1/migration").body;
  }
  void mirrorOn() {
    auto r = migrate("mirror");
    ASSERT_EQ(r.rc, 0) << r.out << r.err;
    auto m = json(httpGet(admin, "/v1/migration").body);
    ASSERT_TRUE(m);
    EXPECT_TRUE(m->flag("mirror"));
    // Copies reach the new side.
    EXPECT_TRUE(waitFor(
        [&] {
          auto j = json(httpGet(admin, "/v1/migration").body);
          return j && j->get("mirrored") && j->get("mirrored")->num(kNew) > 0;
        },
        30s))
        << httpGet(admin, "/v1/migration").body;
  }
  // The traffic's final count: every command SOARCA sent got its result.
  void expectNothingLost() {
    soarca->stop();
    std::cout << "exchanges: sent " << soarca->sent() << ", completed " << soarca->completed() << ", lost "
              << soarca->pending() << ", duplicate results " << soarca->duplicates() << "; MQTT fin answered "
              << mqtt_fin->commands()
              << (kafka_fin ? ", Kafka fin answered " + std::to_string(kafka_fin->commands()) : "") << "\n";
    EXPECT_EQ(soarca->pending(), 0u) << "commands without a result:" << soarca->pendingIds();
    EXPECT_EQ(soarca->completed(), soarca->sent());
    EXPECT_GT(soarca->sent(), 0);
  }

  std::unique_ptr<Mosquitto> soarca_broker, fins_broker;
  std::unique_ptr<KafkaMock> kafka;
  std::unique_ptr<GatewayProcess> gw;
  int admin = 0;
  std::unique_ptr<Soarca> soarca;
  std::unique_ptr<MqttFin> mqtt_fin;
  std::unique_ptr<KafkaFin> kafka_fin;
  std::ostringstream cli_log;
};

int64_t endOffset(const KafkaMock& k, const std::string& topic) { return kafkaEndOffset(k.bootstrap(), topic, 0); }

// plan -> mirror -> verify -> cutover under an exchange every 10 ms; then the fin itself moves
// to Kafka between two exchanges. Not one exchange is lost.
TEST_F(Migrate, CutoverUnderContinuousTrafficThenTheFinMovesLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(registerMqttFin());
  ASSERT_NO_FATAL_FAILURE(startTraffic());

  auto plan = migrate("plan", {"--json"});
  ASSERT_EQ(plan.rc, 0) << plan.out << plan.err;
  auto p = json(plan.out);
  ASSERT_TRUE(p) << plan.out;
  EXPECT_EQ(p->str("from"), kOld);
  EXPECT_EQ(p->str("to"), kNew);
  EXPECT_EQ(p->str("active"), kOld);
  bool listed = false;
  ASSERT_TRUE(p->get("move")) << plan.out;
  for (auto& f : p->get("move")->array)
    if (f.str("fin_id") == kFin) {
      listed = true;
      EXPECT_EQ(f.str("endpoint"), kOld) << plan.out;
      EXPECT_TRUE(contains(f.get("capabilities"), kCap)) << plan.out;
      EXPECT_TRUE(f.flag("acked")) << plan.out;
    }
  EXPECT_TRUE(listed) << "the fin is not under \"move\": " << plan.out;
  if (p->get("stay")) {
    for (auto& f : p->get("stay")->array) EXPECT_NE(f.str("fin_id"), kFin) << plan.out;
  }

  ASSERT_NO_FATAL_FAILURE(mirrorOn());
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting:" << soarca->pendingIds();
  ASSERT_NO_FATAL_FAILURE(verifyPasses());

  auto cut = migrate("cutover");
  ASSERT_EQ(cut.rc, 0) << cut.out << cut.err;
  EXPECT_EQ(finEndpoint(admin), kNew) << httpGet(admin, "/v1/fins").body;
  EXPECT_EQ(migrationField(admin, "active"), kNew);
  // The fin still answers on the old broker (the mirror brings it the commands).
  const int mqtt_before = mqtt_fin->commands();
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting after the cutover:" << soarca->pendingIds();
  EXPECT_GT(mqtt_fin->commands(), mqtt_before);

  int registers_before = 0;
  // The fin moves: between two exchanges the MQTT fin stops and a Kafka fin starts, reading its
  // topics from where the commands stand now.
  {
    ASSERT_TRUE(soarca->pause()) << "exchanges did not complete:" << soarca->pendingIds();
    std::map<std::string, int64_t> from{{"fin." + kCap, endOffset(*kafka, "fin." + kCap)},
                                        {"fin." + kFin, endOffset(*kafka, "fin." + kFin)}};
    registers_before = soarca->registersSeen();
    mqtt_fin->leave();
    kafka_fin = std::make_unique<KafkaFin>(kafka->bootstrap(), from);
    kafka_fin->start();
    ASSERT_TRUE(kafka_fin->registerNow());
    soarca->resume();
  }
  ASSERT_TRUE(waitFor([&] { return kafka_fin->commands() >= 50; }, 90s))
      << "the Kafka fin answered " << kafka_fin->commands() << "; waiting:" << soarca->pendingIds();
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting after the move:" << soarca->pendingIds();
  // SOARCA saw the fin's register from Kafka (and acked it); the fin is still bound on Kafka.
  EXPECT_TRUE(waitFor([&] { return soarca->registersSeen() > registers_before; }, 30s))
      << "SOARCA did not get the register the fin sent on Kafka";
  EXPECT_EQ(finEndpoint(admin), kNew) << httpGet(admin, "/v1/fins").body;
  EXPECT_GT(kafka_fin->acks(), 0) << "SOARCA's acks did not reach the fin on Kafka";
  expectNothingLost();
  EXPECT_GE(kafka_fin->commands(), 50);
}

// Verify is an independent observer: a message the gateway refused on the old side (so it was
// never mirrored) is a difference. verify exits 1 naming it; the cutover is refused.
TEST_F(Migrate, VerifyFindsAMessageTheGatewayRefusedAndCutoverIsRefused) {
  ASSERT_NO_FATAL_FAILURE(registerMqttFin());
  ASSERT_NO_FATAL_FAILURE(startTraffic());
  ASSERT_NO_FATAL_FAILURE(mirrorOn());
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting:" << soarca->pendingIds();

  // Something on the fins' broker publishes a truncated result on the fin's capability topic.
  MqttTestClient rogue(fins_broker->url(), "broken-fin", 5, 1);
  const std::string bad = "{\"type\":\"result\",\"message_id\":\"dropped-1\",";
  auto v = startMigrate("verify", {"--window", "6", "--grace", "1.5", "--json"});
  ASSERT_TRUE(waitObserving(*v)) << "verify did not start observing: " << v->err();
  // Inside the window [start + 1.5 s, start + 7.5 s], with margin on both ends.
  std::this_thread::sleep_for(3s);
  rogue.publish(kCap, bad);
  auto r = finish(*v, 120s);
  EXPECT_EQ(r.rc, 1) << r.out << r.err;
  auto j = report(r);
  ASSERT_TRUE(j);
  EXPECT_FALSE(j->flag("parity", true)) << r.out;
  EXPECT_TRUE(contains(j->get("differing_topics"), kCap)) << r.out;
  const Json* cap = topicEntry(*j, kCap);
  ASSERT_TRUE(cap) << r.out;
  EXPECT_FALSE(cap->flag("parity", true)) << r.out;
  EXPECT_EQ(cap->num("missing_on_" + kNew, -1), 1) << r.out;
  EXPECT_EQ(cap->num("missing_on_" + kOld, -1), 0) << r.out;
  EXPECT_EQ(cap->num(kOld), cap->num(kNew) + 1) << r.out;
  EXPECT_NE(cap->str("digest_" + kOld), cap->str("digest_" + kNew)) << r.out;
  const Json* diff = cap->get("first_difference");
  ASSERT_TRUE(diff && !diff->isNull()) << r.out;
  EXPECT_EQ(diff->str("seen_on"), kOld) << r.out;
  EXPECT_EQ(diff->str("missing_on"), kNew) << r.out;
  EXPECT_TRUE(diff->str("message_id") == "dropped-1" || diff->str("preview").find("dropped-1") != std::string::npos)
      << r.out;
  // Every other topic matched.
  ASSERT_TRUE(j->get("differing_topics"));
  EXPECT_EQ(j->get("differing_topics")->array.size(), 1u) << r.out;
  // The gateway dead-lettered it (and did not forward it to SOARCA).
  auto dl = httpGet(admin, "/v1/dead-letters").body;
  EXPECT_NE(dl.find("dropped-1"), std::string::npos) << dl;
  EXPECT_NE(dl.find("invalid_message"), std::string::npos) << dl;

  // The gateway holds the failed report: no cutover.
  auto m = json(httpGet(admin, "/v1/migration").body);
  ASSERT_TRUE(m);
  ASSERT_TRUE(m->get("verify") && !m->get("verify")->isNull()) << httpGet(admin, "/v1/migration").body;
  EXPECT_FALSE(m->get("verify")->flag("parity", true));
  EXPECT_FALSE(m->flag("cutover_allowed", true));
  EXPECT_FALSE(m->str("cutover_refused_because").empty());
  auto cut = migrate("cutover");
  EXPECT_EQ(cut.rc, 1) << cut.out << cut.err;
  EXPECT_FALSE((cut.out + cut.err).empty()) << "the refusal says nothing";
  EXPECT_EQ(finEndpoint(admin), kOld) << httpGet(admin, "/v1/fins").body;
  EXPECT_EQ(migrationField(admin, "active"), kOld);
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting:" << soarca->pendingIds();
  expectNothingLost();
}

// After a passing verify and a cutover, rollback puts the fin back on the old broker; with the
// mirror then off, the traffic runs on the old broker alone. Not one exchange is lost.
TEST_F(Migrate, RollbackBringsTheFinBackToTheOldBrokerLosesNothing) {
  ASSERT_NO_FATAL_FAILURE(registerMqttFin());
  ASSERT_NO_FATAL_FAILURE(startTraffic());
  ASSERT_NO_FATAL_FAILURE(mirrorOn());
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting:" << soarca->pendingIds();
  ASSERT_NO_FATAL_FAILURE(verifyPasses());

  auto cut = migrate("cutover");
  ASSERT_EQ(cut.rc, 0) << cut.out << cut.err;
  EXPECT_EQ(finEndpoint(admin), kNew) << httpGet(admin, "/v1/fins").body;
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting after the cutover:" << soarca->pendingIds();

  auto rb = migrate("rollback");
  ASSERT_EQ(rb.rc, 0) << rb.out << rb.err;
  EXPECT_EQ(finEndpoint(admin), kOld) << httpGet(admin, "/v1/fins").body;
  EXPECT_EQ(migrationField(admin, "active"), kOld);
  {
    auto m = json(httpGet(admin, "/v1/migration").body);
    ASSERT_TRUE(m && m->get("bindings")) << httpGet(admin, "/v1/migration").body;
    EXPECT_EQ(m->get("bindings")->num(kOld), 1);
    EXPECT_EQ(m->get("bindings")->num(kNew), 0);
  }
  ASSERT_TRUE(soarca->waitMore(20)) << "waiting after the rollback:" << soarca->pendingIds();
  // A second rollback has nothing to do: refused.
  auto again = migrate("rollback");
  EXPECT_EQ(again.rc, 1) << again.out << again.err;

  // Mirror off: from now on nothing goes to Kafka, and the exchanges go on through the old broker.
  auto off = migrate("mirror", {"--off"});
  ASSERT_EQ(off.rc, 0) << off.out << off.err;
  EXPECT_TRUE(waitFor(
      [&] {
        auto j = json(httpGet(admin, "/v1/migration").body);
        return j && !j->flag("mirror", true);
      },
      10s));
  ASSERT_TRUE(soarca->waitMore(10)) << "waiting:" << soarca->pendingIds();
  const int64_t kafka_commands = endOffset(*kafka, "fin." + kCap);
  const int mqtt_commands = mqtt_fin->commands();
  ASSERT_TRUE(soarca->waitMore(30)) << "waiting with the mirror off:" << soarca->pendingIds();
  EXPECT_TRUE(waitFor([&] { return mqtt_fin->commands() >= mqtt_commands + 30; }, 60s))
      << "the fin answered " << mqtt_fin->commands() - mqtt_commands << " commands on the old broker";
  EXPECT_EQ(endOffset(*kafka, "fin." + kCap), kafka_commands) << "records still reach Kafka after the rollback";
  expectNothingLost();
}

// The shipped example passes `fingate validate` (run from a scratch directory: its state_dir is
// relative; KAFKA_BROKERS is what the walkthrough exports).
TEST(MigrateExample, Validates) {
  const std::string dir = tempDir("migrate-example");
  const std::string file = std::string(FINGATE_SOURCE_DIR) + "/config/examples/migrate-mqtt-to-kafka.yaml";
  Process v({"/bin/sh", "-c", "cd \"$0\" && exec \"$1\" validate \"$2\"", dir, FINGATE_BIN, file},
            dir + "/validate.log", {{"KAFKA_BROKERS", "127.0.0.1:9092"}});
  EXPECT_EQ(v.wait(30s), 0) << v.log();
}

}  // namespace
