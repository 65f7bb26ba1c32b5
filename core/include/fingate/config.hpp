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
  bool required = true;           // `required:` (default true): /readyz waits for it
  std::string compat;             // `compat:` "python-fin" repairs commands for the Python fin library; "" = none
  std::vector<KeyValue> options;  // every other key, in file order
  Mark mark;                      // where the endpoint's name is written
  Mark plugin_mark;
};

struct RouteConfig {
  std::string from_endpoint;
  std::string from_topic;  // MQTT-style filter
  std::string to_endpoint;
  std::string to_topic;  // template: "{topic}" is replaced by the inbound fin topic
  Mark mark;
};

struct AdminConfig {
  std::string listen = "127.0.0.1:9400";  // host:port; empty = no admin listener
  // Bearer token for every path but /healthz and /readyz (${ENV} recommended); empty = none.
  std::string token;
  // Host header values accepted beside the listen address, localhost, 127.0.0.1 and [::1]
  // (DNS-rebinding check): "name" (with the listener's port) or "name:port" (exactly, e.g. an
  // SSH tunnel's local port).
  std::vector<std::string> allowed_hosts;
  Mark mark;  // where listen's value is written (the `admin` key when listen is not given)
  Mark token_mark;
};

// Core limits (top-level `limits:` map). Each hit is a clear error to that client (nack / error
// frame / dead letter), a counter (fingate_limit_hits_total{limit=...}) and a log line.
struct Limits {
  uint32_t fins_per_session = 64;            // fins one client session may bind
  uint32_t fins_per_endpoint = 10000;        // fins bound behind one endpoint
  uint32_t capabilities_per_register = 256;  // capability ids in one register
  uint32_t echo_window_entries = 65536;      // own publishes remembered for echo suppression
  uint32_t pending_registers = 1024;         // registers waiting for their subscriptions
  uint32_t pending_followers = 1024;         // messages parked behind one waiting register
  uint32_t session_queue_messages = 8192;    // per-session outbound queue (session transports)
  uint64_t session_queue_bytes = 8u << 20;   // ... and its bytes
  uint32_t slow_consumer_grace_ms = 5000;    // a session whose queue stays full this long is closed
  uint64_t dead_letter_bytes = 64u << 20;    // payload bytes the dead-letter store keeps in total
  uint32_t restored_backlog = 1000;          // commands waiting for a restored binding to be claimed
  uint32_t restored_backlog_ttl_ms = 30000;  // ... this long, then dead-lettered and nacked
  uint32_t state_write_delay_ms = 100;       // state file: changes are coalesced for this long
};

// Several gateways as one (top-level `cluster:` map; docs/scaling.md).
struct ClusterConfig {
  // An endpoint whose plugin carries the shared binding registry (the Kafka plugin with
  // `registry_topic`): every binding of a broker-side fins endpoint is published there
  // (topic "$fingate/bindings/<fin_id>", empty payload = removed), and every other instance's
  // bindings are read from there. Empty = no shared registry.
  std::string registry_endpoint;
  Mark mark;
};

// Moving fins from one broker endpoint to another (top-level `migration:` map; docs/migration.md).
// `from` and `to` act as one logical fins endpoint: the active one holds the bindings and gets the
// orchestrator's commands; with the mirror on, fin traffic is copied to the other side as well.
struct MigrationConfig {
  std::string from, to;             // endpoint names (broker-side fins endpoints); empty = no migration
  bool to_active = false;           // `active: to` (after a cutover); default `from`
  bool mirror = false;              // `mirror:`
  uint32_t verify_max_age_s = 600;  // a passing verify report older than this does not allow a cutover
  Mark mark, from_mark, to_mark;
  bool configured() const { return !from.empty(); }
};

struct Config {
  std::string file;         // the path it was read from
  std::string plugins_dir;  // empty = default (../plugins relative to the binary)
  std::string state_dir;    // empty = no persistence
  Mark state_dir_mark;
  std::string log_level = "info";
  AdminConfig admin;
  uint32_t queue_capacity = 65536;       // messages per inbound lane and per outbound queue
  uint32_t dead_letter_capacity = 1000;  // kept for /v1/dead-letters
  uint32_t drain_timeout_ms = 5000;      // SIGINT/SIGTERM: bounded wait for in-flight messages
  uint32_t subscribe_timeout_ms = 5000;  // bounded wait for a broker's subscribe confirmation
  uint32_t register_replay_s = 300;      // re-send stored registers to orchestrators this often; 0 = off
  Limits limits;
  ClusterConfig cluster;
  MigrationConfig migration;
  std::vector<EndpointConfig> endpoints;  // in file order
  std::vector<RouteConfig> routes;
};

// Reads and validates a config file (syntax, known top-level keys, types, endpoint
// references in routes, roles). Plugin-specific keys are checked later against the
// plugin's descriptor. plugins_dir/state_dir are kept as written: relative ones are
// resolved by the gateway against the current directory. Throws ConfigError.
Config loadConfig(const std::string& path);
Config parseConfig(const std::string& text, const std::string& file_name);

// What `run` would refuse beyond the file's own syntax, checked without binding or creating
// anything (`fingate validate` and `fingate run` both call it; throws ConfigError at the key):
// two listeners on one address and port (tcp/http `listen`, zmq `bind`, admin.listen; a
// wildcard host clashes with every host on its port; port 0 never clashes), TLS files
// (tls.*_file, tls.ca, tls.cert, tls.key) that are missing or unreadable (skipped when
// tls.enabled is false), a state_dir that is not a directory or cannot be created or written,
// and credentials in a URL's user-info (they belong in the username/password keys). Relative
// paths are taken from the current directory, as the gateway does.
void checkConfigForRun(const Config& cfg);

}  // namespace fingate
