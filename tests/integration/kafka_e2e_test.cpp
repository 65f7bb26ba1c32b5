// The real fingate binary with the Kafka plugin against librdkafka's mock cluster (its own
// process per test, tests/tools/kafka_mock_cluster), real mosquitto and plain librdkafka clients
// playing SOARCA or a fin on Kafka, using the captured protocol vectors.
#include <gtest/gtest.h>
#include <signal.h>

#include <fingate/fin_codec.hpp>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include "gateway_process.hpp"
#include "kafka_client.hpp"
#include "kafka_mock.hpp"
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;

namespace {

const std::string kReg = vectorBytes("01-a-register.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kUnreg = vectorBytes("10-a-unregister.json");
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";
const std::string kCmdId = fingate::fin::parse(vectorBytes("13-b-ok-command-auth.json")).msg.message_id;

// Fast group timings for the mock (a rejoin waits session.timeout.ms - 1 s; under its 3 s
// first-join delay no member ever joins).
const std::string kFastGroup = "rdkafka: { session.timeout.ms: \"4000\", heartbeat.interval.ms: \"500\" }";

std::string kafkaEndpoint(const std::string& name, const std::string& role, const KafkaMock& k,
                          const std::string& group, const std::string& extra = "") {
  return "  " + name + ": { plugin: kafka, role: " + role + ", brokers: \"" + k.bootstrap() + "\", group: " + group +
         ", " + kFastGroup + extra + " }\n";
}

// A record key + the fin-topic header, as every fingate record carries them.
std::vector<std::pair<std::string, std::string>> finHeader(const std::string& topic) { return {{"fin-topic", topic}}; }

// Replaces the command's message_id.
std::string commandWithId(const std::string& id) {
  std::string c = kCmd;
  c.replace(c.find(kCmdId), kCmdId.size(), id);
  return c;
}

// The next record on `topic` that a gateway produced (has fingate-origin), skipping others.
std::optional<KafkaRecord> fromGateway(KafkaConsumer& c, const std::string& topic, std::chrono::milliseconds t = 30s) {
  auto end = std::chrono::steady_clock::now() + t;
  while (std::chrono::steady_clock::now() < end) {
    auto r = c.next(std::chrono::duration_cast<std::chrono::milliseconds>(end - std::chrono::steady_clock::now()));
    if (!r) return std::nullopt;
    if (r->topic == topic && r->header("fingate-origin")) return r;
  }
  return std::nullopt;
}

::testing::AssertionResult gotRecord(std::optional<KafkaRecord> r, const std::string& fin_topic,
                                     const std::string& payload) {
  if (!r) return ::testing::AssertionFailure() << "no record (expected one on " << fin_topic << ")";
  if (r->key != fin_topic || r->header("fin-topic") != fin_topic || r->value != payload)
    return ::testing::AssertionFailure() << "got key " << r->key.value_or("(none)") << ": "
                                         << r->value.value_or("(null)").substr(0, 300);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult got(std::optional<MqttTestClient::Msg> m, const std::string& payload) {
  if (!m) return ::testing::AssertionFailure() << "nothing received";
  if (m->payload != payload)
    return ::testing::AssertionFailure() << "got on " << m->topic << ": " << m->payload.substr(0, 300);
  return ::testing::AssertionSuccess();
}

::testing::AssertionResult gotFrame(FrameClient& c, const std::string& topic, const std::string& payload) {
  auto f = c.recv(30s);
  if (!f) return ::testing::AssertionFailure() << "nothing received on TCP (expected " << topic << ")";
  if (f->topic != topic || f->payload != payload)
    return ::testing::AssertionFailure() << "got on " << f->topic << ": " << f->payload.substr(0, 300);
  return ::testing::AssertionSuccess();
}

std::string metric(int admin_port, const std::string& name) {
  auto body = httpGet(admin_port, "/metrics").body;
  auto at = body.find("\n" + name + " ");
  if (at == std::string::npos) return "";
  auto end = body.find('\n', at + 1);
  return body.substr(at + name.size() + 2, end - at - name.size() - 2);
}
long long metricNum(int admin_port, const std::string& name) {
  std::string v = metric(admin_port, name);
  return v.empty() ? 0 : std::atoll(v.c_str());
}

class KafkaE2E : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!HasFailure()) return;
    for (auto* g : {gw.get(), gw2.get()})
      if (g) std::cerr << "---- fingate log ----\n" << g->log() << "\n";
  }
  std::unique_ptr<GatewayProcess> gw, gw2;
};

// SOARCA on MQTT, the fin on Kafka (a plain librdkafka producer/consumer): the whole exchange.
TEST_F(KafkaE2E, SoarcaOnMqttFinOnKafka) {
  Mosquitto broker;
  KafkaMock kafka({.brokers = 1, .partitions = 1, .topics = {"fin.soarca", "fin." + kFin, "fin." + kCap}});
  gw = std::make_unique<GatewayProcess>(
      "kafka-fins", "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + broker.url() +
                        "\", qos: 1 }\n" + kafkaEndpoint("bus", "fins", kafka, "fingate-fins"));
  ASSERT_TRUE(gw->start({"soarca", "bus"})) << gw->log();
  MqttTestClient soarca(broker.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  KafkaProducer fin(kafka.bootstrap());
  KafkaConsumer fin_in(kafka.bootstrap(), {"fin." + kFin, "fin." + kCap, "fin.soarca"});

  // register (read from the earliest offset even though the group joins later)
  ASSERT_TRUE(fin.send("fin.soarca", std::string("soarca"), kReg, finHeader("soarca")));
  ASSERT_TRUE(fin.flush());
  ASSERT_TRUE(got(soarca.recvOn("soarca", 30s), kReg));
  soarca.subscribe(kCap);
  soarca.publish(kFin, fingate::fin::makeAck(kRegId));
  ASSERT_TRUE(gotRecord(fromGateway(fin_in, "fin." + kFin), kFin, fingate::fin::makeAck(kRegId)));
  // command -> fin; ack + result -> SOARCA; SOARCA's ack -> fin
  soarca.publish(kCap, kCmd);
  ASSERT_TRUE(gotRecord(fromGateway(fin_in, "fin." + kCap), kCap, kCmd));
  ASSERT_TRUE(fin.send("fin." + kCap, kCap, fingate::fin::makeAck(kCmdId), finHeader(kCap)));
  ASSERT_TRUE(fin.send("fin." + kCap, kCap, kResult, finHeader(kCap)));
  ASSERT_TRUE(fin.flush());
  ASSERT_TRUE(got(soarca.recvOn(kCap, 30s), kCmd));  // its own publish (3.1.1 has no no-local)
  ASSERT_TRUE(got(soarca.recvOn(kCap, 30s), fingate::fin::makeAck(kCmdId)));
  ASSERT_TRUE(got(soarca.recvOn(kCap, 30s), kResult));
  std::string res_ack = fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001");
  soarca.publish(kCap, res_ack);
  ASSERT_TRUE(gotRecord(fromGateway(fin_in, "fin." + kCap), kCap, res_ack));
  // unregister -> SOARCA, and the binding is gone
  ASSERT_TRUE(fin.send("fin.soarca", std::string("soarca"), kUnreg, finHeader("soarca")));
  ASSERT_TRUE(fin.flush());
  ASSERT_TRUE(got(soarca.recvOn("soarca", 30s), kUnreg));
  // every record the gateway consumed from the fin reached its outcome: offsets committed to the end
  EXPECT_TRUE(waitFor(
      [&] {
        return kafkaCommitted(kafka.bootstrap(), "fingate-fins", "fin.soarca", 0) ==
               kafkaEndOffset(kafka.bootstrap(), "fin.soarca", 0);
      },
      20s));
}

// SOARCA on Kafka (plain librdkafka producer/consumer), the fin on TCP: the same exchange.
TEST_F(KafkaE2E, SoarcaOnKafkaFinOnTcp) {
  KafkaMock kafka({.brokers = 1, .partitions = 1, .topics = {"fin.soarca", "fin." + kFin, "fin." + kCap}});
  gw = std::make_unique<GatewayProcess>(
      "kafka-orch", "endpoints:\n" + kafkaEndpoint("soarca", "orchestrator", kafka, "fingate-orch") +
                        "  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "edge"})) << gw->log();
  KafkaProducer soarca(kafka.bootstrap());
  KafkaConsumer soarca_in(kafka.bootstrap(), {"fin.soarca", "fin." + kFin, "fin." + kCap});
  FrameClient fin(gw->port("edge"));
  ASSERT_TRUE(fin.subscribe("soarca"));
  ASSERT_TRUE(fin.barrier());
  ASSERT_TRUE(fin.publish("soarca", kReg));
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin.soarca"), "soarca", kReg));
  ASSERT_TRUE(soarca.send("fin." + kFin, kFin, fingate::fin::makeAck(kRegId), finHeader(kFin)));
  ASSERT_TRUE(soarca.flush());
  ASSERT_TRUE(gotFrame(fin, kFin, fingate::fin::makeAck(kRegId)));
  ASSERT_TRUE(soarca.send("fin." + kCap, kCap, kCmd, finHeader(kCap)));
  ASSERT_TRUE(soarca.flush());
  ASSERT_TRUE(gotFrame(fin, kCap, kCmd));
  ASSERT_TRUE(fin.publish(kCap, fingate::fin::makeAck(kCmdId)));
  ASSERT_TRUE(fin.publish(kCap, kResult));
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin." + kCap), kCap, fingate::fin::makeAck(kCmdId)));
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin." + kCap), kCap, kResult));
  std::string res_ack = fingate::fin::makeAck("1b5823f2-e6f1-11f1-b0c5-02fc00000001");
  ASSERT_TRUE(soarca.send("fin." + kCap, kCap, res_ack, finHeader(kCap)));
  ASSERT_TRUE(soarca.flush());
  ASSERT_TRUE(gotFrame(fin, kCap, res_ack));
  ASSERT_TRUE(fin.publish("soarca", kUnreg));
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin.soarca"), "soarca", kUnreg));
  EXPECT_TRUE(waitFor(
      [&] {
        return kafkaCommitted(kafka.bootstrap(), "fingate-orch", "fin." + kCap, 0) ==
               kafkaEndOffset(kafka.bootstrap(), "fin." + kCap, 0);
      },
      20s));
}

// Collects the command ids a fin on MQTT receives on its capability topic.
struct MqttFinCounter {
  std::map<std::string, int> seen;
  void drain(MqttTestClient& fin, std::chrono::milliseconds t) {
    while (auto m = fin.recv(t)) {
      if (m->topic != kCap) continue;
      auto p = fingate::fin::parse(m->payload);
      if (p.ok) seen[p.msg.message_id]++;
      t = std::chrono::milliseconds(1);
    }
  }
};

// Two gateways in one Kafka group between SOARCA on Kafka (1,000 commands) and a fin on MQTT;
// one is SIGKILLed mid-stream: every command still reaches the fin (at least once), 0 lost.
TEST_F(KafkaE2E, ScaleOutKill9LosesNothing) {
  Mosquitto broker;
  KafkaMock kafka(
      {.brokers = 1, .partitions = 1, .topics = {"fin.soarca", "fin." + kFin, "fin." + kCap, "fingate.bindings"}});
  // The scale-out set-up of docs/scaling.md: the fins broker shared by the group (each message to
  // one instance, never another's publish), the bindings shared through a compacted topic.
  auto body = "cluster: { registry_endpoint: soarca }\nendpoints:\n" +
              kafkaEndpoint("soarca", "orchestrator", kafka, "gw", ", registry_topic: fingate.bindings") +
              "  fins: { plugin: mqtt, role: fins, url: \"" + broker.url() + "\", shared_group: gw-fins }\n";
  gw = std::make_unique<GatewayProcess>("kafka-scale-1", body);
  gw2 = std::make_unique<GatewayProcess>("kafka-scale-2", body);
  ASSERT_TRUE(gw->start({"soarca", "fins"})) << gw->log();
  ASSERT_TRUE(gw2->start({"soarca", "fins"})) << gw2->log();
  MqttTestClient fin(broker.url(), kFin, 5, 1);
  fin.subscribe(kCap, true);
  fin.subscribe(kFin, true);
  KafkaConsumer soarca_in(kafka.bootstrap(), {"fin.soarca"});
  fin.publish("soarca", kReg);
  // One gateway takes the register (shared subscription) and forwards it; the other learns the
  // binding from the registry topic.
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin.soarca"), "soarca", kReg));
  auto knows = [&](GatewayProcess& g) {
    return httpGet(g.adminPort(), "/v1/fins").body.find(kFin) != std::string::npos;
  };
  ASSERT_TRUE(waitFor([&] { return knows(*gw) && knows(*gw2); }, 30s));

  constexpr int kCommands = 1000;
  KafkaProducer soarca(kafka.bootstrap());
  std::vector<std::string> ids;
  for (int i = 0; i < kCommands; ++i) {
    char id[64];
    std::snprintf(id, sizeof id, "c0000000-0000-4000-8000-%012d", i);
    ids.push_back(id);
  }
  for (int i = 0; i < kCommands / 2; ++i)
    ASSERT_TRUE(soarca.send("fin." + kCap, kCap, commandWithId(ids[i]), finHeader(kCap)));
  ASSERT_TRUE(soarca.flush());
  MqttFinCounter counter;
  ASSERT_TRUE(waitFor(
      [&] {
        counter.drain(fin, 10ms);
        return counter.seen.size() >= 100;
      },
      60s))
      << "the fin got " << counter.seen.size() << " commands";
  // Kill the instance that consumes the capability topic (the one with inbound traffic on it).
  long long in1 = metricNum(gw->adminPort(), "fingate_messages_in_total{endpoint=\"soarca\"}");
  long long in2 = metricNum(gw2->adminPort(), "fingate_messages_in_total{endpoint=\"soarca\"}");
  GatewayProcess& victim = in1 >= in2 ? *gw : *gw2;
  GatewayProcess& survivor = in1 >= in2 ? *gw2 : *gw;
  std::cout << "inbound before the kill: gw1 " << in1 << ", gw2 " << in2 << "; killing " << (in1 >= in2 ? "gw1" : "gw2")
            << " after the fin saw " << counter.seen.size() << " commands; committed offset then "
            << kafkaCommitted(kafka.bootstrap(), "gw", "fin." + kCap, 0) << "\n";
  {
    std::istringstream ms(httpGet(victim.adminPort(), "/metrics").body);
    for (std::string l; std::getline(ms, l);)
      if (l.find("outcome") != std::string::npos || l.find("dead_letters_total") != std::string::npos)
        std::cout << "  victim " << l << "\n";
  }
  victim.process().stop(SIGKILL, 10s);
  for (int i = kCommands / 2; i < kCommands; ++i)
    ASSERT_TRUE(soarca.send("fin." + kCap, kCap, commandWithId(ids[i]), finHeader(kCap)));
  ASSERT_TRUE(soarca.flush());
  ASSERT_TRUE(waitFor(
      [&] {
        counter.drain(fin, 10ms);
        return counter.seen.size() >= static_cast<size_t>(kCommands);
      },
      90s))
      << "lost: " << kCommands - counter.seen.size() << "\n"
      << survivor.log();
  counter.drain(fin, 300ms);
  int lost = 0, dups = 0;
  std::string dup_ids;
  for (auto& id : ids) {
    auto it = counter.seen.find(id);
    if (it == counter.seen.end())
      ++lost;
    else if (it->second > 1) {
      dups += it->second - 1;
      if (dup_ids.size() < 2000) dup_ids += " " + id.substr(24) + "x" + std::to_string(it->second);
    }
  }
  std::cout << "commands " << kCommands << ", received unique " << counter.seen.size() << ", lost " << lost
            << ", duplicates " << dups << (dups ? " (command index x times:" + dup_ids + ")" : "") << "\n";
  EXPECT_EQ(lost, 0);
  // SOARCA's capability topic holds its commands and nothing else: no instance routed another's
  // publish back towards SOARCA (the fins broker's group mark).
  EXPECT_EQ(kafkaEndOffset(kafka.bootstrap(), "fin." + kCap, 0), kCommands);
}

// The partition leader goes down mid-stream and comes back: nothing lost.
TEST_F(KafkaE2E, PartitionLeaderDownAndUpLosesNothing) {
  KafkaMock kafka({.brokers = 3, .partitions = 1, .topics = {"fin.soarca", "fin." + kFin, "fin." + kCap}});
  ASSERT_EQ(kafka.command("leader fin." + kCap + " 0 2"), "ok leader fin." + kCap + " 0 2");
  gw = std::make_unique<GatewayProcess>("kafka-leader",
                                        "endpoints:\n" + kafkaEndpoint("soarca", "orchestrator", kafka, "gw") +
                                            "  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "edge"})) << gw->log();
  FrameClient fin(gw->port("edge"));
  ASSERT_TRUE(fin.publish("soarca", kReg));
  KafkaConsumer soarca_in(kafka.bootstrap(), {"fin.soarca"});
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin.soarca"), "soarca", kReg));
  KafkaProducer soarca(kafka.bootstrap(), {{"message.timeout.ms", "120000"}});
  constexpr int kCommands = 300;
  std::map<std::string, int> seen;
  auto drain = [&](std::chrono::milliseconds t) {
    while (auto f = fin.recv(t)) {
      auto p = fingate::fin::parse(f->payload);
      if (f->topic == kCap && p.ok) seen[p.msg.message_id]++;
      t = 1ms;
    }
  };
  auto id = [](int i) {
    char b[64];
    std::snprintf(b, sizeof b, "d0000000-0000-4000-8000-%012d", i);
    return std::string(b);
  };
  for (int i = 0; i < kCommands / 3; ++i)
    ASSERT_TRUE(soarca.send("fin." + kCap, kCap, commandWithId(id(i)), finHeader(kCap)));
  ASSERT_TRUE(soarca.flush());
  ASSERT_TRUE(waitFor(
      [&] {
        drain(10ms);
        return seen.size() >= 50;
      },
      60s));
  ASSERT_EQ(kafka.command("down 2"), "ok down 2");
  for (int i = kCommands / 3; i < kCommands; ++i)
    ASSERT_TRUE(soarca.send("fin." + kCap, kCap, commandWithId(id(i)), finHeader(kCap)));
  // While the leader is down the producer keeps them (idempotent, retried); give both clients
  // time to notice, then bring it back.
  for (int i = 0; i < 20; ++i) {
    soarca.poll();
    drain(100ms);
  }
  std::cout << "fin had " << seen.size() << " commands when broker 2 came back\n";
  ASSERT_EQ(kafka.command("up 2"), "ok up 2");
  ASSERT_TRUE(soarca.flush(60000)) << "the SOARCA-side producer failed " << soarca.failed();
  ASSERT_TRUE(waitFor(
      [&] {
        drain(10ms);
        return seen.size() >= static_cast<size_t>(kCommands);
      },
      60s))
      << "lost " << kCommands - seen.size();
  int dups = 0;
  for (auto& [k, n] : seen) dups += n - 1;
  std::cout << "commands " << kCommands << ", received unique " << seen.size() << ", duplicates " << dups << "\n";
  EXPECT_EQ(seen.size(), static_cast<size_t>(kCommands));
}

// A record without key and header, a non-JSON value, an unknown fin topic: dead-lettered and
// counted; consumption goes on and the committed offset moves past them.
TEST_F(KafkaE2E, BadRecordsAreDeadLetteredAndOffsetsAdvance) {
  KafkaMock kafka({.brokers = 1, .partitions = 1, .topics = {"fin-all"}});
  gw = std::make_unique<GatewayProcess>(
      "kafka-bad", "endpoints:\n" +
                       kafkaEndpoint("soarca", "orchestrator", kafka, "gw-bad", ", single_topic: fin-all") +
                       "  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  ASSERT_TRUE(gw->start({"soarca", "edge"})) << gw->log();
  FrameClient fin(gw->port("edge"));
  ASSERT_TRUE(fin.publish("soarca", kReg));
  KafkaConsumer soarca_in(kafka.bootstrap(), {"fin-all"});
  ASSERT_TRUE(gotRecord(fromGateway(soarca_in, "fin-all"), "soarca", kReg));
  KafkaProducer soarca(kafka.bootstrap());
  ASSERT_TRUE(soarca.send("fin-all", std::nullopt,
                          commandWithId("e0000000-0000-4000-8000-000000000001")));  // no key, no header
  ASSERT_TRUE(soarca.send("fin-all", std::string("soarca"), std::string("this is not JSON"), finHeader("soarca")));
  ASSERT_TRUE(soarca.send("fin-all", std::string("no-such-fin"), commandWithId("e0000000-0000-4000-8000-000000000002"),
                          finHeader("no-such-fin")));
  ASSERT_TRUE(soarca.send("fin-all", kCap, commandWithId("e0000000-0000-4000-8000-000000000003"), finHeader(kCap)));
  ASSERT_TRUE(soarca.flush());
  // Consumption went on: the good command after the bad ones arrives.
  ASSERT_TRUE(gotFrame(fin, kCap, commandWithId("e0000000-0000-4000-8000-000000000003")));
  int admin = gw->adminPort();
  ASSERT_TRUE(waitFor([&] { return metricNum(admin, "fingate_dead_letters_total{reason=\"unroutable\"}") >= 2; }, 10s))
      << httpGet(admin, "/metrics").body;
  EXPECT_EQ(metricNum(admin, "fingate_dead_letters_total{reason=\"invalid_message\"}"), 1);
  auto dl = httpGet(admin, "/v1/dead-letters").body;
  EXPECT_NE(dl.find("\"topic\":\"$kafka/fin-all\""), std::string::npos) << dl;
  EXPECT_NE(dl.find("\"topic\":\"no-such-fin\""), std::string::npos) << dl;
  EXPECT_NE(dl.find("this is not JSON"), std::string::npos) << dl;
  // The unknown fin's command was nacked back to SOARCA.
  ASSERT_TRUE(waitFor(
      [&] {
        auto r = fromGateway(soarca_in, "fin-all", 1s);
        return r && r->key == "no-such-fin" && r->value && r->value->find("\"nack\"") != std::string::npos;
      },
      20s));
  // Offsets: everything on the topic is final, so the group's committed offset reaches the end.
  int64_t committed = -1, end = -1;
  EXPECT_TRUE(waitFor(
      [&] {
        committed = kafkaCommitted(kafka.bootstrap(), "gw-bad", "fin-all", 0);
        end = kafkaEndOffset(kafka.bootstrap(), "fin-all", 0);
        return committed == end;
      },
      20s))
      << "committed " << committed << ", end " << end;
}

}  // namespace
