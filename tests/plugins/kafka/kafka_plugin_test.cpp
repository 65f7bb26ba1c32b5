// The Kafka plugin against librdkafka's mock cluster (its own process per test) and plain
// librdkafka clients: mapping (topic, key, headers), own-origin skip, single_topic, offsets
// committed only on the host's ack, RETRY, the shared-registry contract, config errors.
#include <gtest/gtest.h>

#include <iostream>
#include <set>

#include "kafka_client.hpp"
#include "kafka_mock.hpp"
#include "test_support.hpp"

namespace fingate::test {
namespace {

using Cfg = std::vector<std::pair<std::string, std::string>>;

fg_str S(const std::string& s) { return fg_str{s.data(), s.size()}; }

// RecordingHost plus one timeline of messages and subscription events, in arrival order.
class Host : public RecordingHost {
 public:
  ~Host() override {
    if (::testing::Test::HasFailure() || getenv("KAFKA_TEST_LOGS"))
      for (auto& l : logs()) std::cerr << "  plugin log: " << l << "\n";
  }
  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) override {
    fg_status st = RecordingHost::onMessage(sub_id, msg, token);
    if (st == FG_OK) {
      std::lock_guard lk(mu_);
      timeline_.push_back("msg " + std::string(msg.topic.data, msg.topic.len));
    }
    return st;
  }
  void onEvent(const fg_event& ev) override {
    {
      std::lock_guard lk(mu_);
      if (ev.kind == FG_EVENT_SUBSCRIPTION)
        timeline_.push_back("sub " + std::to_string(ev.sub_id) + " " + std::to_string(ev.status));
    }
    RecordingHost::onEvent(ev);
  }
  std::vector<std::string> timeline() {
    std::lock_guard lk(mu_);
    return timeline_;
  }
  bool confirmed(uint64_t sub_id, std::chrono::milliseconds t = 30s) {
    return waitEvent(
        [&](const Event& e) { return e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == sub_id && e.status == FG_OK; }, t);
  }

 private:
  std::mutex mu_;
  std::vector<std::string> timeline_;
};

// Fast group timings for the mock cluster: its rejoin waits session.timeout.ms - 1 s, and a
// session timeout under its 3 s first-join delay never lets a member join.
Cfg cfg(const KafkaMock& k, const std::string& group, Cfg extra = {}) {
  Cfg c = {{"brokers", k.bootstrap()},
           {"group", group},
           {"rdkafka.session.timeout.ms", "4000"},
           {"rdkafka.heartbeat.interval.ms", "500"}};
  for (auto& e : extra) c.push_back(e);
  if (const char* d = getenv("KAFKA_DEBUG")) c.emplace_back("rdkafka.debug", d);
  return c;
}

fg_message msgOf(const std::string& topic, const std::string& payload) {
  return fg_message{S(topic), S(payload), nullptr, 0, 0, 0};
}

bool delivered(Host& h, uint64_t id) {
  return waitFor(
      [&] {
        auto d = h.deliveries();
        return d.count(id) && d[id] == FG_DELIVERY_OK;
      },
      20s);
}

TEST(KafkaPlugin, RefusesUnknownKeysAndNamesBadRdkafkaProperties) {
  auto lib = loadBuiltPlugin("kafka");
  Host h;
  try {
    PluginInstance bad(lib, h, {{"brokers", "127.0.0.1:1"}, {"topic_prefix", "x"}});
    FAIL() << "an unknown key was accepted";
  } catch (const PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("topic_prefix: unknown key"), std::string::npos) << e.what();
  }
  try {
    PluginInstance bad(lib, h, {{"brokers", "127.0.0.1:1"}, {"rdkafka.no.such.property", "1"}});
    FAIL() << "a bad rdkafka property was accepted";
  } catch (const PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("rdkafka.no.such.property:"), std::string::npos) << e.what();
  }
  try {
    PluginInstance bad(lib, h, {{"brokers", "127.0.0.1:1"}, {"rdkafka.enable.auto.commit", "true"}});
    FAIL() << "auto commit was accepted";
  } catch (const PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("rdkafka.enable.auto.commit: is set by the gateway"), std::string::npos)
        << e.what();
  }
  try {
    PluginInstance bad(lib, h, {{"brokers", "127.0.0.1:1"}, {"topic_template", "fin/{topic}"}});
    FAIL() << "a template with '/' was accepted";
  } catch (const PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("topic_template:"), std::string::npos) << e.what();
  }
  try {
    PluginInstance bad(lib, h, {{"group", "g"}});
    FAIL() << "no brokers was accepted";
  } catch (const PluginError& e) {
    EXPECT_NE(std::string(e.what()).find("brokers: is required"), std::string::npos) << e.what();
  }
  PluginInstance ok(lib, h,
                    {{"brokers", "127.0.0.1:1"}, {"rdkafka.sasl.mechanism", "PLAIN"}, {"rdkafka.linger.ms", "5"}});
}

// Publish/subscribe round trip between two instances of different groups; the record as a
// plain consumer sees it; the offset is committed only after the host's ack; RETRY keeps it.
TEST(KafkaPlugin, RoundTripKeyHeadersAndCommitOnAck) {
  KafkaMock kafka;
  auto lib = loadBuiltPlugin("kafka");
  Host ha, hb;
  PluginInstance a(lib, ha, cfg(kafka, "ga", {{"instance_id", "inst-a"}}));
  PluginInstance b(lib, hb, cfg(kafka, "gb", {{"instance_id", "inst-b"}}));
  ASSERT_EQ(a.subscribe("fin-1", 7), FG_OK);
  ASSERT_EQ(a.start(), FG_OK);
  ASSERT_EQ(b.start(), FG_OK);
  ASSERT_TRUE(ha.waitState(FG_STATE_UP, 20s));
  ASSERT_TRUE(ha.confirmed(7)) << "subscription never confirmed";
  ha.retry_budget = 5;  // the first offers are answered RETRY: the record must still come
  ASSERT_EQ(b.publish(msgOf("fin-1", "{\"type\":\"command\"}"), 11), FG_OK);
  ASSERT_EQ(b.publish(msgOf("a/b c", "odd"), 12), FG_OK);
  ASSERT_TRUE(delivered(hb, 11));
  ASSERT_TRUE(delivered(hb, 12));
  auto m = ha.next(20s);
  ASSERT_TRUE(m);
  EXPECT_EQ(m->sub_id, 7u);
  EXPECT_EQ(m->topic, "fin-1");
  EXPECT_EQ(m->payload, "{\"type\":\"command\"}");
  EXPECT_NE(m->token, 0u);
  EXPECT_EQ(ha.retry_budget.load(), 0);

  // The record itself: Kafka topic from the template, key and headers.
  KafkaConsumer plain(kafka.bootstrap(), {"fin.fin-1", "fin.a_b_c"});
  std::map<std::string, KafkaRecord> recs;
  for (int i = 0; i < 2; ++i) {
    auto r = plain.next(20s);
    ASSERT_TRUE(r) << "got " << recs.size() << " record(s): " << (recs.empty() ? "" : recs.begin()->first);
    recs[r->topic] = *r;
  }
  ASSERT_TRUE(recs.count("fin.fin-1"));
  EXPECT_EQ(recs["fin.fin-1"].key, "fin-1");
  EXPECT_EQ(recs["fin.fin-1"].header("fin-topic"), "fin-1");
  EXPECT_EQ(recs["fin.fin-1"].header("fingate-origin"), "inst-b");
  ASSERT_TRUE(recs.count("fin.a_b_c")) << "characters outside [A-Za-z0-9._-] become _";
  EXPECT_EQ(recs["fin.a_b_c"].key, "a/b c");
  EXPECT_EQ(recs["fin.a_b_c"].header("fin-topic"), "a/b c");

  // Not acked: nothing committed. Acked: committed past it.
  int32_t part = recs["fin.fin-1"].partition;
  int64_t off = recs["fin.fin-1"].offset;
  EXPECT_LT(kafkaCommitted(kafka.bootstrap(), "ga", "fin.fin-1", part), off + 1);
  a.ack(m->token, FG_OUTCOME_DELIVERED);
  int64_t seen = -1;
  EXPECT_TRUE(
      waitFor([&] { return (seen = kafkaCommitted(kafka.bootstrap(), "ga", "fin.fin-1", part)) == off + 1; }, 20s))
      << "committed " << seen << ", record at " << part << "/" << off;
  a.stop(5000);
  b.stop(5000);
}

// Offsets move only over a contiguous prefix of final records; own records are skipped exactly.
TEST(KafkaPlugin, OwnRecordsSkippedAndCommitsContiguous) {
  KafkaMock kafka({.brokers = 1, .partitions = 1, .topics = {"fin.soarca"}});  // exists: tolerated
  auto lib = loadBuiltPlugin("kafka");
  Host h;
  PluginInstance a(lib, h, cfg(kafka, "g1", {{"instance_id", "me"}, {"topic_partitions", "1"}}));
  ASSERT_EQ(a.subscribe("soarca", 1), FG_OK);
  ASSERT_EQ(a.start(), FG_OK);
  ASSERT_TRUE(h.confirmed(1));
  ASSERT_EQ(a.publish(msgOf("soarca", "mine"), 1), FG_OK);
  ASSERT_TRUE(delivered(h, 1));
  KafkaProducer p(kafka.bootstrap());
  for (int i = 0; i < 3; ++i)
    ASSERT_TRUE(p.send("fin.soarca", "soarca", "theirs-" + std::to_string(i),
                       {{"fin-topic", "soarca"}, {"fingate-origin", "other"}}));
  ASSERT_TRUE(p.flush());
  std::vector<RecordingHost::Msg> got;
  for (int i = 0; i < 3; ++i) {
    auto m = h.next(20s);
    ASSERT_TRUE(m);
    got.push_back(*m);
  }
  // The first record handed in is the first foreign one: our own (offset 0) was skipped.
  EXPECT_EQ(got[0].payload, "theirs-0");
  EXPECT_EQ(got[2].payload, "theirs-2");
  // Ack offsets 2 and 3 (not 1): the commit may cover only offset 0 (our own, final at once).
  a.ack(got[1].token, FG_OUTCOME_DELIVERED);
  a.ack(got[2].token, FG_OUTCOME_DEAD_LETTERED);
  EXPECT_TRUE(waitFor([&] { return kafkaCommitted(kafka.bootstrap(), "g1", "fin.soarca", 0) == 1; }, 20s));
  a.ack(got[0].token, FG_OUTCOME_REFUSED);
  EXPECT_TRUE(waitFor([&] { return kafkaCommitted(kafka.bootstrap(), "g1", "fin.soarca", 0) == 4; }, 20s));
  EXPECT_FALSE(h.next(0ms)) << "own record handed in";
  a.stop(5000);
}

// single_topic: every fin topic on one Kafka topic, keyed; the consumer sorts by key.
TEST(KafkaPlugin, SingleTopicKeyedAndFiltered) {
  KafkaMock kafka({.brokers = 1, .partitions = 3, .topics = {"fin-all"}});
  auto lib = loadBuiltPlugin("kafka");
  Host h;
  PluginInstance a(lib, h, cfg(kafka, "g1", {{"single_topic", "fin-all"}}));
  ASSERT_EQ(a.subscribe("fa", 3), FG_OK);
  ASSERT_EQ(a.subscribe("caps/+", 4), FG_OK);
  ASSERT_EQ(a.start(), FG_OK);
  ASSERT_TRUE(h.confirmed(3));
  ASSERT_TRUE(h.confirmed(4));
  ASSERT_EQ(a.publish(msgOf("fb", "own"), 5), FG_OK);
  ASSERT_TRUE(delivered(h, 5));
  KafkaProducer p(kafka.bootstrap());
  ASSERT_TRUE(p.send("fin-all", "fa", "to-fa", {{"fin-topic", "fa"}}));
  ASSERT_TRUE(p.send("fin-all", "caps/x", "to-caps", {{"fin-topic", "caps/x"}}));
  ASSERT_TRUE(p.send("fin-all", "nobody", "to-nobody", {{"fin-topic", "nobody"}}));
  ASSERT_TRUE(p.flush());
  std::map<std::string, RecordingHost::Msg> got;
  for (int i = 0; i < 3; ++i) {
    auto m = h.next(20s);
    ASSERT_TRUE(m);
    got[m->topic] = *m;
    a.ack(m->token, FG_OUTCOME_DELIVERED);
  }
  EXPECT_EQ(got["fa"].sub_id, 3u);
  EXPECT_EQ(got["fa"].payload, "to-fa");
  EXPECT_EQ(got["caps/x"].sub_id, 4u);
  // A fin topic nobody subscribed is handed in unsolicited (sub 0): the gateway dead-letters it.
  EXPECT_EQ(got["nobody"].sub_id, 0u);
  EXPECT_FALSE(got.count("fb")) << "own record handed in";
  KafkaConsumer plain(kafka.bootstrap(), {"fin-all"});
  bool seen = false;
  for (int i = 0; i < 4 && !seen; ++i) {
    auto r = plain.next(20s);
    ASSERT_TRUE(r);
    if (r->value == "own") {
      seen = true;
      EXPECT_EQ(r->key, "fb");
      EXPECT_EQ(r->header("fin-topic"), "fb");
    }
  }
  EXPECT_TRUE(seen);
  a.stop(5000);
}

// The shared-registry contract: publish/tombstone to registry_topic; a subscriber of
// $fingate/bindings/# gets every record of the others, then the confirmation; without
// registry_topic the subscription is refused.
TEST(KafkaPlugin, RegistryTopicContract) {
  // The mock serves no CreateTopics (and would auto-create 4 partitions): one partition, as the
  // plugin asks a real broker for (with cleanup.policy=compact), keeps this test's order total.
  KafkaMock kafka({.brokers = 1, .partitions = 1, .topics = {"fingate.bindings"}});
  auto lib = loadBuiltPlugin("kafka");
  Host h1;
  PluginInstance r1(lib, h1, cfg(kafka, "g", {{"instance_id", "r1"}, {"registry_topic", "fingate.bindings"}}));
  ASSERT_EQ(r1.start(), FG_OK);
  ASSERT_TRUE(h1.waitState(FG_STATE_UP, 20s));
  ASSERT_EQ(r1.publish(msgOf("$fingate/bindings/fin-a", "{\"a\":1}"), 1), FG_OK);
  ASSERT_EQ(r1.publish(msgOf("$fingate/bindings/fin-b", "{\"b\":1}"), 2), FG_OK);
  ASSERT_EQ(r1.publish(msgOf("$fingate/bindings/fin-a", ""), 3), FG_OK);  // tombstone
  ASSERT_EQ(r1.publish(msgOf("$fingate/other", "x"), 4), FG_ERR_INVALID_ARG);
  for (uint64_t id : {1, 2, 3}) ASSERT_TRUE(delivered(h1, id));

  KafkaConsumer plain(kafka.bootstrap(), {"fingate.bindings"});
  std::vector<KafkaRecord> recs;
  for (int i = 0; i < 3; ++i) {
    auto r = plain.next(20s);
    ASSERT_TRUE(r);
    recs.push_back(*r);
  }
  EXPECT_EQ(recs[0].key, "fin-a");
  EXPECT_EQ(recs[0].value, "{\"a\":1}");
  EXPECT_EQ(recs[0].header("fingate-origin"), "r1");
  EXPECT_EQ(recs[0].header("fin-topic"), "$fingate/bindings/fin-a");
  EXPECT_EQ(recs[2].key, "fin-a");
  EXPECT_FALSE(recs[2].value.has_value()) << "an empty payload is a tombstone (NULL value)";

  // Another instance rebuilds the registry, then confirms.
  Host h2;
  PluginInstance r2(lib, h2, cfg(kafka, "g", {{"instance_id", "r2"}, {"registry_topic", "fingate.bindings"}}));
  ASSERT_EQ(r2.subscribe("$fingate/bindings/#", 9), FG_OK);
  ASSERT_EQ(r2.start(), FG_OK);
  ASSERT_TRUE(h2.confirmed(9));
  auto tl = h2.timeline();
  ASSERT_EQ(tl.size(), 4u);
  EXPECT_EQ(tl[0], "msg $fingate/bindings/fin-a");
  EXPECT_EQ(tl[1], "msg $fingate/bindings/fin-b");
  EXPECT_EQ(tl[2], "msg $fingate/bindings/fin-a");
  EXPECT_EQ(tl[3], "sub 9 0");
  auto m1 = h2.next(1s), m2 = h2.next(1s), m3 = h2.next(1s);
  ASSERT_TRUE(m1 && m2 && m3);
  EXPECT_EQ(m1->payload, "{\"a\":1}");
  EXPECT_EQ(m2->payload, "{\"b\":1}");
  EXPECT_EQ(m3->payload, "");
  // Live: r2 learns r1's next binding; r1 (subscribed too) never gets its own.
  ASSERT_EQ(r1.subscribe("$fingate/bindings/#", 5), FG_OK);
  ASSERT_TRUE(h1.confirmed(5));
  ASSERT_EQ(r1.publish(msgOf("$fingate/bindings/fin-c", "{\"c\":1}"), 6), FG_OK);
  auto m4 = h2.next(20s);
  ASSERT_TRUE(m4);
  EXPECT_EQ(m4->topic, "$fingate/bindings/fin-c");
  ASSERT_EQ(r2.publish(msgOf("$fingate/bindings/fin-d", "{\"d\":1}"), 7), FG_OK);
  auto m5 = h1.next(20s);
  ASSERT_TRUE(m5);
  EXPECT_EQ(m5->topic, "$fingate/bindings/fin-d") << "r1 got its own record back";

  // Without registry_topic: refused.
  Host h3;
  PluginInstance r3(lib, h3, cfg(kafka, "g"));
  ASSERT_EQ(r3.subscribe("$fingate/bindings/#", 2), FG_OK);
  EXPECT_TRUE(h3.waitEvent(
      [](const RecordingHost::Event& e) {
        return e.kind == FG_EVENT_SUBSCRIPTION && e.sub_id == 2 && e.status != FG_OK;
      },
      5s));
  r1.stop(5000);
  r2.stop(5000);
}

}  // namespace
}  // namespace fingate::test
