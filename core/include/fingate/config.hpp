// Typed gateway configuration, read from YAML. Every error carries file:line:col.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace fingate {

// A position in a config file (1-based line and column; 0 = unknown).
struct Mark {
  int line = 0;
  int column = 0;
};

// Thrown for every configuration problem. what() is "file:line:col: message" ("file: message"
// when the line is unknown (0); just "message" when file is empty).
class ConfigError : public std::runtime_error {
 public:
  ConfigError(const std::string& file, Mark mark, const std::string& message);
  // The file could not be read: what() and message() are "cannot read FILE: reason".
  static ConfigError cannotRead(const std::string& file, const std::string& reason);
  const std::string& file() const { return file_; }
  Mark mark() const { return mark_; }
  const std::string& message() const { return message_; }

 private:
  std::string file_;
  Mark mark_;
  std::string message_;

  struct WholeMessage {};
  ConfigError(WholeMessage, const std::string& file, const std::string& message);
};

enum class Role { Orchestrator, Fins, Bridge };
const char* toString(Role r);

// One plugin-specific key, flattened with '.' ("tls.ca_file"), value as text (${ENV} expanded).
struct KeyValue {
  std::string key;
  std::string value;
  Mark mark;            // where the key is written
  bool secret = false;  // password/token/... or came from ${ENV}: never logged
};

struct EndpointConfig {
  std::string name;    // the key under `endpoints:`
  std::string plugin;  // `plugin:`
  Role role = Role::Bridge;
  bool required = true;          // `required:` (default true): /readyz waits for it
  std::string compat;            // `compat:` "python-fin" repairs commands for the Python fin library; "" = none
  std::vector<KeyValue> options; // every other key, in file order
  Mark mark;                     // where the endpoint's name is written
  Mark plugin_mark;
};

struct RouteConfig {
  std::string from_endpoint;
  std::string from_topic;  // MQTT-style filter
  std::string to_endpoint;
  std::string to_topic;    // template: "{topic}" is replaced by the inbound fin topic
  Mark mark;
};

struct AdminConfig {
  std::string listen = "127.0.0.1:9400";  // host:port; empty = no admin listener
  Mark mark;
};

struct Config {
  std::string file;         // the path it was read from
  std::string plugins_dir;  // empty = default (../plugins relative to the binary)
  std::string state_dir;    // empty = no persistence
  std::string log_level = "info";
  AdminConfig admin;
  uint32_t queue_capacity = 65536;       // messages per inbound lane and per outbound queue
  uint32_t dead_letter_capacity = 1000;  // kept for /v1/dead-letters
  uint32_t drain_timeout_ms = 5000;      // SIGINT/SIGTERM: bounded wait for in-flight messages
  uint32_t subscribe_timeout_ms = 5000;  // bounded wait for a broker's subscribe confirmation
  uint32_t register_replay_s = 300;      // re-send stored registers to orchestrators this often; 0 = off
  std::vector<EndpointConfig> endpoints; // in file order
  std::vector<RouteConfig> routes;
};

// Reads and validates a config file (syntax, known top-level keys, types, endpoint
// references in routes, roles). Plugin-specific keys are checked later against the
// plugin's descriptor. plugins_dir/state_dir are kept as written: relative ones are
// resolved by the gateway against the current directory. Throws ConfigError.
Config loadConfig(const std::string& path);
Config parseConfig(const std::string& text, const std::string& file_name);

}  // namespace fingate
