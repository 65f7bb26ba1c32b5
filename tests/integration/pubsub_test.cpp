// `fingate pub` / `fingate sub` as child processes of the real build/bin/fingate, over real
// transports: a real mosquitto (MQTT), real TCP sockets between two fingate processes (one
// listens, the other connects), and the loopback plugin for delivery outcomes no broker gives on
// demand (FAILED, NO_RECEIVER, no report at all, a refused subscription).
#include <gtest/gtest.h>
#include <signal.h>

#include <fstream>

#include "mosquitto.hpp"
#include "test_support.hpp"
#ifdef FINGATE_PUBSUB_ZMQ
#include "../plugins/zmq/zmq_test_client.hpp"
#endif
#ifdef FINGATE_PUBSUB_KAFKA
#include "kafka_mock.hpp"
#endif

using namespace fingate::test;

namespace {

// One fingate run: stdout to its own file (Process's log), stderr to another, stdin from a file
// (or /dev/null).
class Cli {
 public:
  Cli(const std::string& name, const std::vector<std::string>& args, const std::string& stdin_text = "",
      const std::map<std::string, std::string>& env = {}) {
    dir_ = tempDir("pubsub-" + name);
    err_ = dir_ + "/stderr";
    std::string in = "/dev/null";
    if (!stdin_text.empty()) {
      in = dir_ + "/stdin";
      writeFile(in, stdin_text);
    }
    std::vector<std::string> argv{"/bin/sh", "-c", "exec \"$0\" \"$@\" 2>\"$FG_ERR\" <\"$FG_IN\"", FINGATE_BIN};
    argv.insert(argv.end(), args.begin(), args.end());
    auto e = env;
    e["FG_ERR"] = err_;
    e["FG_IN"] = in;
    proc_ = std::make_unique<Process>(argv, dir_ + "/stdout", e);
  }
  // Exit code (waits, bounded); -1 when it did not exit in time.
  int wait(std::chrono::milliseconds t = 20s) { return proc_->wait(t); }
  int stop(int sig = SIGTERM) { return proc_->stop(sig); }
  std::string out() const { return proc_->log(); }
  std::string err() const { return readFile(err_); }
  // Waits until stderr holds needle; returns that line.
  std::optional<std::string> waitErr(const std::string& needle, std::chrono::milliseconds t = 15s) {
    std::optional<std::string> line;
    waitFor(
        [&] {
          const std::string e = err();
          const auto at = e.find(needle);
          if (at == std::string::npos) return false;
          const auto start = e.rfind('\n', at);
          const auto end = e.find('\n', at);
          line = e.substr(
              start == std::string::npos ? 0 : start + 1,
              end == std::string::npos ? std::string::npos : end - (start == std::string::npos ? 0 : start + 1));
          return true;
        },
        t);
    return line;
  }
  // A listen-mode endpoint on port 0: the port it reported (needs -d).
  int listenPort() {
    auto line = waitErr("listening on");
    return line ? portFromLine(*line) : 0;
  }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_, err_;
  std::unique_ptr<Process> proc_;
};

// Runs to completion; returns {exit code, stdout, stderr}.
struct Result {
  int rc;
  std::string out, err;
};
Result run(const std::string& name, const std::vector<std::string>& args, const std::string& stdin_text = "",
           const std::map<std::string, std::string>& env = {}) {
  Cli c(name, args, stdin_text, env);
  int rc = c.wait();
  return {rc, c.out(), c.err()};
}

std::string pluginsDir() { return FINGATE_PLUGINS_DIR; }

}  // namespace

// ---- round trips ---------------------------------------------------------------------------

// MQTT: sub from a config file's endpoint (url from ${ENV}), pub inline; --count, -f and -v; the
// sub acks every message it printed (the mqtt plugin counts the outcomes it was given).
TEST(PubSub, MqttRoundTripConfigEndpointCountAndFile) {
  Mosquitto broker;
  const std::string dir = tempDir("pubsub-mqtt-config");
  writeFile(dir + "/gw.yaml",
            "plugins_dir: " + pluginsDir() +
                "\nendpoints:\n  soarca: { plugin: mqtt, role: orchestrator, url: \"${PUBSUB_URL}\" }\n");
  Cli sub("mqtt-sub", {"sub", "-c", dir + "/gw.yaml", "--endpoint", "soarca", "-t", "pubsub/#", "-v", "-C", "3", "-d"},
          "", {{"PUBSUB_URL", broker.url()}});
  ASSERT_TRUE(sub.waitErr("subscribed to 'pubsub/#'")) << sub.err();

  auto p1 = run("mqtt-pub1", {"pub", "--plugin", "mqtt", "--set", "url=" + broker.url(), "-t", "pubsub/a", "-m",
                              "hello world", "--count", "2", "--rate", "100"});
  EXPECT_EQ(p1.rc, 0) << p1.err;
  writeFile(dir + "/msg.json", "{\"type\":\"ack\",\n \"message_id\":\"m1\"}");
  auto p2 = run("mqtt-pub2",
                {"pub", "--plugin", "mqtt", "--set", "url=" + broker.url(), "-t", "pubsub/b", "-f", dir + "/msg.json"});
  EXPECT_EQ(p2.rc, 0) << p2.err;

  ASSERT_EQ(sub.wait(), 0) << sub.err();
  EXPECT_EQ(sub.out(),
            "pubsub/a hello world\npubsub/a hello world\npubsub/b {\"type\":\"ack\",\n \"message_id\":\"m1\"}\n");
  // Every printed message was acked DELIVERED (the plugin's own count at stop).
  EXPECT_NE(sub.err().find("outcomes: delivered 3,"), std::string::npos) << sub.err();
}

// MQTT: -l (one message per line, blank lines skipped) and JSON lines, with a payload that is
// not UTF-8 (payload_base64).
TEST(PubSub, MqttStdinLinesAndJson) {
  Mosquitto broker;
  Cli sub("mqtt-json-sub", {"sub", "--plugin", "mqtt", "--set", "url=" + broker.url(), "-t", "lines", "-t", "bin",
                            "--json", "-C", "4", "-d"});
  ASSERT_TRUE(sub.waitErr("subscribed to 'bin'")) << sub.err();

  auto p1 = run("mqtt-json-pub1", {"pub", "--plugin", "mqtt", "--set", "url=" + broker.url(), "-t", "lines", "-l"},
                "first line\n\n\"quoted\" \\ line\nlast without newline");
  EXPECT_EQ(p1.rc, 0) << p1.err;
  const std::string dir = tempDir("pubsub-mqtt-json");
  writeFile(dir + "/bin", std::string("\xff\x00\x01", 3));
  auto p2 = run("mqtt-json-pub2",
                {"pub", "--plugin", "mqtt", "--set", "url=" + broker.url(), "-t", "bin", "-f", dir + "/bin"});
  EXPECT_EQ(p2.rc, 0) << p2.err;

  ASSERT_EQ(sub.wait(), 0) << sub.err();
  EXPECT_EQ(sub.out(),
            "{\"topic\":\"lines\",\"payload\":\"first line\"}\n"
            "{\"topic\":\"lines\",\"payload\":\"\\\"quoted\\\" \\\\ line\"}\n"
            "{\"topic\":\"lines\",\"payload\":\"last without newline\"}\n"
            "{\"topic\":\"bin\",\"payload_base64\":\"/wAB\"}\n");
}

// TCP: sub listens (port 0, reported with -d), pub connects and sends stdin lines.
TEST(PubSub, TcpSubListensPubConnects) {
  Cli sub("tcp-sub-listen", {"sub", "--plugin", "tcp", "--set", "listen=127.0.0.1:0", "-t", "fin/+", "-C", "2", "-d"});
  const int port = sub.listenPort();
  ASSERT_GT(port, 0) << sub.err();
  auto p = run("tcp-pub-connect",
               {"pub", "--plugin", "tcp", "--set", "connect=127.0.0.1:" + std::to_string(port), "-t", "fin/one", "-l"},
               "alpha\nbeta\n");
  EXPECT_EQ(p.rc, 0) << p.err;
  ASSERT_EQ(sub.wait(), 0) << sub.err();
  EXPECT_EQ(sub.out(), "alpha\nbeta\n");
}

// TCP: pub listens and waits for a subscribed client (NO_RECEIVER is retried until --timeout);
// sub connects, subscribes, gets it.
TEST(PubSub, TcpPubListensAndWaitsForSubscriber) {
  Cli pub("tcp-pub-listen", {"pub", "--plugin", "tcp", "--set", "listen=127.0.0.1:0", "-t", "fin/two", "-m",
                             "for the client", "--count", "2", "--timeout", "30", "-d"});
  const int port = pub.listenPort();
  ASSERT_GT(port, 0) << pub.err();
  auto s = run("tcp-sub-connect", {"sub", "--plugin", "tcp", "--set", "connect=127.0.0.1:" + std::to_string(port), "-t",
                                   "fin/#", "-v", "-C", "2", "--timeout", "20"});
  EXPECT_EQ(s.rc, 0) << s.err;
  EXPECT_EQ(s.out, "fin/two for the client\nfin/two for the client\n");
  EXPECT_EQ(pub.wait(), 0) << pub.err();
}

#ifdef FINGATE_PUBSUB_ZMQ
// ZeroMQ: both plugin modes are the gateway side of the protocol (a ROUTER), so the other end
// is a real DEALER client speaking the wire conventions. sub binds; the client publishes.
TEST(PubSub, ZmqSubBindsClientPublishes) {
  Cli sub("zmq-sub", {"sub", "--plugin", "zmq", "--set", "bind=tcp://127.0.0.1:0", "-t", "z/+", "-C", "2", "-v", "-d"});
  const int port = sub.listenPort();
  ASSERT_GT(port, 0) << sub.err();
  ZmqClient c("tcp://127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(c.publish("z/1", "from a dealer"));
  ASSERT_TRUE(c.publish("other", "not printed"));
  ASSERT_TRUE(c.publish("z/2", "second"));
  ASSERT_EQ(sub.wait(), 0) << sub.err();
  EXPECT_EQ(sub.out(), "z/1 from a dealer\nz/2 second\n");
}

// pub binds and waits for a client subscribed to the topic (NO_RECEIVER until then).
TEST(PubSub, ZmqPubBindsAndWaitsForSubscriber) {
  Cli pub("zmq-pub", {"pub", "--plugin", "zmq", "--set", "bind=tcp://127.0.0.1:0", "-t", "z/1", "-m", "to the dealer",
                      "--timeout", "30", "-d"});
  const int port = pub.listenPort();
  ASSERT_GT(port, 0) << pub.err();
  ZmqClient c("tcp://127.0.0.1:" + std::to_string(port));
  ASSERT_TRUE(c.subscribe("z/#"));
  std::optional<ZmqClient::Msg> m;
  for (int i = 0; i < 100 && !(m && m->verb == "MSG"); ++i) m = c.recv(200ms);
  ASSERT_TRUE(m && m->verb == "MSG") << pub.err();
  EXPECT_EQ(m->topic, "z/1");
  EXPECT_EQ(m->payload, "to the dealer");
  EXPECT_EQ(pub.wait(), 0) << pub.err();
}
#endif

#ifdef FINGATE_PUBSUB_KAFKA
// Kafka (librdkafka's mock cluster): pub confirmed by delivery reports, then sub reads the
// topic from the earliest offset in its own consumer group and acks (commits) what it printed.
TEST(PubSub, KafkaRoundTrip) {
  KafkaMock cluster;
  auto p = run("kafka-pub", {"pub", "--plugin", "kafka", "--set", "brokers=" + cluster.bootstrap(), "-t", "kt", "-m",
                             "kafka hello", "--count", "2", "--timeout", "30"});
  ASSERT_EQ(p.rc, 0) << p.err;
  auto s =
      run("kafka-sub", {"sub", "--plugin", "kafka", "--set", "brokers=" + cluster.bootstrap(), "--set", "group=pubsub",
                        "-t", "kt", "-C", "2", "-v", "--timeout", "30", "--connect-timeout", "30"});
  EXPECT_EQ(s.rc, 0) << s.err;
  EXPECT_EQ(s.out, "kt kafka hello\nkt kafka hello\n");
}
#endif

#ifdef FINGATE_PUBSUB_HTTP
// HTTP: pub on a listening endpoint waits for a long poll on the topic (a real HTTP client).
TEST(PubSub, HttpPubWaitsForPoller) {
  Cli pub("http-pub", {"pub", "--plugin", "http", "--set", "listen=127.0.0.1:0", "-t", "ht", "-m", "{\"type\":\"ack\"}",
                       "--timeout", "30", "-d"});
  const int port = pub.listenPort();
  ASSERT_GT(port, 0) << pub.err();
  auto r = httpGet(port, "/v1/poll/ht?wait=10", 15s);
  EXPECT_EQ(r.status, 200) << r.head;
  EXPECT_EQ(r.body, "{\"type\":\"ack\"}");
  EXPECT_EQ(pub.wait(), 0) << pub.err();
}
#endif

// ---- outcomes that are not a success -------------------------------------------------------

// A listening pub nobody subscribes to: "no receiver" after --timeout, exit 1.
TEST(PubSub, TcpPubWithoutSubscriberIsNoReceiver) {
  auto r = run("tcp-no-receiver",
               {"pub", "--plugin", "tcp", "--set", "listen=127.0.0.1:0", "-t", "nobody", "-m", "x", "--timeout", "1"});
  EXPECT_EQ(r.rc, 1) << r.err;
  EXPECT_NE(r.err.find("message 1 on 'nobody': no receiver"), std::string::npos) << r.err;
}

// Delivery reports on demand (loopback): FAILED -> 1, NO_RECEIVER -> 1, nothing -> 27.
TEST(PubSub, DeliveryOutcomes) {
  auto failed = run("loop-fail", {"pub", "--plugin", "loopback", "--set", "deliver=fail", "-t", "t", "-m", "x"});
  EXPECT_EQ(failed.rc, 1);
  EXPECT_NE(failed.err.find("delivery failed"), std::string::npos) << failed.err;

  auto nobody = run("loop-norecv", {"pub", "--plugin", "loopback", "--set", "deliver=no_receiver", "-t", "t", "-m", "x",
                                    "--timeout", "0.5"});
  EXPECT_EQ(nobody.rc, 1);
  EXPECT_NE(nobody.err.find("no receiver"), std::string::npos) << nobody.err;

  auto silent = run("loop-none",
                    {"pub", "--plugin", "loopback", "--set", "deliver=none", "-t", "t", "-m", "x", "--timeout", "0.5"});
  EXPECT_EQ(silent.rc, 27);
  EXPECT_NE(silent.err.find("no delivery confirmation within 0.5 s"), std::string::npos) << silent.err;

  auto ok =
      run("loop-ok", {"pub", "--plugin", "loopback", "--set", "deliver=ok", "-t", "t", "-m", "x", "--count", "3"});
  EXPECT_EQ(ok.rc, 0) << ok.err;
}

// A subscription the transport refuses is an error (FG_EVENT_SUBSCRIPTION with a status).
TEST(PubSub, RefusedSubscription) {
  auto r = run("loop-refuse", {"sub", "--plugin", "loopback", "--set", "subscribe_refuse=secret/#", "-t", "open", "-t",
                               "secret/x", "-C", "1"});
  EXPECT_EQ(r.rc, 1);
  EXPECT_NE(r.err.find("subscription to 'secret/x' refused: refused by loopback config"), std::string::npos) << r.err;
}

// ---- -C and --timeout ----------------------------------------------------------------------

TEST(PubSub, SubTimeoutBeforeCount) {
  Cli sub("timeout-sub",
          {"sub", "--plugin", "tcp", "--set", "listen=127.0.0.1:0", "-t", "t", "-C", "2", "--timeout", "3", "-d"});
  const int port = sub.listenPort();
  ASSERT_GT(port, 0) << sub.err();
  auto p = run("timeout-pub", {"pub", "--plugin", "tcp", "--set", "connect=127.0.0.1:" + std::to_string(port), "-t",
                               "t", "-m", "only one"});
  EXPECT_EQ(p.rc, 0) << p.err;
  EXPECT_EQ(sub.wait(), 27) << sub.err();
  EXPECT_EQ(sub.out(), "only one\n");
  EXPECT_NE(sub.err().find("timed out after 3 s with 1 of 2 message(s)"), std::string::npos) << sub.err();

  // Without -C the timeout always ends it (as mosquitto_sub -W).
  auto idle = run("timeout-idle", {"sub", "--plugin", "loopback", "-t", "t", "-W", "0.5"});
  EXPECT_EQ(idle.rc, 27);
  EXPECT_EQ(idle.out, "");
}

// Topics that are not this sub's (a session transport hands in every client publish) are not
// printed and do not count toward -C.
TEST(PubSub, SubCountsOnlyItsTopics) {
  Cli sub("count-sub", {"sub", "--plugin", "tcp", "--set", "listen=127.0.0.1:0", "-t", "mine", "-C", "1", "-v", "-d"});
  const int port = sub.listenPort();
  ASSERT_GT(port, 0) << sub.err();
  FrameClient c(port);
  ASSERT_TRUE(c.connected());
  ASSERT_TRUE(c.publish("other", "not printed"));
  ASSERT_TRUE(c.publish("mine", "printed"));
  ASSERT_TRUE(c.publish("mine", "after -C: not printed"));
  ASSERT_EQ(sub.wait(), 0) << sub.err();
  EXPECT_EQ(sub.out(), "mine printed\n");
}

TEST(PubSub, SigtermEndsSubCleanly) {
  Cli sub("sigterm-sub", {"sub", "--plugin", "tcp", "--set", "listen=127.0.0.1:0", "-t", "t", "-d"});
  ASSERT_GT(sub.listenPort(), 0) << sub.err();
  ASSERT_TRUE(sub.waitErr("subscribed to 't'"));
  EXPECT_EQ(sub.stop(SIGTERM), 0) << sub.err();
  EXPECT_NE(sub.err().find("endpoint stopped"), std::string::npos) << sub.err();
}

// ---- errors as clear as mosquitto_pub's ----------------------------------------------------

TEST(PubSub, UnknownPlugin) {
  auto r = run("unknown-plugin", {"pub", "--plugin", "nosuch", "-t", "t", "-m", "x"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("unknown plugin 'nosuch'"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("available: "), std::string::npos) << r.err;
  EXPECT_NE(r.err.find("tcp"), std::string::npos) << r.err;
}

TEST(PubSub, BadSetAndUnknownKey) {
  auto syntax = run("bad-set", {"sub", "--plugin", "tcp", "--set", "connect", "-t", "t"});
  EXPECT_EQ(syntax.rc, 2);
  EXPECT_NE(syntax.err.find("--set 'connect': expected key=value"), std::string::npos) << syntax.err;

  auto key = run("unknown-key", {"sub", "--plugin", "tcp", "--set", "conect=127.0.0.1:1", "-t", "t"});
  EXPECT_EQ(key.rc, 2);
  EXPECT_NE(key.err.find("--set conect: unknown key for plugin 'tcp' (accepted: listen, connect"), std::string::npos)
      << key.err;

  auto value = run("bad-value", {"pub", "--plugin", "tcp", "--set", "connect=nohost", "-t", "t", "-m", "x"});
  EXPECT_EQ(value.rc, 2);
  EXPECT_NE(value.err.find("connect: expected host:port, got 'nohost'"), std::string::npos) << value.err;
}

TEST(PubSub, BadUrl) {
  auto r = run("bad-url", {"pub", "--plugin", "mqtt", "--set", "url=http//127.0.0.1:1883", "-t", "t", "-m", "x"});
  EXPECT_EQ(r.rc, 2);
  EXPECT_NE(r.err.find("url: expected tcp://host:port"), std::string::npos) << r.err;
}

TEST(PubSub, RefusedConnection) {
  const int port = freePort();  // nothing listens there
  auto mqtt = run("refused-mqtt", {"pub", "--plugin", "mqtt", "--set", "url=tcp://127.0.0.1:" + std::to_string(port),
                                   "-t", "t", "-m", "x"});
  EXPECT_EQ(mqtt.rc, 1);
  EXPECT_NE(mqtt.err.find("cannot connect (plugin 'mqtt'): connect to tcp://127.0.0.1:" + std::to_string(port)),
            std::string::npos)
      << mqtt.err;

  auto tcp =
      run("refused-tcp", {"sub", "--plugin", "tcp", "--set", "connect=127.0.0.1:" + std::to_string(port), "-t", "t"});
  EXPECT_EQ(tcp.rc, 1);
  EXPECT_NE(tcp.err.find("Connection refused"), std::string::npos) << tcp.err;
}

TEST(PubSub, UsageErrors) {
  auto no_topic = run("no-topic", {"pub", "--plugin", "loopback", "-m", "x"});
  EXPECT_EQ(no_topic.rc, 2);
  EXPECT_NE(no_topic.err.find("no topic: give -t TOPIC"), std::string::npos) << no_topic.err;

  auto no_message = run("no-message", {"pub", "--plugin", "loopback", "-t", "t"});
  EXPECT_EQ(no_message.rc, 2);
  EXPECT_NE(no_message.err.find("no message"), std::string::npos) << no_message.err;

  auto wildcard = run("wildcard-pub", {"pub", "--plugin", "loopback", "-t", "a/#", "-m", "x"});
  EXPECT_EQ(wildcard.rc, 2);

  auto no_endpoint = run("no-endpoint", {"sub", "-t", "t"});
  EXPECT_EQ(no_endpoint.rc, 2);
  EXPECT_NE(no_endpoint.err.find("give -c FILE --endpoint NAME, or --plugin NAME"), std::string::npos)
      << no_endpoint.err;

  const std::string dir = tempDir("pubsub-usage");
  writeFile(dir + "/gw.yaml", "endpoints:\n  edge: { plugin: tcp, role: fins, listen: \"127.0.0.1:0\" }\n");
  auto wrong_endpoint = run("wrong-endpoint", {"sub", "-c", dir + "/gw.yaml", "--endpoint", "nope", "-t", "t"});
  EXPECT_EQ(wrong_endpoint.rc, 2);
  EXPECT_NE(wrong_endpoint.err.find("no endpoint 'nope' in " + dir + "/gw.yaml (endpoints: edge)"), std::string::npos)
      << wrong_endpoint.err;
}
