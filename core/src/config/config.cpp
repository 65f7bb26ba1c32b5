// YAML -> typed Config (yaml-cpp 0.7). Every error is a ConfigError with file:line:col and a
// message that names the key path and says what was expected.
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fingate/config.hpp>
#include <fingate/topic.hpp>
#include <map>
#include <sstream>
#include <string_view>

namespace fingate {

namespace {

std::string formatWhat(const std::string& file, Mark mark, const std::string& message) {
  if (file.empty()) return message;
  if (mark.line <= 0) return file + ": " + message;
  return file + ":" + std::to_string(mark.line) + ":" + std::to_string(mark.column) + ": " + message;
}

}  // namespace

ConfigError::ConfigError(const std::string& file, Mark mark, const std::string& message)
    : std::runtime_error(formatWhat(file, mark, message)), file_(file), mark_(mark), message_(message) {}

ConfigError::ConfigError(WholeMessage, const std::string& file, const std::string& message)
    : std::runtime_error(message), file_(file), mark_(), message_(message) {}

ConfigError ConfigError::cannotRead(const std::string& file, const std::string& reason) {
  std::string message = "cannot read " + file + ": " + reason;
  return ConfigError(WholeMessage{}, file, message);
}

const char* toString(Role r) {
  switch (r) {
    case Role::Orchestrator:
      return "orchestrator";
    case Role::Fins:
      return "fins";
    case Role::Bridge:
      return "bridge";
  }
  return "bridge";
}

namespace {

// yaml-cpp marks are 0-based (and -1 when unknown); ours are 1-based (0 when unknown).
Mark toMark(const YAML::Mark& m) {
  if (m.is_null() || m.line < 0) return Mark{};
  return Mark{m.line + 1, m.column + 1};
}

bool isNameChar(char c, bool allow_dot) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' ||
         (allow_dot && c == '.');
}

bool allChars(std::string_view s, bool (*ok)(char)) {
  if (s.empty()) return false;
  for (char c : s)
    if (!ok(c)) return false;
  return true;
}

bool isEndpointNameChar(char c) { return isNameChar(c, false); }
bool isOptionKeyChar(char c) { return isNameChar(c, true); }
bool isPluginNameChar(char c) { return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'; }
bool isEnvNameStart(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_'; }
bool isEnvNameChar(char c) { return isEnvNameStart(c) || (c >= '0' && c <= '9'); }

std::string lastPart(const std::string& key) {
  size_t dot = key.rfind('.');
  return dot == std::string::npos ? key : key.substr(dot + 1);
}

bool isSecretKey(const std::string& key) {
  static const char* const kSecretParts[] = {"password", "token", "secret", "key_file"};
  std::string last = lastPart(key);
  for (const char* p : kSecretParts)
    if (last == p) return true;
  return key == "sasl.password" || (key.size() > 14 && key.compare(key.size() - 14, 14, ".sasl.password") == 0);
}

std::string describe(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Map:
      return "a map";
    case YAML::NodeType::Sequence:
      return "a list";
    case YAML::NodeType::Scalar:
      return "'" + n.Scalar() + "'";
    default:
      return "nothing";
  }
}

std::string join(const std::vector<std::string>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += v[i];
  }
  return out;
}

// One map entry as the parser sees it: the key text, where the key is written, and the value.
struct Entry {
  std::string key;
  YAML::Mark key_mark;
  YAML::Node value;
};

class Parser {
 public:
  explicit Parser(std::string file) : file_(std::move(file)) {}

  Config parse(const std::string& text) {
    YAML::Node first;
    try {
      checkOneDocument(text);
      first = YAML::Load(text);
    } catch (const YAML::Exception& e) {
      fail(e.mark, "YAML syntax error: " + e.msg);
    }
    if (first.IsNull()) throw ConfigError(file_, Mark{}, "the file is empty: expected a map with at least 'endpoints'");
    const YAML::Node& root = first;
    if (!root.IsMap()) fail(root.Mark(), "expected a map of settings at the top level, got " + describe(root));

    Config cfg;
    cfg.file = file_;
    bool have_endpoints = false;
    for (const Entry& e : entries(root, "")) {
      const std::string& k = e.key;
      if (k == "plugins_dir") {
        cfg.plugins_dir = string(e, k);
      } else if (k == "state_dir") {
        cfg.state_dir = string(e, k);
        cfg.state_dir_mark = toMark(valueMark(e));
      } else if (k == "log_level") {
        cfg.log_level = oneOf(e, k, {"trace", "debug", "info", "warn", "error"});
      } else if (k == "admin") {
        parseAdmin(e, cfg.admin);
      } else if (k == "queue_capacity") {
        cfg.queue_capacity = integer(e, k, 1, 16777216);
      } else if (k == "dead_letter_capacity") {
        cfg.dead_letter_capacity = integer(e, k, 0, 1000000);
      } else if (k == "drain_timeout_ms") {
        cfg.drain_timeout_ms = integer(e, k, 0, 3600000);
      } else if (k == "subscribe_timeout_ms") {
        cfg.subscribe_timeout_ms = integer(e, k, 1, 600000);
      } else if (k == "register_replay") {
        cfg.register_replay_s = duration(e, k);
      } else if (k == "limits") {
        parseLimits(e, cfg.limits);
      } else if (k == "cluster") {
        parseCluster(e, cfg.cluster);
      } else if (k == "migration") {
        parseMigration(e, cfg.migration);
      } else if (k == "endpoints") {
        have_endpoints = true;
        parseEndpoints(e, cfg.endpoints);
      } else if (k == "routes") {
        parseRoutes(e, cfg.routes);
      } else {
        fail(e.key_mark,
             "unknown key '" + k +
                 "' (expected plugins_dir, state_dir, log_level, admin, queue_capacity, "
                 "dead_letter_capacity, drain_timeout_ms, subscribe_timeout_ms, register_replay, limits, cluster, "
                 "migration, endpoints, routes)");
      }
    }
    if (!have_endpoints) fail(root.Mark(), "missing required key 'endpoints' (a map of endpoint name to its settings)");
    checkRoutes(cfg);
    checkCluster(cfg);
    checkMigration(cfg);
    return cfg;
  }

 private:
  // Where each route names its endpoints, for the cross-check after all endpoints are read.
  struct RouteMarks {
    YAML::Mark from_endpoint;
    YAML::Mark to_endpoint;
  };

  [[noreturn]] void fail(const YAML::Mark& m, const std::string& message) const {
    throw ConfigError(file_, toMark(m), message);
  }

  // Counts the documents of a stream, at most two, and where each starts and has content.
  struct DocumentCounter : YAML::EventHandler {
    int documents = 0;
    bool content = false;
    YAML::Mark start, content_mark;
    void OnDocumentStart(const YAML::Mark& m) override {
      ++documents;
      start = m;
      content = false;
    }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void seen(const YAML::Mark& m) {
      if (!content) content_mark = m;
      content = true;
    }
    void OnAlias(const YAML::Mark& m, YAML::anchor_t) override { seen(m); }
    void OnScalar(const YAML::Mark& m, const std::string&, YAML::anchor_t, const std::string&) override { seen(m); }
    void OnSequenceStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
      seen(m);
    }
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark& m, const std::string&, YAML::anchor_t, YAML::EmitterStyle::value) override {
      seen(m);
    }
    void OnMapEnd() override {}
  };

  // One YAML document, not more. (Not YAML::LoadAll: yaml-cpp 0.7 never consumes a stray ','
  // at the top level, and LoadAll then yields empty documents forever -- found by
  // tests/fuzz/config_fuzz.cpp. Two documents at most are read here.)
  void checkOneDocument(const std::string& text) const {
    std::istringstream in(text);
    YAML::Parser parser(in);
    DocumentCounter c;
    if (!parser.HandleNextDocument(c)) return;
    YAML::Mark first_start = c.start;
    if (!parser.HandleNextDocument(c)) return;
    if (c.content) fail(c.content_mark, "expected one YAML document, found more than one (remove the '---')");
    // An empty second document: a '---' (or '...') with nothing after it, or a token the parser
    // cannot place and never consumes (a ',' outside [ ] and { }).
    size_t at = offsetOf(text, c.start);
    bool marker = at < text.size() && (text.compare(at, 3, "---") == 0 || text.compare(at, 3, "...") == 0);
    if (marker && !(c.start.line == first_start.line && c.start.column == first_start.column))
      fail(c.start, "expected one YAML document, found more than one (remove the '---')");
    std::string what = at < text.size() ? "'" + std::string(1, text[at]) + "'" : "end of file";
    fail(c.start,
         "YAML syntax error: unexpected " + what + (what == "','" ? " (a ',' separates items inside [ ] or { })" : ""));
  }

  // The byte offset of a yaml-cpp mark (0-based line and column) in text.
  static size_t offsetOf(const std::string& text, const YAML::Mark& m) {
    if (m.pos >= 0 && static_cast<size_t>(m.pos) <= text.size()) return static_cast<size_t>(m.pos);
    return text.size();
  }

  static std::string child(const std::string& path, const std::string& key) {
    return path.empty() ? key : path + "." + key;
  }

  // The value's mark, or the key's when the value is empty (yaml-cpp then points past it).
  static YAML::Mark valueMark(const Entry& e) {
    if (e.value.IsNull() || e.value.Mark().is_null()) return e.key_mark;
    return e.value.Mark();
  }

  // The entries of a map, in file order; keys must be scalars, duplicates are errors.
  std::vector<Entry> entries(const YAML::Node& map, const std::string& path) const {
    std::vector<Entry> out;
    std::map<std::string, YAML::Mark> seen;
    for (auto it = map.begin(); it != map.end(); ++it) {
      const YAML::Node key = it->first;
      if (!key.IsScalar())
        fail(key.Mark(),
             (path.empty() ? std::string("keys") : path + ": keys") + " must be plain names, got " + describe(key));
      std::string k = key.Scalar();
      auto [pos, inserted] = seen.emplace(k, key.Mark());
      if (!inserted) {
        Mark first = toMark(pos->second);
        fail(key.Mark(), child(path, k) + ": duplicate key (first written at line " + std::to_string(first.line) +
                             ", column " + std::to_string(first.column) + ")");
      }
      out.push_back(Entry{k, key.Mark(), it->second});
    }
    return out;
  }

  // ${NAME} expansion ($${ is a literal "${"). Sets from_env when a variable was substituted.
  std::string expand(const std::string& in, const YAML::Mark& m, const std::string& path, bool& from_env) const {
    std::string out;
    out.reserve(in.size());
    size_t i = 0;
    while (i < in.size()) {
      if (in.compare(i, 3, "$${") == 0) {
        out += "${";
        i += 3;
        continue;
      }
      if (in.compare(i, 2, "${") == 0) {
        size_t close = in.find('}', i + 2);
        if (close == std::string::npos)
          fail(m, path + ": unterminated '${' (write ${NAME}, or $${ for a literal '${')");
        std::string name = in.substr(i + 2, close - i - 2);
        if (name.empty() || !isEnvNameStart(name[0]) || !allChars(name, isEnvNameChar))
          fail(m, path + ": invalid environment variable name '" + name +
                      "' in '${...}' (expected letters, digits and '_', not starting with a digit)");
        const char* v = std::getenv(name.c_str());
        if (!v) fail(m, path + ": environment variable " + name + " is not set");
        out += v;
        from_env = true;
        i = close + 1;
        continue;
      }
      out += in[i++];
    }
    return out;
  }

  // A scalar value, ${ENV}-expanded. `what` describes the expected value for errors.
  std::string scalar(const Entry& e, const std::string& path, const std::string& what, bool* from_env = nullptr) const {
    if (!e.value.IsScalar()) fail(valueMark(e), path + ": expected " + what + ", got " + describe(e.value));
    bool env = false;
    std::string v = expand(e.value.Scalar(), e.value.Mark(), path, env);
    if (from_env) *from_env = env;
    return v;
  }

  std::string string(const Entry& e, const std::string& path) const { return scalar(e, path, "a string"); }

  std::string oneOf(const Entry& e, const std::string& path, const std::vector<std::string>& allowed) const {
    std::string what = "one of " + join(allowed, ", ");
    std::string v = scalar(e, path, what);
    for (const std::string& a : allowed)
      if (v == a) return v;
    fail(e.value.Mark(), path + ": expected " + what + ", got '" + v + "'");
  }

  uint32_t integer(const Entry& e, const std::string& path, uint32_t min, uint32_t max) const {
    std::string what = "an integer between " + std::to_string(min) + " and " + std::to_string(max);
    std::string v = scalar(e, path, what);
    bool digits = !v.empty() && v.size() <= 12;
    for (char c : v) digits = digits && c >= '0' && c <= '9';
    if (!digits) fail(e.value.Mark(), path + ": expected " + what + ", got '" + v + "'");
    unsigned long long n = std::stoull(v);
    if (n < min || n > max) fail(e.value.Mark(), path + ": expected " + what + ", got " + v);
    return static_cast<uint32_t>(n);
  }

  // Seconds: a whole number, or a number with a unit: 90s, 5m, 1h. 0 = off.
  uint32_t duration(const Entry& e, const std::string& path) const {
    std::string what = "a duration in seconds, or with a unit (e.g. 300, 90s, 5m, 1h; 0 = off)";
    std::string v = scalar(e, path, what);
    uint64_t mult = 1;
    std::string num = v;
    if (!v.empty() && (v.back() == 's' || v.back() == 'm' || v.back() == 'h')) {
      mult = v.back() == 'm' ? 60 : v.back() == 'h' ? 3600 : 1;
      num = v.substr(0, v.size() - 1);
    }
    bool digits = !num.empty() && num.size() <= 9;
    for (char c : num) digits = digits && c >= '0' && c <= '9';
    if (!digits) fail(e.value.Mark(), path + ": expected " + what + ", got '" + v + "'");
    uint64_t n = std::stoull(num) * mult;
    if (n > 7 * 24 * 3600) fail(e.value.Mark(), path + ": at most 7 days, got '" + v + "'");
    return static_cast<uint32_t>(n);
  }

  bool boolean(const Entry& e, const std::string& path) const {
    std::string v = scalar(e, path, "true or false");
    for (const char* t : {"true", "True", "TRUE", "yes", "on"})
      if (v == t) return true;
    for (const char* f : {"false", "False", "FALSE", "no", "off"})
      if (v == f) return false;
    fail(e.value.Mark(), path + ": expected true or false, got '" + v + "'");
  }

  void requireMap(const Entry& e, const std::string& path, const std::string& example) const {
    if (!e.value.IsMap()) fail(valueMark(e), path + ": expected a map" + example + ", got " + describe(e.value));
  }

  // listen: host:port (IPv6 as [::1]:port), port 0..65535; empty disables the listener.
  // token: the bearer token (16 characters at least, no spaces); allowed_hosts: a list.
  void parseLimits(const Entry& e, Limits& l) const {
    requireMap(e, "limits", " (e.g. { fins_per_session: 64 })");
    struct Key {
      const char* name;
      uint32_t* u32;
      uint64_t* u64;
      uint32_t min, max;
    };
    const Key keys[] = {
        {"fins_per_session", &l.fins_per_session, nullptr, 1, 1000000},
        {"fins_per_endpoint", &l.fins_per_endpoint, nullptr, 1, 10000000},
        {"capabilities_per_register", &l.capabilities_per_register, nullptr, 1, 100000},
        {"echo_window_entries", &l.echo_window_entries, nullptr, 16, 16777216},
        {"pending_registers", &l.pending_registers, nullptr, 1, 1000000},
        {"pending_followers", &l.pending_followers, nullptr, 0, 1000000},
        {"session_queue_messages", &l.session_queue_messages, nullptr, 1, 16777216},
        {"session_queue_bytes", nullptr, &l.session_queue_bytes, 1024, 4294967295u},
        {"slow_consumer_grace_ms", &l.slow_consumer_grace_ms, nullptr, 0, 3600000},
        {"dead_letter_bytes", nullptr, &l.dead_letter_bytes, 0, 4294967295u},
        {"restored_backlog", &l.restored_backlog, nullptr, 0, 1000000},
        {"restored_backlog_ttl_ms", &l.restored_backlog_ttl_ms, nullptr, 1, 3600000},
        {"state_write_delay_ms", &l.state_write_delay_ms, nullptr, 0, 60000},
    };
    for (const Entry& a : entries(e.value, "limits")) {
      const Key* k = nullptr;
      for (auto& c : keys)
        if (a.key == c.name) k = &c;
      if (!k) {
        std::string all;
        for (auto& c : keys) all += std::string(all.empty() ? "" : ", ") + c.name;
        fail(a.key_mark, "limits." + a.key + ": unknown key (expected " + all + ")");
      }
      uint32_t v = integer(a, "limits." + a.key, k->min, k->max);
      if (k->u32)
        *k->u32 = v;
      else
        *k->u64 = v;
    }
  }

  void parseCluster(const Entry& e, ClusterConfig& c) const {
    requireMap(e, "cluster", " (e.g. { registry_endpoint: bus })");
    for (const Entry& a : entries(e.value, "cluster")) {
      if (a.key == "registry_endpoint") {
        c.registry_endpoint = string(a, "cluster.registry_endpoint");
        c.mark = toMark(a.value.Mark());
      } else {
        fail(a.key_mark, "cluster." + a.key + ": unknown key (expected registry_endpoint)");
      }
    }
  }

  void checkCluster(const Config& cfg) const {
    const std::string& name = cfg.cluster.registry_endpoint;
    if (name.empty()) return;
    for (const EndpointConfig& ep : cfg.endpoints)
      if (ep.name == name) return;
    std::string names;
    for (const EndpointConfig& ep : cfg.endpoints) names += (names.empty() ? "" : ", ") + ep.name;
    throw ConfigError(file_, cfg.cluster.mark,
                      "cluster.registry_endpoint: unknown endpoint '" + name + "' (endpoints: " + names + ")");
  }

  void parseMigration(const Entry& e, MigrationConfig& m) const {
    requireMap(e, "migration", " (e.g. { from: mqtt_fins, to: kafka_fins })");
    m.mark = toMark(e.key_mark);
    bool have_from = false, have_to = false;
    for (const Entry& a : entries(e.value, "migration")) {
      if (a.key == "from") {
        m.from = string(a, "migration.from");
        m.from_mark = toMark(a.value.Mark());
        have_from = true;
      } else if (a.key == "to") {
        m.to = string(a, "migration.to");
        m.to_mark = toMark(a.value.Mark());
        have_to = true;
      } else if (a.key == "active") {
        m.to_active = oneOf(a, "migration.active", {"from", "to"}) == "to";
      } else if (a.key == "mirror") {
        m.mirror = boolean(a, "migration.mirror");
      } else if (a.key == "verify_max_age_s") {
        m.verify_max_age_s = integer(a, "migration.verify_max_age_s", 1, 7 * 24 * 3600);
      } else {
        fail(a.key_mark, "migration." + a.key + ": unknown key (expected from, to, active, mirror, verify_max_age_s)");
      }
    }
    if (!have_from || m.from.empty()) fail(e.key_mark, "migration: 'from' is required (the endpoint the fins are on now)");
    if (!have_to || m.to.empty()) fail(e.key_mark, "migration: 'to' is required (the endpoint the fins move to)");
  }

  void checkMigration(const Config& cfg) const {
    const MigrationConfig& m = cfg.migration;
    if (!m.configured()) return;
    if (m.from == m.to) throw ConfigError(file_, m.to_mark, "migration.to: must name another endpoint than 'from'");
    std::string names;
    for (const EndpointConfig& ep : cfg.endpoints) names += (names.empty() ? "" : ", ") + ep.name;
    auto check = [&](const std::string& name, Mark mark, const char* key) {
      for (const EndpointConfig& ep : cfg.endpoints)
        if (ep.name == name) {
          if (ep.role != Role::Fins)
            throw ConfigError(file_, mark,
                              std::string("migration.") + key + ": endpoint '" + name + "' has role " +
                                  toString(ep.role) + "; both sides of a migration must be role fins");
          return;
        }
      throw ConfigError(file_, mark,
                        std::string("migration.") + key + ": unknown endpoint '" + name + "' (endpoints: " + names + ")");
    };
    check(m.from, m.from_mark, "from");
    check(m.to, m.to_mark, "to");
  }

  void parseAdmin(const Entry& e, AdminConfig& admin) const {
    requireMap(e, "admin", " (e.g. { listen: 127.0.0.1:9400, token: ${FINGATE_ADMIN_TOKEN} })");
    admin.mark = toMark(e.key_mark);
    for (const Entry& a : entries(e.value, "admin")) {
      if (a.key == "listen") {
        std::string v = string(a, "admin.listen");
        if (!v.empty()) {
          size_t colon = v.rfind(':');
          std::string port = colon == std::string::npos ? "" : v.substr(colon + 1);
          bool ok = colon != std::string::npos && colon > 0 && !port.empty() && port.size() <= 5;
          for (char c : port) ok = ok && c >= '0' && c <= '9';
          if (ok) ok = std::stoul(port) <= 65535;
          if (!ok)
            fail(a.value.Mark(),
                 "admin.listen: expected host:port (e.g. 127.0.0.1:9400) or \"\" for no admin "
                 "listener, got '" +
                     v + "'");
        }
        admin.listen = v;
        admin.mark = toMark(a.value.Mark());
      } else if (a.key == "token") {
        std::string v = scalar(a, "admin.token", "a string (a bearer token; ${ENV_NAME} keeps it out of the file)");
        // The value is a secret: errors never quote it.
        for (char c : v)
          if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7F)
            fail(a.value.Mark(), "admin.token: must not contain spaces or control characters");
        if (!v.empty() && v.size() < 16)
          fail(a.value.Mark(), "admin.token: too short (" + std::to_string(v.size()) +
                                   " characters; use at least 16, e.g. the output of `openssl rand -hex 32`)");
        admin.token = v;
        admin.token_mark = toMark(a.value.Mark());
      } else if (a.key == "allowed_hosts") {
        if (!a.value.IsSequence())
          fail(valueMark(a),
               "admin.allowed_hosts: expected a list of host names (e.g. [admin.example.org, "
               "\"localhost:8000\"]), got " +
                   describe(a.value));
        for (size_t i = 0; i < a.value.size(); ++i) {
          const YAML::Node item = a.value[i];
          const std::string path = "admin.allowed_hosts[" + std::to_string(i) + "]";
          YAML::Mark m = item.Mark().is_null() ? a.key_mark : item.Mark();
          if (!item.IsScalar()) fail(m, path + ": expected a host name or host:port, got " + describe(item));
          bool env = false;
          std::string h = expand(item.Scalar(), m, path, env);
          bool ok = !h.empty() && h.size() <= 255;
          for (char c : h)
            ok =
                ok && static_cast<unsigned char>(c) > 0x20 && c != 0x7F && c != '/' && c != '@' && c != '?' && c != '#';
          if (!ok) fail(m, path + ": expected a host name or host:port (e.g. admin.example.org), got '" + h + "'");
          admin.allowed_hosts.push_back(h);
        }
      } else {
        fail(a.key_mark, "admin." + a.key + ": unknown key (expected listen, token, allowed_hosts)");
      }
    }
  }

  void parseEndpoints(const Entry& e, std::vector<EndpointConfig>& out) const {
    if (!e.value.IsMap())
      fail(valueMark(e), "endpoints: expected a map of endpoint name to its settings, got " + describe(e.value));
    for (const Entry& ep : entries(e.value, "endpoints")) {
      if (!allChars(ep.key, isEndpointNameChar))
        fail(ep.key_mark, "endpoints: invalid endpoint name '" + ep.key + "' (expected letters, digits, '_' or '-')");
      out.push_back(parseEndpoint(ep));
    }
    if (out.empty()) fail(valueMark(e), "endpoints: expected at least one endpoint");
  }

  EndpointConfig parseEndpoint(const Entry& ep) const {
    const std::string path = "endpoints." + ep.key;
    EndpointConfig cfg;
    cfg.name = ep.key;
    cfg.mark = toMark(ep.key_mark);
    requireMap(ep, path, " with at least plugin and role");
    bool have_plugin = false, have_role = false;
    YAML::Mark compat_mark;
    std::map<std::string, YAML::Mark> flat_seen;  // flattened option keys, for tls.x vs tls: {x}
    for (const Entry& kv : entries(ep.value, path)) {
      const std::string kpath = path + "." + kv.key;
      if (kv.key == "plugin") {
        cfg.plugin = scalar(kv, kpath, "a plugin name");
        if (!allChars(cfg.plugin, isPluginNameChar))
          fail(kv.value.Mark(),
               kpath + ": expected a plugin name of a-z, 0-9, '_' or '-' (e.g. tcp, mqtt), got '" + cfg.plugin + "'");
        cfg.plugin_mark = toMark(kv.value.Mark());
        have_plugin = true;
      } else if (kv.key == "role") {
        std::string r = oneOf(kv, kpath, {"orchestrator", "fins", "bridge"});
        cfg.role = r == "orchestrator" ? Role::Orchestrator : r == "fins" ? Role::Fins : Role::Bridge;
        have_role = true;
      } else if (kv.key == "required") {
        cfg.required = boolean(kv, kpath);
      } else if (kv.key == "compat") {
        std::string c = oneOf(kv, kpath, {"none", "python-fin"});
        cfg.compat = c == "none" ? "" : c;
        compat_mark = kv.key_mark;
      } else {
        option(kv, kv.key, kpath, cfg, flat_seen);
      }
    }
    if (!have_plugin) fail(ep.key_mark, path + ": missing required key 'plugin' (tcp, mqtt, zmq, kafka, http, ...)");
    if (!have_role) fail(ep.key_mark, path + ": missing required key 'role' (orchestrator, fins or bridge)");
    if (!cfg.compat.empty() && cfg.role != Role::Fins)
      fail(compat_mark, path + ".compat: applies to fins endpoints only (this one is " + toString(cfg.role) + ")");
    return cfg;
  }

  // A plugin option: scalars as text, nested maps flattened with '.'.
  void option(const Entry& kv, const std::string& key, const std::string& kpath, EndpointConfig& cfg,
              std::map<std::string, YAML::Mark>& flat_seen) const {
    if (!allChars(kv.key, isOptionKeyChar))
      fail(kv.key_mark, kpath + ": invalid key (expected letters, digits, '_', '-' or '.')");
    if (kv.value.IsMap()) {
      for (const Entry& sub : entries(kv.value, kpath))
        option(sub, key + "." + sub.key, kpath + "." + sub.key, cfg, flat_seen);
      return;
    }
    if (!kv.value.IsScalar()) fail(valueMark(kv), kpath + ": expected a scalar or a map, got " + describe(kv.value));
    auto [pos, inserted] = flat_seen.emplace(key, kv.key_mark);
    if (!inserted) {
      Mark first = toMark(pos->second);
      fail(kv.key_mark, kpath + ": duplicate key (first written at line " + std::to_string(first.line) + ", column " +
                            std::to_string(first.column) + ")");
    }
    bool from_env = false;
    std::string value = scalar(kv, kpath, "a scalar or a map", &from_env);
    cfg.options.push_back(KeyValue{key, value, toMark(kv.key_mark), from_env || isSecretKey(key)});
  }

  void parseRoutes(const Entry& e, std::vector<RouteConfig>& out) {
    if (e.value.IsNull()) return;  // `routes:` with nothing = no routes
    if (!e.value.IsSequence())
      fail(valueMark(e),
           "routes: expected a list of { from: {endpoint, topic}, to: {endpoint, topic} }, got " + describe(e.value));
    for (size_t i = 0; i < e.value.size(); ++i) {
      const YAML::Node item = e.value[i];
      const std::string path = "routes[" + std::to_string(i) + "]";
      YAML::Mark item_mark = item.Mark().is_null() ? e.key_mark : item.Mark();
      if (!item.IsMap())
        fail(item_mark,
             path + ": expected a map { from: {endpoint, topic}, to: {endpoint, topic} }, got " + describe(item));
      RouteConfig r;
      RouteMarks marks;
      r.mark = toMark(item_mark);
      bool have_from = false, have_to = false;
      for (const Entry& side : entries(item, path)) {
        const std::string spath = path + "." + side.key;
        bool from = side.key == "from";
        if (!from && side.key != "to") fail(side.key_mark, spath + ": unknown key (expected from, to)");
        requireMap(side, spath, from ? " { endpoint, topic }" : " { endpoint, topic }");
        (from ? have_from : have_to) = true;
        bool have_endpoint = false, have_topic = false;
        for (const Entry& f : entries(side.value, spath)) {
          const std::string fpath = spath + "." + f.key;
          if (f.key == "endpoint") {
            (from ? r.from_endpoint : r.to_endpoint) = scalar(f, fpath, "an endpoint name");
            (from ? marks.from_endpoint : marks.to_endpoint) = f.value.Mark();
            have_endpoint = true;
          } else if (f.key == "topic") {
            std::string t = scalar(f, fpath, from ? "an MQTT-style topic filter" : "a topic template");
            if (from && !isValidFilter(t))
              fail(f.value.Mark(), fpath +
                                       ": expected an MQTT-style topic filter ('+' a whole level, '#' only as "
                                       "the whole last level), got '" +
                                       t + "'");
            if (!from && (t.empty() || t.find_first_of("+#") != std::string::npos))
              fail(f.value.Mark(), fpath +
                                       ": expected a topic template without '+' or '#' (\"{topic}\" is the "
                                       "inbound topic), got '" +
                                       t + "'");
            (from ? r.from_topic : r.to_topic) = t;
            have_topic = true;
          } else {
            fail(f.key_mark, fpath + ": unknown key (expected endpoint, topic)");
          }
        }
        if (!have_endpoint) fail(side.key_mark, spath + ": missing required key 'endpoint'");
        if (from && !have_topic)
          fail(side.key_mark, spath + ": missing required key 'topic' (an MQTT-style filter, e.g. \"#\")");
        if (!from && !have_topic) r.to_topic = "{topic}";
      }
      if (!have_from) fail(item_mark, path + ": missing required key 'from'");
      if (!have_to) fail(item_mark, path + ": missing required key 'to'");
      out.push_back(std::move(r));
      route_marks_.push_back(marks);
    }
  }

  void checkRoutes(const Config& cfg) const {
    std::vector<std::string> names;
    for (const EndpointConfig& ep : cfg.endpoints) names.push_back(ep.name);
    auto known = [&](const std::string& n) {
      for (const std::string& x : names)
        if (x == n) return true;
      return false;
    };
    for (size_t i = 0; i < cfg.routes.size(); ++i) {
      const RouteConfig& r = cfg.routes[i];
      const std::string path = "routes[" + std::to_string(i) + "]";
      if (!known(r.from_endpoint))
        fail(route_marks_[i].from_endpoint,
             path + ".from.endpoint: unknown endpoint '" + r.from_endpoint + "' (defined: " + join(names, ", ") + ")");
      if (!known(r.to_endpoint))
        fail(route_marks_[i].to_endpoint,
             path + ".to.endpoint: unknown endpoint '" + r.to_endpoint + "' (defined: " + join(names, ", ") + ")");
    }
  }

  std::string file_;
  std::vector<RouteMarks> route_marks_;
};

}  // namespace

Config parseConfig(const std::string& text, const std::string& file_name) { return Parser(file_name).parse(text); }

Config loadConfig(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) throw ConfigError::cannotRead(path, std::strerror(errno));
  std::string text;
  char buf[65536];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
  int err = std::ferror(f) ? errno : 0;
  std::fclose(f);
  if (err) throw ConfigError::cannotRead(path, std::strerror(err));
  return parseConfig(text, path);
}

}  // namespace fingate
