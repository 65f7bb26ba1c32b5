// Config parsing: the typed result of a full file, and the exact file:line:col of every kind of
// error. YAML is written inline so the positions in the expectations can be checked by eye.
#include <fingate/config.hpp>

#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <unistd.h>

using fingate::Config;
using fingate::ConfigError;
using fingate::EndpointConfig;
using fingate::KeyValue;
using fingate::Role;

namespace {

// Parses text that must fail; returns the error.
ConfigError errorOf(const std::string& text, const std::string& file = "test.yaml") {
  try {
    fingate::parseConfig(text, file);
  } catch (const ConfigError& e) {
    return e;
  }
  ADD_FAILURE() << "expected a ConfigError for:\n" << text;
  return ConfigError(file, {}, "<no error>");
}

// "line:col: message" of the error, for compact expectations.
std::string where(const ConfigError& e) {
  return std::to_string(e.mark().line) + ":" + std::to_string(e.mark().column) + ": " + e.message();
}

const KeyValue* option(const EndpointConfig& ep, const std::string& key) {
  for (const KeyValue& kv : ep.options)
    if (kv.key == key) return &kv;
  return nullptr;
}

const char* kMinimal = R"(endpoints:
  a: { plugin: loopback, role: fins }
)";

}  // namespace

TEST(ConfigTest, FullConfigRoundTrip) {
  const std::string text = R"(# every key the core owns
plugins_dir: ./build/plugins
state_dir: /var/lib/fingate
log_level: debug
admin:
  listen: 127.0.0.1:9401
queue_capacity: 1024
dead_letter_capacity: 50
drain_timeout_ms: 2500
subscribe_timeout_ms: 700
endpoints:
  soarca:
    plugin: mqtt
    role: orchestrator
    url: tcp://127.0.0.1:1883
    qos: 1
  edge:
    plugin: tcp
    role: fins
    required: false
    listen: 0.0.0.0:7400
    max_frame_bytes: 1048576
  bus: { plugin: kafka, role: bridge, brokers: "127.0.0.1:9092", group: fingate }
routes:
  - from: { endpoint: edge, topic: "legacy/#" }
    to:   { endpoint: bus, topic: "fin.{topic}" }
  - from: { endpoint: bus, topic: "+/status" }
    to:   { endpoint: soarca }
)";
  Config c = fingate::parseConfig(text, "full.yaml");
  EXPECT_EQ(c.file, "full.yaml");
  EXPECT_EQ(c.plugins_dir, "./build/plugins");
  EXPECT_EQ(c.state_dir, "/var/lib/fingate");
  EXPECT_EQ(c.log_level, "debug");
  EXPECT_EQ(c.admin.listen, "127.0.0.1:9401");
  EXPECT_EQ(c.admin.mark.line, 6);
  EXPECT_EQ(c.admin.mark.column, 11);
  EXPECT_EQ(c.queue_capacity, 1024u);
  EXPECT_EQ(c.dead_letter_capacity, 50u);
  EXPECT_EQ(c.drain_timeout_ms, 2500u);
  EXPECT_EQ(c.subscribe_timeout_ms, 700u);

  ASSERT_EQ(c.endpoints.size(), 3u);
  const EndpointConfig& soarca = c.endpoints[0];
  EXPECT_EQ(soarca.name, "soarca");
  EXPECT_EQ(soarca.plugin, "mqtt");
  EXPECT_EQ(soarca.role, Role::Orchestrator);
  EXPECT_TRUE(soarca.required);
  EXPECT_EQ(soarca.mark.line, 12);
  EXPECT_EQ(soarca.mark.column, 3);
  EXPECT_EQ(soarca.plugin_mark.line, 13);
  EXPECT_EQ(soarca.plugin_mark.column, 13);
  ASSERT_EQ(soarca.options.size(), 2u);
  EXPECT_EQ(soarca.options[0].key, "url");
  EXPECT_EQ(soarca.options[0].value, "tcp://127.0.0.1:1883");
  EXPECT_EQ(soarca.options[0].mark.line, 15);
  EXPECT_EQ(soarca.options[0].mark.column, 5);
  EXPECT_FALSE(soarca.options[0].secret);
  EXPECT_EQ(soarca.options[1].key, "qos");
  EXPECT_EQ(soarca.options[1].value, "1");

  const EndpointConfig& edge = c.endpoints[1];
  EXPECT_EQ(edge.name, "edge");
  EXPECT_EQ(edge.plugin, "tcp");
  EXPECT_EQ(edge.role, Role::Fins);
  EXPECT_FALSE(edge.required);
  ASSERT_EQ(edge.options.size(), 2u);
  EXPECT_EQ(edge.options[0].key, "listen");
  EXPECT_EQ(edge.options[0].value, "0.0.0.0:7400");
  EXPECT_EQ(edge.options[1].key, "max_frame_bytes");
  EXPECT_EQ(edge.options[1].value, "1048576");

  const EndpointConfig& bus = c.endpoints[2];
  EXPECT_EQ(bus.role, Role::Bridge);
  ASSERT_EQ(bus.options.size(), 2u);
  EXPECT_EQ(bus.options[0].key, "brokers");
  EXPECT_EQ(bus.options[0].value, "127.0.0.1:9092");
  EXPECT_EQ(bus.options[1].key, "group");
  EXPECT_EQ(bus.options[1].mark.line, 23);
  EXPECT_EQ(bus.options[1].mark.column, 66);

  ASSERT_EQ(c.routes.size(), 2u);
  EXPECT_EQ(c.routes[0].from_endpoint, "edge");
  EXPECT_EQ(c.routes[0].from_topic, "legacy/#");
  EXPECT_EQ(c.routes[0].to_endpoint, "bus");
  EXPECT_EQ(c.routes[0].to_topic, "fin.{topic}");
  EXPECT_EQ(c.routes[0].mark.line, 25);
  EXPECT_EQ(c.routes[0].mark.column, 5);
  EXPECT_EQ(c.routes[1].from_endpoint, "bus");
  EXPECT_EQ(c.routes[1].from_topic, "+/status");
  EXPECT_EQ(c.routes[1].to_endpoint, "soarca");
  EXPECT_EQ(c.routes[1].to_topic, "{topic}");  // the default
}

TEST(ConfigTest, DefaultsWhenKeysAreLeftOut) {
  Config c = fingate::parseConfig(kMinimal, "min.yaml");
  EXPECT_EQ(c.plugins_dir, "");
  EXPECT_EQ(c.state_dir, "");
  EXPECT_EQ(c.log_level, "info");
  EXPECT_EQ(c.admin.listen, "127.0.0.1:9400");
  EXPECT_EQ(c.queue_capacity, 65536u);
  EXPECT_EQ(c.dead_letter_capacity, 1000u);
  EXPECT_EQ(c.drain_timeout_ms, 5000u);
  EXPECT_EQ(c.subscribe_timeout_ms, 5000u);
  ASSERT_EQ(c.endpoints.size(), 1u);
  EXPECT_TRUE(c.endpoints[0].required);
  EXPECT_TRUE(c.endpoints[0].options.empty());
  EXPECT_TRUE(c.routes.empty());
  EXPECT_STREQ(fingate::toString(Role::Orchestrator), "orchestrator");
  EXPECT_STREQ(fingate::toString(Role::Fins), "fins");
  EXPECT_STREQ(fingate::toString(Role::Bridge), "bridge");
}

TEST(ConfigTest, EmptyAdminListenDisablesAdmin) {
  Config c = fingate::parseConfig(std::string("admin: { listen: \"\" }\n") + kMinimal, "x.yaml");
  EXPECT_EQ(c.admin.listen, "");
}

TEST(ConfigTest, ErrorTextIsFileLineColumnMessage) {
  ConfigError e = errorOf(R"(log_level: info
admin: { listen: 127.0.0.1:9400 }
queue_capacity: 100
state_dir: ./state
endpoints:
  edge:
    role: fin
    plugin: tcp
)", "config/x.yaml");
  EXPECT_STREQ(e.what(), "config/x.yaml:7:11: endpoints.edge.role: expected one of orchestrator, fins, bridge, got 'fin'");
  EXPECT_EQ(e.file(), "config/x.yaml");
  EXPECT_EQ(e.mark().line, 7);
  EXPECT_EQ(e.mark().column, 11);
  EXPECT_EQ(e.message(), "endpoints.edge.role: expected one of orchestrator, fins, bridge, got 'fin'");
}

TEST(ConfigTest, ErrorWithoutLineOmitsPosition) {
  ConfigError e("a.yaml", {}, "something is wrong");
  EXPECT_STREQ(e.what(), "a.yaml: something is wrong");
  ConfigError e2 = errorOf("", "empty.yaml");
  EXPECT_EQ(e2.mark().line, 0);
  EXPECT_STREQ(e2.what(), "empty.yaml: the file is empty: expected a map with at least 'endpoints'");
}

TEST(ConfigTest, UnknownKeysAreErrorsAtEveryLevel) {
  EXPECT_EQ(where(errorOf("log_level: info\nlogging: debug\n")).substr(0, 31), "2:1: unknown key 'logging' (exp");
  EXPECT_EQ(where(errorOf("admin:\n  listen: 127.0.0.1:1\n  port: 3\n")), "3:3: admin.port: unknown key (expected listen, token, allowed_hosts)");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - from: { endpoint: a, topic: x }\n    to: { endpoint: a }\n    via: a\n")),
            "6:5: routes[0].via: unknown key (expected from, to)");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - from: { endpoint: a, topic: x, qos: 1 }\n    to: { endpoint: a }\n")),
            "4:36: routes[0].from.qos: unknown key (expected endpoint, topic)");
}

TEST(ConfigTest, EndpointErrors) {
  EXPECT_EQ(where(errorOf("endpoints:\n  edge: { role: fins }\n")),
            "2:3: endpoints.edge: missing required key 'plugin' (tcp, mqtt, zmq, kafka, http, ...)");
  EXPECT_EQ(where(errorOf("endpoints:\n  edge: { plugin: tcp }\n")),
            "2:3: endpoints.edge: missing required key 'role' (orchestrator, fins or bridge)");
  EXPECT_EQ(where(errorOf("endpoints:\n  edge: { plugin: TCP, role: fins }\n")),
            "2:19: endpoints.edge.plugin: expected a plugin name of a-z, 0-9, '_' or '-' (e.g. tcp, mqtt), got 'TCP'");
  EXPECT_EQ(where(errorOf("endpoints:\n  edge: { plugin: [tcp], role: fins }\n")),
            "2:19: endpoints.edge.plugin: expected a plugin name, got a list");
  EXPECT_EQ(where(errorOf("endpoints:\n  ed.ge: { plugin: tcp, role: fins }\n")),
            "2:3: endpoints: invalid endpoint name 'ed.ge' (expected letters, digits, '_' or '-')");
  EXPECT_EQ(where(errorOf("endpoints:\n  edge:\n")),
            "2:3: endpoints.edge: expected a map with at least plugin and role, got nothing");
  EXPECT_EQ(where(errorOf("endpoints:\n  edge: { plugin: tcp, role: fins, required: maybe }\n")),
            "2:46: endpoints.edge.required: expected true or false, got 'maybe'");
  EXPECT_EQ(where(errorOf("endpoints: {}\n")), "1:12: endpoints: expected at least one endpoint");
  EXPECT_EQ(where(errorOf("endpoints: [a, b]\n")),
            "1:12: endpoints: expected a map of endpoint name to its settings, got a list");
  EXPECT_EQ(where(errorOf("log_level: info\n")),
            "1:1: missing required key 'endpoints' (a map of endpoint name to its settings)");
}

TEST(ConfigTest, SequenceAsPluginOptionIsAnError) {
  ConfigError e = errorOf(R"(endpoints:
  bus:
    plugin: kafka
    role: bridge
    brokers: [a:9092, b:9092]
)");
  EXPECT_EQ(where(e), "5:14: endpoints.bus.brokers: expected a scalar or a map, got a list");
  EXPECT_EQ(where(errorOf("endpoints:\n  bus:\n    plugin: kafka\n    role: bridge\n    group:\n")),
            "5:5: endpoints.bus.group: expected a scalar or a map, got nothing");
}

TEST(ConfigTest, ScalarTypeAndRangeErrors) {
  auto with = [](const std::string& line) { return line + "\n" + kMinimal; };
  EXPECT_EQ(where(errorOf(with("queue_capacity: 0"))), "1:17: queue_capacity: expected an integer between 1 and 16777216, got 0");
  EXPECT_EQ(where(errorOf(with("queue_capacity: 99999999999"))),
            "1:17: queue_capacity: expected an integer between 1 and 16777216, got 99999999999");
  EXPECT_EQ(where(errorOf(with("queue_capacity: 64k"))),
            "1:17: queue_capacity: expected an integer between 1 and 16777216, got '64k'");
  EXPECT_EQ(where(errorOf(with("drain_timeout_ms: -1"))),
            "1:19: drain_timeout_ms: expected an integer between 0 and 3600000, got '-1'");
  EXPECT_EQ(where(errorOf(with("subscribe_timeout_ms: 600001"))),
            "1:23: subscribe_timeout_ms: expected an integer between 1 and 600000, got 600001");
  EXPECT_EQ(where(errorOf(with("dead_letter_capacity: { a: 1 }"))),
            "1:23: dead_letter_capacity: expected an integer between 0 and 1000000, got a map");
  EXPECT_EQ(where(errorOf(with("log_level: verbose"))),
            "1:12: log_level: expected one of trace, debug, info, warn, error, got 'verbose'");
  EXPECT_EQ(where(errorOf(with("state_dir: [a]"))), "1:12: state_dir: expected a string, got a list");
  EXPECT_EQ(where(errorOf(with("admin: 127.0.0.1:9400"))),
            "1:8: admin: expected a map (e.g. { listen: 127.0.0.1:9400, token: ${FINGATE_ADMIN_TOKEN} }), got '127.0.0.1:9400'");
  EXPECT_EQ(where(errorOf(with("admin: { listen: localhost }"))),
            "1:18: admin.listen: expected host:port (e.g. 127.0.0.1:9400) or \"\" for no admin listener, got 'localhost'");
  EXPECT_EQ(where(errorOf(with("admin: { listen: \"127.0.0.1:70000\" }"))).substr(0, 19), "1:18: admin.listen:");
  Config c = fingate::parseConfig(with("admin: { listen: \"[::1]:0\" }"), "x.yaml");
  EXPECT_EQ(c.admin.listen, "[::1]:0");
}

TEST(ConfigTest, TopLevelMustBeOneMap) {
  EXPECT_EQ(where(errorOf("- a\n- b\n")), "1:1: expected a map of settings at the top level, got a list");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "---\nlog_level: info\n")),
            "4:1: expected one YAML document, found more than one (remove the '---')");
}

TEST(ConfigTest, SyntaxErrorPosition) {
  ConfigError e = errorOf(R"(endpoints:
  edge: { plugin: tcp, role: fins
  other: 1
)");
  EXPECT_EQ(e.mark().line, 3);
  EXPECT_GT(e.mark().column, 0);
  EXPECT_NE(e.message().find("YAML syntax error: "), std::string::npos) << e.message();

  ConfigError e2 = errorOf("endpoints:\n  a: 1\n   b: 2\n");
  EXPECT_EQ(where(e2), "3:5: YAML syntax error: illegal map value");
  ConfigError e3 = errorOf("endpoints:\n\ta: 1\n");
  EXPECT_EQ(e3.mark().line, 2) << e3.what();
}

TEST(ConfigTest, EnvironmentExpansion) {
  ::setenv("FG_CFGTEST_HOST", "10.0.0.7", 1);
  ::setenv("FG_CFGTEST_PASS", "s3cr3t", 1);
  ::setenv("FG_CFGTEST_DIR", "/tmp/fgstate", 1);
  ::setenv("FG_CFGTEST_QUEUE", "128", 1);
  Config c = fingate::parseConfig(R"(state_dir: "${FG_CFGTEST_DIR}/x"
queue_capacity: ${FG_CFGTEST_QUEUE}
endpoints:
  m:
    plugin: mqtt
    role: orchestrator
    url: tcp://${FG_CFGTEST_HOST}:1883
    username: ${FG_CFGTEST_HOST}${FG_CFGTEST_HOST}
    client_id: "price $$5 and $${HOME} and $x"
    tls: { ca_file: "$${FG_CFGTEST_PASS}" }
    password: ${FG_CFGTEST_PASS}
)", "env.yaml");
  EXPECT_EQ(c.state_dir, "/tmp/fgstate/x");
  EXPECT_EQ(c.queue_capacity, 128u);
  const EndpointConfig& m = c.endpoints[0];
  ASSERT_NE(option(m, "url"), nullptr);
  EXPECT_EQ(option(m, "url")->value, "tcp://10.0.0.7:1883");
  EXPECT_TRUE(option(m, "url")->secret);  // came from ${ENV}
  EXPECT_EQ(option(m, "username")->value, "10.0.0.710.0.0.7");
  EXPECT_TRUE(option(m, "username")->secret);
  // $${ is a literal "${"; a lone '$' stays as it is; no expansion means not secret.
  EXPECT_EQ(option(m, "client_id")->value, "price $$5 and ${HOME} and $x");
  EXPECT_FALSE(option(m, "client_id")->secret);
  EXPECT_EQ(option(m, "tls.ca_file")->value, "${FG_CFGTEST_PASS}");
  EXPECT_FALSE(option(m, "tls.ca_file")->secret);
  EXPECT_EQ(option(m, "password")->value, "s3cr3t");
  EXPECT_TRUE(option(m, "password")->secret);
}

TEST(ConfigTest, UnsetEnvironmentVariableIsAnErrorAtItsScalar) {
  ::unsetenv("FG_CFGTEST_UNSET");
  ConfigError e = errorOf(R"(endpoints:
  m:
    plugin: mqtt
    role: orchestrator
    password: "x${FG_CFGTEST_UNSET}"
)");
  EXPECT_EQ(where(e), "5:15: endpoints.m.password: environment variable FG_CFGTEST_UNSET is not set");
  EXPECT_EQ(where(errorOf(std::string("state_dir: ${FG_CFGTEST_UNSET}\n") + kMinimal)),
            "1:12: state_dir: environment variable FG_CFGTEST_UNSET is not set");
  EXPECT_EQ(where(errorOf(std::string("state_dir: ab${FG_CFGTEST\n") + kMinimal)),
            "1:12: state_dir: unterminated '${' (write ${NAME}, or $${ for a literal '${')");
  EXPECT_EQ(where(errorOf(std::string("state_dir: \"${1X}\"\n") + kMinimal)).substr(0, 60),
            "1:12: state_dir: invalid environment variable name '1X' in '");
}

TEST(ConfigTest, SecretsAreFlaggedByKeyName) {
  Config c = fingate::parseConfig(R"(endpoints:
  k:
    plugin: kafka
    role: bridge
    brokers: 127.0.0.1:9092
    rdkafka:
      sasl.password: pw
      sasl.username: user
    token: abc
    secret: s
    tls:
      key_file: /k.pem
      cert_file: /c.pem
      ca_file: /ca.pem
    password: p
    passwords: not-a-secret-name
)", "s.yaml");
  const EndpointConfig& k = c.endpoints[0];
  EXPECT_FALSE(option(k, "brokers")->secret);
  EXPECT_TRUE(option(k, "rdkafka.sasl.password")->secret);
  EXPECT_FALSE(option(k, "rdkafka.sasl.username")->secret);
  EXPECT_TRUE(option(k, "token")->secret);
  EXPECT_TRUE(option(k, "secret")->secret);
  EXPECT_TRUE(option(k, "tls.key_file")->secret);
  EXPECT_FALSE(option(k, "tls.cert_file")->secret);
  EXPECT_FALSE(option(k, "tls.ca_file")->secret);
  EXPECT_TRUE(option(k, "password")->secret);
  EXPECT_FALSE(option(k, "passwords")->secret);
}

TEST(ConfigTest, NestedMapsAreFlattenedWithDots) {
  Config c = fingate::parseConfig(R"(endpoints:
  edge:
    plugin: tcp
    role: fins
    tls:
      ca_file: /etc/ca.pem
      verify: true
      client:
        cert_file: /etc/c.pem
    tls.min_version: "1.3"
    empty: {}
    listen: 127.0.0.1:0
)", "t.yaml");
  const EndpointConfig& e = c.endpoints[0];
  ASSERT_EQ(e.options.size(), 5u);
  EXPECT_EQ(e.options[0].key, "tls.ca_file");
  EXPECT_EQ(e.options[0].value, "/etc/ca.pem");
  EXPECT_EQ(e.options[0].mark.line, 6);
  EXPECT_EQ(e.options[0].mark.column, 7);
  EXPECT_EQ(e.options[1].key, "tls.verify");
  EXPECT_EQ(e.options[1].value, "true");
  EXPECT_EQ(e.options[2].key, "tls.client.cert_file");
  EXPECT_EQ(e.options[2].mark.line, 9);
  EXPECT_EQ(e.options[2].mark.column, 9);
  EXPECT_EQ(e.options[3].key, "tls.min_version");
  EXPECT_EQ(e.options[3].value, "1.3");
  EXPECT_EQ(e.options[4].key, "listen");
}

TEST(ConfigTest, DuplicateKeysAreErrorsAtTheSecondOccurrence) {
  EXPECT_EQ(where(errorOf("log_level: info\nendpoints:\n  a: { plugin: x, role: fins }\nlog_level: debug\n")),
            "4:1: log_level: duplicate key (first written at line 1, column 1)");
  EXPECT_EQ(where(errorOf("endpoints:\n  a: { plugin: x, role: fins }\n  a: { plugin: y, role: fins }\n")),
            "3:3: endpoints.a: duplicate key (first written at line 2, column 3)");
  EXPECT_EQ(where(errorOf("endpoints:\n  a:\n    plugin: x\n    role: fins\n    listen: 1\n    listen: 2\n")),
            "6:5: endpoints.a.listen: duplicate key (first written at line 5, column 5)");
  EXPECT_EQ(where(errorOf("endpoints:\n  a:\n    plugin: x\n    role: fins\n    tls: { ca_file: a, ca_file: b }\n")),
            "5:24: endpoints.a.tls.ca_file: duplicate key (first written at line 5, column 12)");
  // The same flattened key written two ways.
  EXPECT_EQ(where(errorOf("endpoints:\n  a:\n    plugin: x\n    role: fins\n    tls.ca_file: a\n    tls: { ca_file: b }\n")),
            "6:12: endpoints.a.tls.ca_file: duplicate key (first written at line 5, column 5)");
  EXPECT_EQ(where(errorOf("admin: { listen: \"a:1\", listen: \"b:2\" }\n")),
            "1:25: admin.listen: duplicate key (first written at line 1, column 10)");
}

TEST(ConfigTest, RoutesReferencingUnknownEndpoints) {
  // routes may come before endpoints: names are checked once the whole file is read.
  ConfigError e = errorOf(R"(routes:
  - from: { endpoint: edge, topic: "#" }
    to:   { endpoint: kafka }
endpoints:
  edge: { plugin: tcp, role: bridge }
  bus:  { plugin: kafka, role: bridge }
)");
  EXPECT_EQ(where(e), "3:23: routes[0].to.endpoint: unknown endpoint 'kafka' (defined: edge, bus)");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - from: { endpoint: b, topic: x }\n    to: { endpoint: a }\n")),
            "4:23: routes[0].from.endpoint: unknown endpoint 'b' (defined: a)");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - from: { topic: x }\n    to: { endpoint: a }\n")),
            "4:5: routes[0].from: missing required key 'endpoint'");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - from: { endpoint: a }\n    to: { endpoint: a }\n")),
            "4:5: routes[0].from: missing required key 'topic' (an MQTT-style filter, e.g. \"#\")");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - from: { endpoint: a, topic: x }\n")),
            "4:5: routes[0]: missing required key 'to'");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes:\n  - a\n")),
            "4:5: routes[0]: expected a map { from: {endpoint, topic}, to: {endpoint, topic} }, got 'a'");
  EXPECT_EQ(where(errorOf(std::string(kMinimal) + "routes: { a: 1 }\n")).substr(0, 36), "3:9: routes: expected a list of { fr");
  Config c = fingate::parseConfig(std::string(kMinimal) + "routes:\n", "x.yaml");
  EXPECT_TRUE(c.routes.empty());
}

TEST(ConfigTest, BadRouteTopics) {
  auto route = [](const std::string& from, const std::string& to) {
    return std::string(kMinimal) + "routes:\n  - from: { endpoint: a, topic: \"" + from + "\" }\n    to: { endpoint: a, topic: \"" +
           to + "\" }\n";
  };
  EXPECT_EQ(where(errorOf(route("a/#/b", "{topic}"))),
            "4:33: routes[0].from.topic: expected an MQTT-style topic filter ('+' a whole level, '#' only as the whole "
            "last level), got 'a/#/b'");
  EXPECT_EQ(where(errorOf(route("a+", "{topic}"))).substr(0, 29), "4:33: routes[0].from.topic: e");
  EXPECT_EQ(where(errorOf(route("", "{topic}"))).substr(0, 29), "4:33: routes[0].from.topic: e");
  EXPECT_EQ(where(errorOf(route("a/+", "out/+"))),
            "5:31: routes[0].to.topic: expected a topic template without '+' or '#' (\"{topic}\" is the inbound topic), "
            "got 'out/+'");
  EXPECT_EQ(where(errorOf(route("a/+", "#"))).substr(0, 27), "5:31: routes[0].to.topic: e");
  Config c = fingate::parseConfig(route("a/+/c", "x/{topic}"), "r.yaml");
  EXPECT_EQ(c.routes[0].from_topic, "a/+/c");
  EXPECT_EQ(c.routes[0].to_topic, "x/{topic}");
}

TEST(ConfigTest, LoadConfigReportsUnreadableFile) {
  try {
    fingate::loadConfig("/nonexistent-dir/fingate.yaml");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "cannot read /nonexistent-dir/fingate.yaml: No such file or directory");
    EXPECT_EQ(e.file(), "/nonexistent-dir/fingate.yaml");
    EXPECT_EQ(e.mark().line, 0);
  }
  try {
    fingate::loadConfig("/tmp");
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_STREQ(e.what(), "cannot read /tmp: Is a directory");
  }
}

TEST(ConfigTest, LoadConfigNamesTheFileInErrors) {
  std::string path = (std::filesystem::temp_directory_path() /
                      ("fingate-config-test-" + std::to_string(::getpid()) + ".yaml")).string();
  {
    std::ofstream out(path);
    out << "endpoints:\n  a: { plugin: tcp, role: fins, listen: 127.0.0.1:0 }\nextra: 1\n";
  }
  try {
    fingate::loadConfig(path);
    ADD_FAILURE() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()).substr(0, path.size() + 25), path + ":3:1: unknown key 'extra'");
  }
  {
    std::ofstream out(path);
    out << "endpoints:\n  a: { plugin: tcp, role: fins, listen: 127.0.0.1:0 }\n";
  }
  Config c = fingate::loadConfig(path);
  EXPECT_EQ(c.file, path);
  ASSERT_EQ(c.endpoints.size(), 1u);
  EXPECT_EQ(option(c.endpoints[0], "listen")->value, "127.0.0.1:0");
  std::remove(path.c_str());
}

TEST(ConfigTest, ShippedConfigsAreValid) {
  Config c = fingate::loadConfig(std::string(FINGATE_SOURCE_DIR) + "/config/fingate.yaml");
  ASSERT_EQ(c.endpoints.size(), 2u);
  EXPECT_EQ(c.endpoints[0].name, "orchestrator");
  EXPECT_EQ(c.endpoints[0].plugin, "tcp");
  EXPECT_EQ(c.endpoints[0].role, Role::Orchestrator);
  EXPECT_EQ(option(c.endpoints[0], "listen")->value, "127.0.0.1:7400");
  EXPECT_EQ(c.endpoints[1].name, "fins");
  EXPECT_EQ(c.endpoints[1].role, Role::Fins);
  EXPECT_EQ(option(c.endpoints[1], "listen")->value, "127.0.0.1:7410");
  EXPECT_EQ(c.admin.listen, "127.0.0.1:9400");
  EXPECT_EQ(c.state_dir, "./state");
  EXPECT_EQ(c.plugins_dir, "./build/plugins");

  Config b = fingate::loadConfig(std::string(FINGATE_SOURCE_DIR) + "/config/examples/tcp-bridge.yaml");
  ASSERT_FALSE(b.routes.empty());
  bool wildcard = false;
  for (const auto& r : b.routes) wildcard = wildcard || r.from_topic.find_first_of("+#") != std::string::npos;
  EXPECT_TRUE(wildcard);
  for (const auto& ep : b.endpoints) EXPECT_EQ(ep.role, Role::Bridge) << ep.name;
}

namespace {

TEST(ConfigTestCompat, CompatAndRegisterReplay) {
  auto cfg = fingate::parseConfig(
      "register_replay: 5m\nendpoints:\n  f: { plugin: mqtt, role: fins, compat: python-fin, url: x }\n", "c.yaml");
  EXPECT_EQ(cfg.register_replay_s, 300u);
  EXPECT_EQ(cfg.endpoints[0].compat, "python-fin");
  EXPECT_TRUE(cfg.endpoints[0].options.size() == 1 && cfg.endpoints[0].options[0].key == "url");
  EXPECT_EQ(fingate::parseConfig("register_replay: 0\nendpoints:\n  f: { plugin: tcp, role: fins }\n", "c.yaml")
                .register_replay_s,
            0u);
  try {
    fingate::parseConfig("endpoints:\n  o: { plugin: mqtt, role: orchestrator, compat: python-fin }\n", "c.yaml");
    FAIL() << "compat on an orchestrator endpoint was accepted";
  } catch (const fingate::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("c.yaml:2:42: endpoints.o.compat: applies to fins endpoints only"),
              std::string::npos)
        << e.what();
  }
  try {
    fingate::parseConfig("register_replay: soon\nendpoints:\n  f: { plugin: tcp, role: fins }\n", "c.yaml");
    FAIL() << "a bad duration was accepted";
  } catch (const fingate::ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("c.yaml:1:18: register_replay: expected a duration"), std::string::npos)
        << e.what();
  }
}

}  // namespace

TEST(ConfigTest, ClusterRegistryEndpoint) {
  const std::string eps =
      "endpoints:\n"
      "  soarca: { plugin: mqtt, role: orchestrator, url: tcp://127.0.0.1:1883 }\n"
      "  bus: { plugin: kafka, role: fins, brokers: 127.0.0.1:9092 }\n";
  Config c = fingate::parseConfig("cluster: { registry_endpoint: bus }\n" + eps, "c.yaml");
  EXPECT_EQ(c.cluster.registry_endpoint, "bus");
  EXPECT_EQ(fingate::parseConfig(eps, "c.yaml").cluster.registry_endpoint, "");
  EXPECT_EQ(where(errorOf("cluster: { registry_endpoint: nope }\n" + eps)),
            "1:31: cluster.registry_endpoint: unknown endpoint 'nope' (endpoints: soarca, bus)");
  EXPECT_EQ(where(errorOf("cluster: { registry: bus }\n" + eps)),
            "1:12: cluster.registry: unknown key (expected registry_endpoint)");
}

// ---- migration: ------------------------------------------------------------------------------

namespace {
const char* kPair = R"(endpoints:
  soarca: { plugin: mqtt, role: orchestrator, url: tcp://127.0.0.1:1883 }
  old: { plugin: mqtt, role: fins, url: tcp://127.0.0.1:1884 }
  new: { plugin: kafka, role: fins, brokers: 127.0.0.1:9092 }
)";
}  // namespace

TEST(ConfigMigration, ReadsEveryKey) {
  Config c = fingate::parseConfig(std::string(kPair) + R"(migration:
  from: old
  to: new
  active: to
  mirror: true
  verify_max_age_s: 60
)",
                                  "m.yaml");
  ASSERT_TRUE(c.migration.configured());
  EXPECT_EQ(c.migration.from, "old");
  EXPECT_EQ(c.migration.to, "new");
  EXPECT_TRUE(c.migration.to_active);
  EXPECT_TRUE(c.migration.mirror);
  EXPECT_EQ(c.migration.verify_max_age_s, 60u);
  Config d = fingate::parseConfig(std::string(kPair) + "migration: { from: old, to: new }\n", "m.yaml");
  EXPECT_FALSE(d.migration.to_active);
  EXPECT_FALSE(d.migration.mirror);
  EXPECT_EQ(d.migration.verify_max_age_s, 600u);
  EXPECT_FALSE(fingate::parseConfig(kPair, "m.yaml").migration.configured());
}

TEST(ConfigMigration, ErrorsNameTheKey) {
  EXPECT_EQ(where(errorOf(std::string(kPair) + "migration: { from: old, to: nope }\n")),
            "5:29: migration.to: unknown endpoint 'nope' (endpoints: soarca, old, new)");
  EXPECT_EQ(where(errorOf(std::string(kPair) + "migration: { from: soarca, to: new }\n")),
            "5:20: migration.from: endpoint 'soarca' has role orchestrator; both sides of a migration must be role fins");
  EXPECT_EQ(where(errorOf(std::string(kPair) + "migration: { from: old, to: old }\n")),
            "5:29: migration.to: must name another endpoint than 'from'");
  EXPECT_EQ(where(errorOf(std::string(kPair) + "migration: { to: new }\n")),
            "5:1: migration: 'from' is required (the endpoint the fins are on now)");
  EXPECT_EQ(where(errorOf(std::string(kPair) + "migration: { from: old, to: new, active: new }\n")).substr(0, 24),
            "5:42: migration.active: ");
  EXPECT_EQ(where(errorOf(std::string(kPair) + "migration: { from: old, to: new, cutover: true }\n")),
            "5:34: migration.cutover: unknown key (expected from, to, active, mirror, verify_max_age_s)");
}
