// Several fingate processes as one group (docs/scaling.md): MQTT 5 shared subscriptions on
// SOARCA's broker split the commands between instances, each exactly once; an instance that is
// stopped drains and the others carry everything. Real mosquitto brokers, real processes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <fingate/registry.hpp>
#include <fstream>
#include <map>
#include <regex>
#include <set>

#include "gateway_process.hpp"
#ifdef FINGATE_SCALEOUT_KAFKA
#include "kafka_mock.hpp"
#endif
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;

namespace {

const std::string kReg = vectorBytes("01-a-register.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";

std::string commandWithId(const std::string& id) {
  static const std::regex re("\"message_id\":\"[^\"]*\"");
  return std::regex_replace(kCmd, re, "\"message_id\":\"" + id + "\"", std::regex_constants::format_first_only);
}

std::string messageIdOf(const std::string& payload) {
  static const std::regex re("\"message_id\":\"([^\"]*)\"");
  std::smatch m;
  return std::regex_search(payload, m, re) ? m[1].str() : "";
}

long long metricValue(int admin_port, const std::string& series) {
  auto body = httpGet(admin_port, "/metrics").body;
  auto at = body.find("\n" + series + " ");
  if (at == std::string::npos) return -1;
  return std::atoll(body.c_str() + at + series.size() + 2);
}

// Receives commands on the fin's client until `want` distinct ids were seen or nothing comes for
// `idle`; returns id -> copies.
std::map<std::string, int> collect(MqttTestClient& fin, size_t want, std::chrono::milliseconds idle = 15s) {
  std::map<std::string, int> seen;
  size_t distinct = 0;
  while (distinct < want) {
    auto m = fin.recv(idle);
    if (!m) break;
    if (m->topic != kCap) continue;
    if (++seen[messageIdOf(m->payload)] == 1) ++distinct;
  }
  return seen;
}

class ScaleOut : public ::testing::Test {
 protected:
  void TearDown() override {
    if (!HasFailure()) return;
    for (auto* g : {a.get(), b.get()})
      if (g) std::cerr << "---- " << g->dir() << " ----\n" << g->log() << "\n";
  }
  std::unique_ptr<GatewayProcess> a, b;
};

// Both instances know the fin from their state files (as after a restart; the shared registry
// test below learns it live instead), so this one checks the brokers' side alone.
std::string stateWithFin(const std::string& name) {
  std::string dir = tempDir(name);
  fingate::FinBinding b;
  b.fin_id = kFin;
  b.endpoint = "fins";
  b.capabilities = {kCap};
  b.acked = true;
  b.register_message_id = "abec7356-e6f0-11f1-acf4-02fc00000001";
  b.register_payload = kReg;
  std::ofstream(dir + "/bindings.json") << "{\"version\":1,\"fins\":[" << fingate::bindingRecord(b) << "]}\n";
  return dir;
}

TEST_F(ScaleOut, SharedSubscriptionsForwardEachCommandOnceAndTheSurvivorTakesAll) {
  Mosquitto soarca_broker, fins_broker;
  // shared_group on both brokers: each message any of them carries for the group is taken by
  // one instance, and an instance never takes another's publish for SOARCA's or a fin's.
  const std::string body = "endpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"" + soarca_broker.url() +
                           "\", qos: 1, shared_group: fingate }\n  fins: { plugin: mqtt, role: fins, url: \"" +
                           fins_broker.url() + "\", qos: 1, shared_group: fingate }\n";
  a = std::make_unique<GatewayProcess>("scale-a", body, stateWithFin("scale-a-state"));
  b = std::make_unique<GatewayProcess>("scale-b", body, stateWithFin("scale-b-state"));
  MqttTestClient soarca(soarca_broker.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  MqttTestClient fin(fins_broker.url(), "fin", 5, 1);
  fin.subscribe(kCap, true);
  ASSERT_TRUE(a->start({"soarca", "fins"}));
  ASSERT_TRUE(b->start({"soarca", "fins"}));
  // Each instance replays the restored register to SOARCA once it is up with its subscriptions.
  ASSERT_TRUE(soarca.recvOn("soarca", 10s));
  ASSERT_TRUE(soarca.recvOn("soarca", 10s));

  constexpr int kN = 1000;
  for (int i = 0; i < kN; ++i) soarca.publish(kCap, commandWithId("both-" + std::to_string(i)));
  auto seen = collect(fin, kN);
  int dup = 0;
  for (auto& [id, n] : seen) dup += n - 1;
  EXPECT_EQ(seen.size(), static_cast<size_t>(kN)) << "commands lost";
  EXPECT_EQ(dup, 0) << "commands delivered twice";
  // Each instance took a share (the broker splits a shared subscription between its members).
  const std::string in = "fingate_messages_in_total{endpoint=\"soarca\"}";
  long long in_a = metricValue(a->adminPort(), in), in_b = metricValue(b->adminPort(), in);
  EXPECT_GT(in_a, 0);
  EXPECT_GT(in_b, 0);
  EXPECT_GE(in_a + in_b, kN);

  // The fin's result goes to SOARCA; no instance hands the group's own publish of it (which the
  // broker gives to one member of the shared subscription, not necessarily its sender) back to
  // the fin as if SOARCA had sent it: the next thing on the fin's topic is SOARCA's barrier.
  const std::string result = vectorBytes("14-b-ok-result.json");
  soarca.subscribe(kCap);
  soarca.publish("soarca", "{}");  // a barrier for SOARCA's own subscription (3.1.1 hears itself)
  ASSERT_TRUE(soarca.recvOn("soarca", 10s));
  fin.publish(kCap, result);
  std::optional<MqttTestClient::Msg> r;
  while ((r = soarca.recvOn(kCap, 10s)) && r->payload != result) {
  }
  ASSERT_TRUE(r) << "SOARCA never got the fin's result";
  // ... once: the other instance did not take the first one's publish on the fins broker.
  while ((r = soarca.recvOn(kCap, 2s))) EXPECT_NE(r->payload, result) << "the fin's result reached SOARCA twice";
  soarca.publish(kCap, commandWithId("barrier"));
  auto next = fin.recvOn(kCap, 10s);
  ASSERT_TRUE(next);
  EXPECT_EQ(messageIdOf(next->payload), "barrier") << next->payload.substr(0, 200);

  // B stops (SIGTERM: it drains and exits 0); A carries everything from then on.
  ASSERT_EQ(::kill(b->process().pid(), SIGTERM), 0);
  int code = b->process().wait(15s);
  EXPECT_EQ(code, 0);
  for (int i = 0; i < kN; ++i) soarca.publish(kCap, commandWithId("after-" + std::to_string(i)));
  auto after = collect(fin, kN);
  dup = 0;
  for (auto& [id, n] : after) dup += n - 1;
  EXPECT_EQ(after.size(), static_cast<size_t>(kN)) << "commands lost after one instance stopped";
  EXPECT_EQ(dup, 0);
  EXPECT_GE(metricValue(a->adminPort(), in), in_a + kN);
}

#ifdef FINGATE_SCALEOUT_KAFKA
// The shared registry: a fin registers through one instance (whichever the fins broker's shared
// subscription hands its register to); the other learns the binding from the compacted Kafka
// topic; the first is killed with SIGKILL; SOARCA's next command still reaches the fin.
TEST_F(ScaleOut, ABindingLearnedThroughOneInstanceIsRoutedByAnotherAfterItDies) {
  Mosquitto soarca_broker, fins_broker;
  KafkaMockOptions ko;
  ko.topics = {"fingate.bindings"};
  KafkaMock kafka(ko);
  const std::string body =
      "cluster: { registry_endpoint: registry }\nendpoints:\n"
      "  soarca: { plugin: mqtt, role: orchestrator, url: \"" +
      soarca_broker.url() +
      "\", qos: 1, shared_group: fg-soarca }\n"
      "  fins: { plugin: mqtt, role: fins, url: \"" +
      fins_broker.url() +
      "\", qos: 1, shared_group: fg-fins }\n"
      "  registry: { plugin: kafka, role: bridge, brokers: \"" +
      kafka.bootstrap() + "\", registry_topic: fingate.bindings }\n";
  a = std::make_unique<GatewayProcess>("reg-a", body);
  b = std::make_unique<GatewayProcess>("reg-b", body);
  ASSERT_TRUE(a->start({"soarca", "fins", "registry"}, 40s));
  ASSERT_TRUE(b->start({"soarca", "fins", "registry"}, 40s));

  MqttTestClient soarca(soarca_broker.url(), "soarca", 3, 1);
  soarca.subscribe("soarca");
  MqttTestClient fin(fins_broker.url(), "fin", 5, 1);
  fin.subscribe(kCap, true);
  fin.publish("soarca", kReg);
  auto reg = soarca.recvOn("soarca", 15s);
  ASSERT_TRUE(reg) << "SOARCA never got the register";
  EXPECT_EQ(reg->payload, kReg);

  // Both instances know the fin: one bound it, the other adopted it from the registry topic.
  auto knows = [&](GatewayProcess& g, bool remote) {
    auto body = httpGet(g.adminPort(), "/v1/fins").body;
    return body.find(kFin) != std::string::npos &&
           body.find(remote ? "\"remote\":true" : "\"remote\":false") != std::string::npos;
  };
  ASSERT_TRUE(
      waitFor([&] { return (knows(*a, false) && knows(*b, true)) || (knows(*a, true) && knows(*b, false)); }, 20s))
      << "a: " << httpGet(a->adminPort(), "/v1/fins").body << "\nb: " << httpGet(b->adminPort(), "/v1/fins").body;
  GatewayProcess& owner = knows(*a, false) ? *a : *b;
  GatewayProcess& other = &owner == a.get() ? *b : *a;
  EXPECT_GE(metricValue(other.adminPort(), "fingate_shared_registry_records_total{op=\"applied\"}"), 1);
  // Its subscription of the fin's ids on SOARCA's broker is in place once it has adopted it;
  // SOARCA's only register came from the owner (the other never forwards what it learned).
  EXPECT_FALSE(soarca.recvOn("soarca", 1s)) << "a second register reached SOARCA";

  ASSERT_EQ(::kill(owner.process().pid(), SIGKILL), 0);
  owner.process().wait(10s);
  // The broker may still count the dead member for a moment: commands are sent until one
  // arrives (each one a new message id), a bounded number of times.
  std::optional<MqttTestClient::Msg> got;
  int attempts = 0;
  while (!got && attempts < 10) {
    soarca.publish(kCap, commandWithId("after-kill-" + std::to_string(attempts++)));
    got = fin.recvOn(kCap, 2s);
  }
  ASSERT_TRUE(got) << "no command reached the fin after its instance died";
  EXPECT_EQ(messageIdOf(got->payload).rfind("after-kill-", 0), 0u);
  EXPECT_GT(metricValue(other.adminPort(), "fingate_messages_in_total{endpoint=\"soarca\"}"), 0);

  // An instance started afterwards (an empty state directory) rebuilds the binding from the topic.
  GatewayProcess fresh("reg-c", body);
  ASSERT_TRUE(fresh.start({"soarca", "fins", "registry"}, 40s));
  EXPECT_TRUE(waitFor([&] { return knows(fresh, true); }, 20s)) << httpGet(fresh.adminPort(), "/v1/fins").body;
}
#endif

}  // namespace
