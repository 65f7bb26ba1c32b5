// Core data path v2 (issue 7) through the real binary: a slow consumer stalls only itself and
// is closed, its commands dead-lettered and nacked; reloads under traffic lose nothing on the
// endpoints that did not change and keep bindings.
#include <fingate/fin_codec.hpp>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <fstream>
#include <thread>

#include "gateway_process.hpp"
#include "mosquitto.hpp"
#include "mqtt_test_client.hpp"

using namespace fingate::test;

namespace {

const std::string kRegA = vectorBytes("01-a-register.json");
const std::string kCmd = vectorBytes("13-b-ok-command-auth.json");
const std::string kResult = vectorBytes("14-b-ok-result.json");
const std::string kFinA = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
const std::string kCapA = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";
const std::string kRegId = "abec7356-e6f0-11f1-acf4-02fc00000001";

std::string replaceAll(std::string s, const std::string& from, const std::string& to) {
  for (size_t p = s.find(from); p != std::string::npos; p = s.find(from, p + to.size())) s.replace(p, from.size(), to);
  return s;
}
const std::string kFinB = "soarca-fin--slow-0000";
const std::string kCapB = "mod-slow--0000";
const std::string kRegB = replaceAll(replaceAll(replaceAll(kRegA, kFinA, kFinB), kCapA, kCapB), kRegId,
                                     "bbbb0000-e6f0-11f1-acf4-02fc00000001");

int countOf(const std::string& hay, const std::string& needle) {
  int n = 0;
  for (size_t p = hay.find(needle); p != std::string::npos; p = hay.find(needle, p + needle.size())) ++n;
  return n;
}

long vmRssKb(int pid) {
  std::ifstream f("/proc/" + std::to_string(pid) + "/status");
  std::string l;
  while (std::getline(f, l))
    if (l.rfind("VmRSS:", 0) == 0) return std::stol(l.substr(6));
  return -1;
}

uint64_t metric(int admin_port, const std::string& name) {
  auto body = httpGet(admin_port, "/metrics").body;
  size_t at = body.find("\n" + name + " ");
  if (at == std::string::npos) return 0;
  return std::stoull(body.substr(at + name.size() + 2));
}

// SOARCA-like: hears the register, subscribes the fin's ids, acks.
void registerFin(FrameClient& orch, FrameClient& fin, const std::string& reg, const std::string& fin_id,
                 const std::string& cap, const std::string& msg_id) {
  ASSERT_TRUE(fin.publish("soarca", reg));
  auto r = orch.recv(10s);
  ASSERT_TRUE(r && r->topic == "soarca");
  ASSERT_TRUE(orch.subscribe(fin_id));
  ASSERT_TRUE(orch.subscribe(cap));
  ASSERT_TRUE(orch.barrier());
  ASSERT_TRUE(orch.publish(fin_id, fingate::fin::makeAck(msg_id)));
  auto a = fin.recv(10s);
  ASSERT_TRUE(a && a->topic == fin_id);
}

// Two fins on one TCP fins endpoint, one never reads: the other receives every one of 10,000
// commands; the slow one is closed when its queue stayed full past the grace period, its
// commands are dead-lettered and each is nacked to the orchestrator; memory stays bounded.
TEST(DatapathE2E, SlowConsumerStallsOnlyItselfAndIsClosed) {
  GatewayProcess gw("slow-consumer", R"(limits: { session_queue_messages: 2048, slow_consumer_grace_ms: 500 }
endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: tcp, role: fins, listen: "127.0.0.1:0", session_buffer_bytes: 65536 }
)");
  ASSERT_TRUE(gw.start({"orchestrator", "fins"})) << gw.log();
  FrameClient orch(gw.port("orchestrator")), a(gw.port("fins")), b(gw.port("fins"));
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  registerFin(orch, a, kRegA, kFinA, kCapA, kRegId);
  registerFin(orch, b, kRegB, kFinB, kCapB, "bbbb0000-e6f0-11f1-acf4-02fc00000001");
  if (HasFatalFailure()) return;
  long rss_before = vmRssKb(gw.process().pid());

  const int n_a = 10000, n_b = 20000;
  std::atomic<int> got_a{0}, nacks{0};
  std::atomic<bool> done{false};
  struct Joiner {  // an ASSERT that returns early still stops and joins the readers
    std::atomic<bool>& done;
    std::vector<std::thread*> threads;
    ~Joiner() {
      done = true;
      for (auto* t : threads)
        if (t->joinable()) t->join();
    }
  };
  std::thread reader_a([&] {
    auto end = std::chrono::steady_clock::now() + 120s;
    while (got_a < n_a && !done && std::chrono::steady_clock::now() < end)
      if (auto f = a.recv(1s); f && f->topic == kCapA) got_a++;
  });
  std::thread reader_orch([&] {  // the orchestrator keeps reading (it is not the slow one)
    while (!done)
      if (auto f = orch.recv(200ms); f && f->payload.find("\"nack\"") != std::string::npos) nacks++;
  });
  Joiner joiner{done, {&reader_a, &reader_orch}};
  // Like SOARCA, at most a few hundred commands in flight to the fin that reads; the slow fin
  // gets its commands regardless.
  for (int i = 0; i < n_b; ++i) {
    if (i < n_a) {
      for (int w = 0; w < 10000 && i - got_a.load() > 200; ++w) std::this_thread::sleep_for(1ms);
      ASSERT_TRUE(orch.publish(kCapA, kCmd));
    }
    ASSERT_TRUE(orch.publish(kCapB, kCmd));
  }
  reader_a.join();
  EXPECT_EQ(got_a.load(), n_a) << "the fin that reads got every command";
  ASSERT_TRUE(waitFor([&] { return metric(gw.adminPort(), "fingate_slow_consumers_total{endpoint=\"fins\"}") == 1; }, 30s))
      << httpGet(gw.adminPort(), "/metrics").body;
  // Every command that did not reach B is a dead letter (whatever the reason: queue full, the
  // close, a write that failed, no binding any more) and a nack to the orchestrator.
  uint64_t dead = 0;
  ASSERT_TRUE(waitFor(
      [&] {
        auto dl = httpGet(gw.adminPort(), "/v1/dead-letters").body;
        dead = dl.rfind("{\"total\":", 0) == 0 ? std::stoull(dl.substr(9)) : 0;
        return dead > 0 && static_cast<uint64_t>(nacks.load()) == dead;
      },
      30s))
      << "dead letters " << dead << ", nacks " << nacks.load() << "\n"
      << httpGet(gw.adminPort(), "/metrics").body;
  done = true;
  reader_orch.join();
  long rss_after = vmRssKb(gw.process().pid());
  std::printf("gateway VmRSS before %ld kB, after %ld kB (%d commands to the slow fin, %llu dead-lettered)\n", rss_before,
              rss_after, n_b, static_cast<unsigned long long>(dead));
  EXPECT_LT(rss_after - rss_before, 256 * 1024) << "memory bounded (session queue 2048 messages)";
  EXPECT_TRUE(b.waitClosed(10s)) << "the slow fin's connection was closed";
  // Its binding went with its session.
  EXPECT_TRUE(waitFor([&] { return httpGet(gw.adminPort(), "/v1/fins").body.find(kCapB) == std::string::npos; }));
  EXPECT_NE(httpGet(gw.adminPort(), "/v1/fins").body.find(kCapA), std::string::npos);
}

// SIGHUP 50 times while TCP and MQTT traffic flows, adding, changing and removing endpoints:
// no crash, nothing lost on the endpoints that did not change, the bindings stay.
TEST(DatapathE2E, FiftyReloadsUnderTrafficLoseNothingOnUnchangedEndpoints) {
  Mosquitto broker;
  const std::string base = R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: tcp, role: fins, listen: "127.0.0.1:0" }
  mq: { plugin: mqtt, role: bridge, url: ")" + broker.url() + R"(", client_id: reload-mq, qos: 1 }
)";
  const std::string routes = R"(routes:
  - from: { endpoint: mq, topic: "load/#" }
    to: { endpoint: mq, topic: "echo/{topic}" }
)";
  GatewayProcess gw("reload-stress", base + routes);
  ASSERT_TRUE(gw.start({"orchestrator", "fins", "mq"}, 30s)) << gw.log();
  // The TCP ports stay the same across reloads: the config says port 0, so the kept endpoints
  // must never be restarted (a restart would pick new ports and lose the clients).
  FrameClient orch(gw.port("orchestrator")), fin(gw.port("fins"));
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  registerFin(orch, fin, kRegA, kFinA, kCapA, kRegId);
  if (HasFatalFailure()) return;
  MqttTestClient mqtt(broker.url(), "reload-test-client", 5, 1);
  mqtt.subscribe("echo/#");

  std::atomic<bool> stop{false};
  std::atomic<int> tcp_sent{0}, mqtt_sent{0};
  std::thread traffic([&] {
    int i = 0;
    while (!stop && i < 200000) {
      if (!orch.publish(kCapA, kCmd)) break;
      tcp_sent++;
      if (i % 4 == 0) {
        mqtt.publish("load/" + std::to_string(i), "m" + std::to_string(i));
        mqtt_sent++;
      }
      ++i;
      std::this_thread::sleep_for(1ms);
    }
  });
  std::atomic<int> tcp_got{0};
  std::thread reader([&] {
    while (!stop || tcp_got < tcp_sent)
      if (auto f = fin.recv(stop ? 2s : 200ms); f && f->topic == kCapA) tcp_got++;
      else if (stop && !f) break;
  });
  int mqtt_got = 0;
  std::thread mreader([&] {
    while (!stop || mqtt_got < mqtt_sent)
      if (auto m = mqtt.recv(stop ? 3s : 200ms)) mqtt_got++;
      else if (stop) break;
  });
  for (int r = 0; r < 50; ++r) {
    std::string extra;
    switch (r % 5) {
      case 0: extra = "  extra: { plugin: loopback, role: bridge }\n"; break;             // added
      case 1: extra = "  extra: { plugin: loopback, role: bridge, capacity: 5000 }\n"; break;  // changed
      case 2: extra = ""; break;                                                            // removed
      case 3:
        extra = "  mq2: { plugin: mqtt, role: bridge, url: \"" + broker.url() + "\", client_id: reload-mq2 }\n";
        break;
      case 4:
        extra = "  mq2: { plugin: mqtt, role: bridge, url: \"" + broker.url() + "\", client_id: reload-mq2b, qos: 0 }\n";
        break;
    }
    gw.rewrite(base + extra + routes);
    ::kill(gw.process().pid(), SIGHUP);
    // Next reload only after this one was applied (or refused: then the test fails).
    ASSERT_TRUE(waitFor([&] { return countOf(gw.log(), "reload: applied") == r + 1; }, 30s))
        << "reload " << r << "\n" << gw.log().substr(0, 20000);
  }
  stop = true;
  traffic.join();
  reader.join();
  mreader.join();
  EXPECT_TRUE(gw.process().running()) << gw.log();
  EXPECT_GT(tcp_sent.load(), 100);
  EXPECT_GT(mqtt_sent.load(), 25);
  EXPECT_EQ(tcp_got.load(), tcp_sent.load()) << "TCP commands through unchanged endpoints";
  EXPECT_EQ(mqtt_got, mqtt_sent.load()) << "MQTT messages through an unchanged endpoint";
  auto fins = httpGet(gw.adminPort(), "/v1/fins").body;
  EXPECT_NE(fins.find(kCapA), std::string::npos) << fins;
  EXPECT_NE(fins.find("\"acked\":true"), std::string::npos) << fins;
  EXPECT_EQ(gw.process().stop(SIGTERM), 0);
}

// Issue 8 item 5: a fin that registers before any orchestrator client is there is not
// "delivered" to no one: the register is a dead letter (no receiver), and when an orchestrator
// subscribes to `soarca` it hears the register, and its ack reaches the fin.
TEST(DatapathE2E, RegisterBeforeAnyOrchestratorIsReplayedWhenOneSubscribes) {
  GatewayProcess gw("fin-first", R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: tcp, role: fins, listen: "127.0.0.1:0" }
)");
  ASSERT_TRUE(gw.start({"orchestrator", "fins"})) << gw.log();
  FrameClient fin(gw.port("fins"));
  ASSERT_TRUE(fin.publish("soarca", kRegA));
  ASSERT_TRUE(waitFor([&] {
    return httpGet(gw.adminPort(), "/v1/dead-letters").body.find("\"reason\":\"no_receiver\"") != std::string::npos;
  })) << httpGet(gw.adminPort(), "/v1/dead-letters").body;
  FrameClient orch(gw.port("orchestrator"));
  ASSERT_TRUE(orch.subscribe("soarca"));
  auto reg = orch.recv(5s);
  ASSERT_TRUE(reg);
  EXPECT_EQ(reg->topic, "soarca");
  EXPECT_EQ(reg->payload, kRegA);
  ASSERT_TRUE(orch.subscribe(kFinA));
  ASSERT_TRUE(orch.barrier());
  ASSERT_TRUE(orch.publish(kFinA, fingate::fin::makeAck(kRegId)));
  auto ack = fin.recv(5s);
  ASSERT_TRUE(ack) << "the fin hears SOARCA's ack of its (replayed) register";
  EXPECT_EQ(ack->topic, kFinA);
  EXPECT_TRUE(waitFor([&] { return httpGet(gw.adminPort(), "/v1/fins").body.find("\"acked\":true") != std::string::npos; }));
}

// A dead letter is kept whole and can be re-published from the admin API: a command for a fin
// that was not connected is dead-lettered (and nacked); after the fin registers, a retry
// routes it to the fin. DELETE drops them; a cross-site POST is refused.
TEST(DatapathE2E, DeadLetterRetryAndDrop) {
  GatewayProcess gw("dl-retry", R"(endpoints:
  orchestrator: { plugin: tcp, role: orchestrator, listen: "127.0.0.1:0" }
  fins: { plugin: tcp, role: fins, listen: "127.0.0.1:0" }
)");
  ASSERT_TRUE(gw.start({"orchestrator", "fins"})) << gw.log();
  FrameClient orch(gw.port("orchestrator"));
  ASSERT_TRUE(orch.subscribe("soarca"));
  ASSERT_TRUE(orch.barrier());
  ASSERT_TRUE(orch.publish(kCapA, kCmd));  // nobody has this capability yet
  auto nack = orch.recv(5s);
  ASSERT_TRUE(nack && nack->payload.find("\"nack\"") != std::string::npos) << "the unroutable command is nacked";
  auto dl = httpGet(gw.adminPort(), "/v1/dead-letters").body;
  ASSERT_NE(dl.find("\"reason\":\"unroutable\""), std::string::npos) << dl;
  size_t at = dl.find("\"id\":");
  ASSERT_NE(at, std::string::npos);
  std::string id = dl.substr(at + 5, dl.find(',', at) - at - 5);
  // The payload is shown with its secrets redacted; the stored one is whole (the retry below
  // delivers the original bytes).
  ASSERT_NE(kCmd.find("\"password\":\"password\""), std::string::npos);
  EXPECT_EQ(dl.find("\"password\":\"password\""), std::string::npos) << dl;
  FrameClient fin(gw.port("fins"));
  registerFin(orch, fin, kRegA, kFinA, kCapA, kRegId);
  if (HasFatalFailure()) return;
  EXPECT_EQ(httpRequest(gw.adminPort(), "POST", "/v1/dead-letters/" + id + "/retry", "Origin: http://evil.example\r\n").status, 403);
  EXPECT_EQ(httpRequest(gw.adminPort(), "POST", "/v1/dead-letters/" + id + "/retry").status, 202);
  auto got = fin.recv(5s);
  ASSERT_TRUE(got);
  EXPECT_EQ(got->topic, kCapA);
  EXPECT_EQ(got->payload, kCmd);  // byte for byte, credentials included
  EXPECT_EQ(httpRequest(gw.adminPort(), "POST", "/v1/dead-letters/" + id + "/retry").status, 404) << "retried once";
  ASSERT_TRUE(orch.publish("nobody-here", "x"));
  ASSERT_TRUE(waitFor([&] { return httpGet(gw.adminPort(), "/v1/dead-letters").body.find("nobody-here") != std::string::npos; }));
  auto del = httpRequest(gw.adminPort(), "DELETE", "/v1/dead-letters");
  EXPECT_EQ(del.status, 200);
  EXPECT_EQ(httpGet(gw.adminPort(), "/v1/dead-letters").body.find("nobody-here"), std::string::npos);
}

}  // namespace
