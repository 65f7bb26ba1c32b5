// http: fingate's HTTP transport (DESIGN §5; the client-facing contract is in docs/transports.md,
// section "HTTP"). The only translation unit of the plugin that includes httplib.h.
//
// Server side (`listen`):
//   POST /v1/publish/{topic}   body = the payload. 202 once the core has taken it, answered when
//                              its outcome is known (bounded by publish_wait_ms), with the outcome
//                              in the Fin-Outcome header; 422 when the gateway's rules refused it;
//                              503 + Retry-After on back-pressure; 413/400/411/415 on bad bodies.
//   GET  /v1/poll/{topic}?wait=S  long poll: 200 + one payload + Fin-Topic, or 204 after S s.
//   GET  /v1/stats             the plugin's counters (JSON).
// Client side (`webhook`): every message is POSTed to the URL template, {topic} percent-encoded,
// by a few workers with keep-alive clients; one topic in flight at a time, so a failing topic
// retries (jittered backoff) without holding the others.
//
// Connections and threads: cpp-httplib 0.11.4 runs each connection on one thread of its task
// queue for the connection's whole life. The plugin gives it its own queue (ConnPool), which
// grows up to max_connections + kSpareThreads threads and wraps every connection's job, so the
// plugin knows exactly when a connection opens and closes (a Conn, reached from its thread
// through a thread_local). A long poll holds its connection's thread while it waits: max_polls
// (and max_polls_per_client) refuse with 429 before the thread pool can run out.
//
// Sessions: without per-fin tokens every request is session 0 (the endpoint is the binding, as
// on a broker transport). With `tokens` (fin id -> token) each token is a session of its own,
// opened at start: the core's fins-side rules then apply per token (publish only on `soarca`
// and on ids bound to that token; a poll of another token's ids is refused), and a register
// posted with a fin's token must carry that fin's id.
//
// Locking: one mutex (mu_) guards connections, subscriptions, queued messages, the backlog and
// the counters of polls; host calls are never made while it is held. Calls back into the host
// that would happen inside publish/close_session are deferred to the housekeeping thread,
// which also expires the backlog.
#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <strings.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>
#include <fstream>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "json_check.hpp"

namespace fingate {
namespace {

using Clock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;
using sdk::ConfigError;
using sdk::str;

constexpr size_t kSpareThreads = 32;     // threads beyond max_connections: refuse the excess with a status
constexpr size_t kSyntheticHeaders = 4;  // httplib adds REMOTE_ADDR/PORT, LOCAL_ADDR/PORT to every request
constexpr size_t kMaxTopicBytes = 1024;  // as the core's id limit
constexpr size_t kMaxLogTopic = 120;     // topic bytes quoted in log lines and errors
constexpr int kHousekeepMs = 50;         // backlog expiry resolution
const std::string kSoarca = "soarca";

int64_t nowMs() { return std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count(); }

std::string printable(std::string_view s, size_t max = kMaxLogTopic) { return sdk::printable(s, max); }

std::string jsonEscape(std::string_view s) {
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += ch;
    } else if (c < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += ch;
    }
  }
  return out;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Percent-decodes once. A '%' not followed by two hex digits is an error ('+' stays '+').
std::optional<std::string> percentDecode(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out += s[i];
      continue;
    }
    if (i + 2 >= s.size()) return std::nullopt;
    const int hi = hexValue(s[i + 1]), lo = hexValue(s[i + 2]);
    if (hi < 0 || lo < 0) return std::nullopt;
    out += static_cast<char>(hi * 16 + lo);
    i += 2;
  }
  return out;
}

// Every byte but the unreserved ones (RFC 3986) as %XX.
std::string percentEncode(std::string_view s) {
  static const char* kHex = "0123456789ABCDEF";
  std::string out;
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~') {
      out += ch;
    } else {
      out += '%';
      out += kHex[c >> 4];
      out += kHex[c & 15];
    }
  }
  return out;
}

// A decoded topic as the gateway accepts it; empty string = fine, else why not.
std::string topicProblem(std::string_view t) {
  if (t.empty()) return "the topic is empty";
  if (t.size() > kMaxTopicBytes) return "the topic is longer than 1024 bytes";
  for (char ch : t) {
    const auto c = static_cast<unsigned char>(ch);
    if (c == 0) return "the topic contains NUL";
    if (c == '\r' || c == '\n') return "the topic contains CR or LF";
    if (c < 0x20 || c == 0x7f) return "the topic contains a control character";
    if (c == '+' || c == '#') return "the topic contains a wildcard ('+' or '#')";
  }
  if (!isValidUtf8(t)) return "the topic is not valid UTF-8";
  if (t.front() == '/' || t.back() == '/') return "the topic starts or ends with '/'";
  size_t start = 0;
  while (true) {
    const size_t end = t.find('/', start);
    const std::string_view level =
        t.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (level.empty()) return "the topic contains an empty level ('//')";
    if (level == "." || level == "..") return "the topic contains a '.' or '..' level";
    if (end == std::string_view::npos) break;
    start = end + 1;
  }
  return "";
}

using Digest = std::array<unsigned char, 32>;
Digest sha256(std::string_view s) {
  Digest d{};
  unsigned int n = 0;
  EVP_Digest(s.data(), s.size(), d.data(), &n, EVP_sha256(), nullptr);
  return d;
}

// ---- configuration -----------------------------------------------------------------------

struct WebhookUrl {
  std::string base;  // scheme://host:port (what httplib::Client takes)
  std::string path;  // path and query with {topic}
  bool tls = false;
};

WebhookUrl parseWebhook(const std::string& v) {
  WebhookUrl w;
  std::string rest;
  if (v.rfind("http://", 0) == 0) {
    rest = v.substr(7);
  } else if (v.rfind("https://", 0) == 0) {
    rest = v.substr(8);
    w.tls = true;
  } else {
    throw ConfigError("webhook", "expected an http:// or https:// URL template, got '" + v + "'");
  }
  const size_t slash = rest.find('/');
  const std::string authority = rest.substr(0, slash);
  w.path = slash == std::string::npos ? "/" : rest.substr(slash);
  if (authority.empty()) throw ConfigError("webhook", "the host is missing in '" + v + "'");
  if (authority.find('@') != std::string::npos)
    throw ConfigError("webhook", "credentials in the URL are not allowed: use webhook_token");
  if (authority.find('{') != std::string::npos)
    throw ConfigError("webhook", "{topic} may only appear in the path or query, not in the host");
  if (w.path.find("{topic}") == std::string::npos)
    throw ConfigError("webhook", "the URL template must contain {topic}, e.g. http://127.0.0.1:8080/hook/{topic}");
  for (char c : w.path)
    if (static_cast<unsigned char>(c) <= 0x20 || c == 0x7f)
      throw ConfigError("webhook", "the URL template contains a space or control character");
  w.base = (w.tls ? "https://" : "http://") + authority;
  return w;
}

struct Settings {
  bool listen = false;
  sdk::HostPort address;
  std::string token;                                            // shared bearer token (session 0)
  std::vector<std::pair<std::string, std::string>> fin_tokens;  // fin id -> token
  bool webhook = false;
  WebhookUrl hook;
  std::string webhook_token;
  size_t max_body_bytes = 1u << 20;
  uint32_t max_wait_s = 60;
  uint32_t default_wait_s = 30;
  uint32_t publish_wait_ms = 5000;
  uint32_t retry_after_s = 1;
  uint32_t backlog_ttl_ms = 10000;
  size_t backlog_max = 10000;
  size_t backlog_max_bytes = 64u << 20;
  size_t connection_queue_max = 1000;
  size_t session_buffer_bytes = 256 * 1024;
  size_t max_connections = 512;
  size_t max_connections_per_client = 128;
  size_t max_polls = 256;
  size_t max_polls_per_client = 64;
  size_t max_topics_per_connection = 64;
  size_t max_headers = 64;
  size_t max_header_bytes = 16384;
  size_t max_url_bytes = 4096;
  uint32_t idle_timeout_s = 5;
  uint32_t io_timeout_s = 5;
  size_t keepalive_requests = 100000;
  // webhook
  uint32_t webhook_retries = 5;
  uint32_t webhook_backoff_ms = 200;
  uint32_t webhook_backoff_max_ms = 5000;
  uint32_t webhook_timeout_ms = 5000;
  size_t webhook_workers = 4;
  size_t webhook_queue_max = 1000;
  // tls
  std::string cert_file, key_file, client_ca_file, ca_file;
  bool tls_verify = true;
};

#define FG_HTTP_KEYS                                                                                                \
  "listen", "token", "tokens.*", "tokens_file", "webhook", "webhook_token", "max_body_bytes", "max_wait_s",         \
      "default_wait_s", "publish_wait_ms", "retry_after_s", "backlog_ttl_ms", "backlog_max", "backlog_max_bytes",   \
      "connection_queue_max", "session_buffer_bytes", "max_connections", "max_connections_per_client", "max_polls", \
      "max_polls_per_client", "max_topics_per_connection", "max_headers", "max_header_bytes", "max_url_bytes",      \
      "idle_timeout_s", "io_timeout_s", "keepalive_requests", "webhook_retries", "webhook_backoff_ms",              \
      "webhook_backoff_max_ms", "webhook_timeout_ms", "webhook_workers", "webhook_queue_max", "tls.cert_file",      \
      "tls.key_file", "tls.client_ca_file", "tls.ca_file", "tls.verify"

const char* const kKnownKeys[] = {FG_HTTP_KEYS, "plugin", "role"};

void addFinToken(Settings& s, const std::string& key, const std::string& fin, const std::string& token) {
  if (fin.empty()) throw ConfigError(key, "a per-fin token needs a fin id");
  if (token.size() < 16) throw ConfigError(key, "a token must have at least 16 characters");
  if (token.find_first_of("% \t\r\n") != std::string::npos)
    throw ConfigError(key, "a token must not contain '%' or white space (cpp-httplib percent-decodes header values)");
  for (auto& [f, t] : s.fin_tokens) {
    if (f == fin) throw ConfigError(key, "fin '" + printable(fin) + "' has two tokens");
    if (t == token) throw ConfigError(key, "fins '" + printable(f) + "' and '" + printable(fin) + "' share a token");
  }
  s.fin_tokens.emplace_back(fin, token);
}

Settings parseSettings(const sdk::Config& cfg) {
  cfg.rejectUnknown(kKnownKeys, "http");
  Settings s;
  s.listen = cfg.has("listen");
  if (s.listen) s.address = sdk::parseHostPort("listen", cfg.get("listen"), true);
  s.webhook = cfg.has("webhook");
  if (s.webhook) s.hook = parseWebhook(cfg.get("webhook"));
  if (!s.listen && !s.webhook)
    throw ConfigError("listen", "one of listen (host:port) or webhook (a URL template) is required");
  s.token = cfg.get("token");
  if (cfg.has("token") && s.token.size() < 16)
    throw ConfigError("token", "must have at least 16 characters (openssl rand -hex 32)");
  if (s.token.find_first_of("% \t\r\n") != std::string::npos)
    throw ConfigError("token", "must not contain '%' or white space (cpp-httplib percent-decodes header values)");
  for (const auto& [key, value] : cfg.all())
    if (key.rfind("tokens.", 0) == 0) addFinToken(s, key, key.substr(7), value);
  if (cfg.has("tokens_file")) {
    const std::string path = cfg.get("tokens_file");
    std::ifstream in(path);
    if (!in) throw ConfigError("tokens_file", "cannot read '" + path + "'");
    std::string line;
    int n = 0;
    while (std::getline(in, line)) {
      ++n;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const size_t first = line.find_first_not_of(" \t");
      if (first == std::string::npos || line[first] == '#') continue;
      const size_t sep = line.find_first_of(" \t", first);
      const size_t tok = sep == std::string::npos ? std::string::npos : line.find_first_not_of(" \t", sep);
      if (tok == std::string::npos)
        throw ConfigError("tokens_file", path + ":" + std::to_string(n) + ": expected '<fin id> <token>'");
      std::string token = line.substr(tok);
      while (!token.empty() && (token.back() == ' ' || token.back() == '\t')) token.pop_back();
      addFinToken(s, "tokens_file", line.substr(first, sep - first), token);
    }
  }
  for (auto& [f, t] : s.fin_tokens)
    if (!s.token.empty() && t == s.token)
      throw ConfigError("token", "the shared token equals the token of fin '" + printable(f) + "'");
  s.webhook_token = cfg.get("webhook_token");
  s.max_body_bytes = static_cast<size_t>(cfg.getInt("max_body_bytes", 1 << 20, 16, 1LL << 30));
  s.max_wait_s = static_cast<uint32_t>(cfg.getInt("max_wait_s", 60, 1, 3600));
  s.default_wait_s =
      static_cast<uint32_t>(cfg.getInt("default_wait_s", std::min<long long>(30, s.max_wait_s), 0, s.max_wait_s));
  s.publish_wait_ms = static_cast<uint32_t>(cfg.getInt("publish_wait_ms", 5000, 0, 600000));
  s.retry_after_s = static_cast<uint32_t>(cfg.getInt("retry_after_s", 1, 1, 3600));
  s.backlog_ttl_ms = static_cast<uint32_t>(cfg.getInt("backlog_ttl_ms", 10000, 1, 3600000));
  s.backlog_max = static_cast<size_t>(cfg.getInt("backlog_max", 10000, 1, 10000000));
  s.backlog_max_bytes = static_cast<size_t>(cfg.getInt("backlog_max_bytes", 64LL << 20, 1024, 1LL << 40));
  s.connection_queue_max = static_cast<size_t>(cfg.getInt("connection_queue_max", 1000, 1, 1000000));
  s.session_buffer_bytes = static_cast<size_t>(cfg.getInt("session_buffer_bytes", 256 * 1024, 1024, 1LL << 40));
  s.max_connections = static_cast<size_t>(cfg.getInt("max_connections", 512, 1, 20000));
  s.max_connections_per_client = static_cast<size_t>(cfg.getInt("max_connections_per_client", 128, 1, 20000));
  s.max_polls = static_cast<size_t>(cfg.getInt("max_polls", 256, 1, 20000));
  s.max_polls_per_client = static_cast<size_t>(cfg.getInt("max_polls_per_client", 64, 1, 20000));
  if (s.max_polls >= s.max_connections)
    throw ConfigError("max_polls", "must be below max_connections (" + std::to_string(s.max_connections) +
                                       "): every poll holds a connection, and publishes need connections too");
  s.max_topics_per_connection = static_cast<size_t>(cfg.getInt("max_topics_per_connection", 64, 1, 100000));
  s.max_headers = static_cast<size_t>(cfg.getInt("max_headers", 64, 1, 10000));
  s.max_header_bytes = static_cast<size_t>(cfg.getInt("max_header_bytes", 16384, 256, 1 << 20));
  s.max_url_bytes = static_cast<size_t>(cfg.getInt("max_url_bytes", 4096, 64, 8192));
  s.idle_timeout_s = static_cast<uint32_t>(cfg.getInt("idle_timeout_s", 5, 1, 3600));
  s.io_timeout_s = static_cast<uint32_t>(cfg.getInt("io_timeout_s", 5, 1, 3600));
  s.keepalive_requests = static_cast<size_t>(cfg.getInt("keepalive_requests", 100000, 1, 1LL << 40));
  s.webhook_retries = static_cast<uint32_t>(cfg.getInt("webhook_retries", 5, 0, 1000));
  s.webhook_backoff_ms = static_cast<uint32_t>(cfg.getInt("webhook_backoff_ms", 200, 1, 3600000));
  s.webhook_backoff_max_ms = static_cast<uint32_t>(cfg.getInt("webhook_backoff_max_ms", 5000, 1, 3600000));
  if (s.webhook_backoff_max_ms < s.webhook_backoff_ms) s.webhook_backoff_max_ms = s.webhook_backoff_ms;
  s.webhook_timeout_ms = static_cast<uint32_t>(cfg.getInt("webhook_timeout_ms", 5000, 10, 600000));
  s.webhook_workers = static_cast<size_t>(cfg.getInt("webhook_workers", 4, 1, 256));
  s.webhook_queue_max = static_cast<size_t>(cfg.getInt("webhook_queue_max", 1000, 1, 10000000));
  s.cert_file = cfg.get("tls.cert_file");
  s.key_file = cfg.get("tls.key_file");
  s.client_ca_file = cfg.get("tls.client_ca_file");
  s.ca_file = cfg.get("tls.ca_file");
  s.tls_verify = cfg.getBool("tls.verify", true);
  if (s.cert_file.empty() != s.key_file.empty())
    throw ConfigError(s.cert_file.empty() ? "tls.cert_file" : "tls.key_file",
                      "TLS needs both tls.cert_file and tls.key_file");
  if (!s.client_ca_file.empty() && s.cert_file.empty())
    throw ConfigError("tls.client_ca_file", "client certificates (mTLS) need tls.cert_file and tls.key_file too");
  if (!s.cert_file.empty() && !s.listen)
    throw ConfigError("tls.cert_file", "applies to the server side: set listen too");
  if (!s.ca_file.empty() && !(s.webhook && s.hook.tls))
    throw ConfigError("tls.ca_file", "verifies an https:// webhook; this endpoint has none");
  return s;
}

// ---- refusals, counted by reason ---------------------------------------------------------

enum Reason : size_t {
  kUnauthorized,
  kBodyTooLarge,
  kNotJson,
  kBadBody,
  kLengthRequired,
  kUnsupportedEncoding,
  kBadTopic,
  kBadWait,
  kMethod,
  kNotFound,
  kTooManyHeaders,
  kUrlTooLong,
  kBadRequest,
  kTooManyConnections,
  kTooManyPolls,
  kTooManyTopics,
  kSubscribeRefused,
  kTokenMismatch,
  kBackPressure,
  kHostRefused,
  kRefused,
  kStopping,
  kReasonCount
};
const char* const kReasonNames[kReasonCount] = {"unauthorized",       "body_too_large",
                                                "not_json",           "bad_body",
                                                "length_required",    "unsupported_encoding",
                                                "bad_topic",          "bad_wait",
                                                "method_not_allowed", "not_found",
                                                "too_many_headers",   "url_too_long",
                                                "bad_request",        "too_many_connections",
                                                "too_many_polls",     "too_many_topics",
                                                "subscribe_refused",  "token_fin_mismatch",
                                                "back_pressure",      "host_refused",
                                                "refused_by_gateway", "stopping"};

// ---- queued messages ---------------------------------------------------------------------

// The outcome of one publish that went to several connections.
using Tracker = sdk::FanOutDelivery;  // handed = written to a poller

struct Item {
  std::string topic;
  std::shared_ptr<const std::string> payload;
  std::shared_ptr<Tracker> tracker;
  uint64_t session = 0;  // the publish's session (per-session buffer accounting)
  uint64_t seq = 0;      // publish order
  Clock::time_point deadline;
};

// One client connection (its thread's whole life). Fields are guarded by the plugin's mu_.
struct Conn {
  uint64_t id = 0;
  std::string client;                         // remote address, known from the first request
  bool counted = false;                       // counted in per-client connections
  bool over_limit = false;                    // refused: every request gets 503/429 and the connection closes
  uint64_t session = 0;                       // the session of its requests' token
  std::set<std::string, std::less<>> topics;  // polled topics: it stays subscribed until it closes
  std::map<std::string, std::deque<Item>, std::less<>> queues;
  size_t queued = 0;
  bool polling = false;
  bool kicked = false;  // close_session: its next answer closes it
  std::condition_variable cv;
  // request-scoped, set by the pre-routing handler for the handler that follows
  std::string topic;
  uint64_t req_session = 0;
};

thread_local Conn* t_conn = nullptr;
thread_local bool t_counted = false;  // this request's refusal was counted by refuse()

class HttpPlugin;

// cpp-httplib's task queue: one job per accepted connection. Grows up to `max` threads, and
// wraps each job so the plugin sees the connection open and close.
class ConnPool : public httplib::TaskQueue {
 public:
  ConnPool(HttpPlugin& owner, size_t max) : owner_(owner), max_(max) {}
  void enqueue(std::function<void()> fn) override;
  void shutdown() override;

 private:
  void work();
  HttpPlugin& owner_;
  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> jobs_;
  std::vector<std::thread> threads_;
  size_t idle_ = 0;
  bool shutdown_ = false;
};

// ---- the webhook client ------------------------------------------------------------------

class Webhook {
 public:
  struct Report {
    uint64_t delivery_id;
    fg_delivery status;
  };
  Webhook(const Settings& cfg, const sdk::Host& host, sdk::RateLimitedLog& log,
          std::function<void(uint64_t, fg_delivery, bool)> report)
      : cfg_(cfg), host_(host), log_(log), report_(std::move(report)) {}
  ~Webhook() { stop(); }

  void start() {
    for (size_t i = 0; i < cfg_.webhook_workers; ++i) workers_.emplace_back([this] { work(); });
  }
  // False when the topic's queue is full (the caller reports the copy failed).
  bool enqueue(std::string_view topic, std::string_view payload, uint64_t delivery_id) {
    std::lock_guard lk(mu_);
    if (stopping_) return false;
    auto& t = topics_[std::string(topic)];
    if (t.q.size() >= cfg_.webhook_queue_max) {
      ++refused_full_;
      return false;
    }
    t.q.push_back(Item{std::string(payload), delivery_id, 0});
    cv_.notify_one();
    return true;
  }
  void stop() {
    std::vector<std::pair<uint64_t, fg_delivery>> failed;
    {
      std::lock_guard lk(mu_);
      if (stopping_ && workers_.empty()) return;
      stopping_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
    {
      std::lock_guard lk(mu_);
      for (auto& [name, t] : topics_)
        for (auto& it : t.q)
          if (it.delivery_id) failed.emplace_back(it.delivery_id, FG_DELIVERY_FAILED);
      topics_.clear();
    }
    for (auto& [id, st] : failed) report_(id, st, true);
  }
  std::string statsJson() {
    std::lock_guard lk(mu_);
    size_t q = 0;
    for (auto& [n, t] : topics_) q += t.q.size();
    return "{\"delivered\":" + std::to_string(delivered_) + ",\"failed\":" + std::to_string(failed_) +
           ",\"retries\":" + std::to_string(retries_) + ",\"queue_full\":" + std::to_string(refused_full_) +
           ",\"queued\":" + std::to_string(q) + "}";
  }

 private:
  struct Item {
    std::string payload;
    uint64_t delivery_id;
    uint32_t attempts;
  };
  struct Topic {
    std::deque<Item> q;
    bool busy = false;
    Clock::time_point next_try{};
  };

  // Picks the next topic round-robin after the last one picked: ready, not in flight.
  std::map<std::string, Topic>::iterator pick(Clock::time_point now, Clock::time_point& earliest) {
    earliest = Clock::time_point::max();
    if (topics_.empty()) return topics_.end();
    auto start = topics_.upper_bound(last_);
    for (size_t n = 0; n < topics_.size(); ++n, ++start) {
      if (start == topics_.end()) start = topics_.begin();
      Topic& t = start->second;
      if (t.busy || t.q.empty()) continue;
      if (t.next_try <= now) return start;
      earliest = std::min(earliest, t.next_try);
    }
    return topics_.end();
  }

  void work() {
    std::unique_ptr<httplib::Client> cli = std::make_unique<httplib::Client>(cfg_.hook.base);
    cli->set_keep_alive(true);
    cli->set_tcp_nodelay(true);
    const auto to = Ms(cfg_.webhook_timeout_ms);
    cli->set_connection_timeout(std::chrono::duration_cast<std::chrono::seconds>(to).count(),
                                static_cast<time_t>((to.count() % 1000) * 1000));
    cli->set_read_timeout(to);
    cli->set_write_timeout(to);
    if (cfg_.hook.tls) {
      if (!cfg_.ca_file.empty()) cli->set_ca_cert_path(cfg_.ca_file.c_str());
      cli->enable_server_certificate_verification(cfg_.tls_verify);
    }
    std::mt19937 rng(std::random_device{}());
    std::unique_lock lk(mu_);
    while (!stopping_) {
      Clock::time_point earliest;
      auto it = pick(Clock::now(), earliest);
      if (it == topics_.end()) {
        if (earliest == Clock::time_point::max())
          cv_.wait(lk);
        else
          cv_.wait_until(lk, earliest);
        continue;
      }
      last_ = it->first;
      const std::string topic = it->first;
      Topic& t = it->second;
      t.busy = true;
      Item item = std::move(t.q.front());
      t.q.pop_front();
      lk.unlock();
      std::string path = cfg_.hook.path;
      const std::string enc = percentEncode(topic);
      for (size_t p = path.find("{topic}"); p != std::string::npos; p = path.find("{topic}", p + enc.size()))
        path.replace(p, 7, enc);
      httplib::Headers headers{{"Fin-Topic", topic}};
      if (!cfg_.webhook_token.empty()) headers.emplace("Authorization", "Bearer " + cfg_.webhook_token);
      auto res = cli->Post(path.c_str(), headers, item.payload, "application/json");
      const int status = res ? res->status : 0;
      const bool ok = status >= 200 && status < 300;
      const bool permanent = status >= 400 && status < 500 && status != 408 && status != 429;
      std::string why =
          res ? "status " + std::to_string(status) : "no answer (" + httplib::to_string(res.error()) + ")";
      lk.lock();
      auto again = topics_.find(topic);
      Topic& tt = again->second;  // busy topics are never erased
      tt.busy = false;
      if (ok) {
        ++delivered_;
        lk.unlock();
        report_(item.delivery_id, FG_DELIVERY_OK, true);
        lk.lock();
      } else if (permanent || item.attempts >= cfg_.webhook_retries || stopping_) {
        ++failed_;
        lk.unlock();
        log_.log(host_, FG_LOG_WARN,
                 "http: webhook for topic '" + printable(topic) + "' failed (" + why + ") after " +
                     std::to_string(item.attempts + 1) + " attempt(s): dead-lettered");
        report_(item.delivery_id, FG_DELIVERY_FAILED, true);
        lk.lock();
      } else {
        ++retries_;
        ++item.attempts;
        const double base =
            std::min<double>(cfg_.webhook_backoff_max_ms,
                             double(cfg_.webhook_backoff_ms) * double(1u << std::min(item.attempts - 1, 20u)));
        std::uniform_real_distribution<double> jitter(base / 2, base);
        tt.next_try = Clock::now() + Ms(static_cast<int64_t>(jitter(rng)));
        tt.q.push_front(std::move(item));
        log_.log(host_, FG_LOG_DEBUG,
                 "http: webhook for topic '" + printable(topic) + "' failed (" + why + "), retrying");
      }
      auto cur = topics_.find(topic);
      if (cur != topics_.end() && !cur->second.busy && cur->second.q.empty()) topics_.erase(cur);
      cv_.notify_all();
    }
  }

  const Settings& cfg_;
  const sdk::Host& host_;
  sdk::RateLimitedLog& log_;
  std::function<void(uint64_t, fg_delivery, bool)> report_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, Topic> topics_;
  std::string last_;
  uint64_t delivered_ = 0, failed_ = 0, retries_ = 0, refused_full_ = 0;
  bool stopping_ = false;
  std::vector<std::thread> workers_;
};

// ---- the plugin --------------------------------------------------------------------------

class HttpPlugin final : public sdk::Plugin {
 public:
  HttpPlugin(sdk::Host host, const sdk::Config& cfg) : Plugin(host), cfg_(parseSettings(cfg)) {
    if (!cfg_.token.empty()) shared_digest_ = sha256(cfg_.token);
    for (auto& [fin, token] : cfg_.fin_tokens) fins_.push_back(FinToken{fin, sha256(token), 0});
  }
  ~HttpPlugin() override { stop(2000); }

  fg_status start() override;
  fg_status stop(uint32_t timeout_ms) override;
  fg_status publish(const fg_message& msg, uint64_t delivery_id) override;
  void ack(uint64_t token, fg_outcome outcome) override;
  fg_status closeSession(uint64_t session, const char* reason) override;

  // ConnPool
  std::shared_ptr<Conn> connOpened();
  void connClosed(const std::shared_ptr<Conn>& c);

 private:
  struct FinToken {
    std::string fin;
    Digest digest;
    uint64_t session;
  };
  struct Waiter {
    bool done = false;
    fg_outcome outcome = FG_OUTCOME_DELIVERED;
    std::condition_variable cv;
  };

  void setupServer();
  httplib::Server::HandlerResponse preRoute(const httplib::Request& req, httplib::Response& res);
  void handlePublish(const httplib::Request& req, httplib::Response& res, const httplib::ContentReader& reader);
  void handlePoll(const httplib::Request& req, httplib::Response& res, Conn& c);
  void handleStats(httplib::Response& res);
  std::optional<uint64_t> authenticate(const httplib::Request& req, std::string& fin);
  void refuse(httplib::Response& res, int status, Reason reason, const std::string& detail, bool close,
              const std::string& who = "");
  void warnLimited(const std::string& msg) { limited_log_.log(host_, FG_LOG_WARN, "http: " + msg); }

  // mu_ held
  void queueToConn(Conn& c, Item item, std::vector<std::pair<uint64_t, fg_delivery>>& reports);
  void settleLocked(Item& item, bool handed, fg_delivery fail_status,
                    std::vector<std::pair<uint64_t, fg_delivery>>& reports);
  void rebacklogLocked(Item item, std::vector<std::pair<uint64_t, fg_delivery>>& reports);
  void pullBacklogLocked(Conn& c, const std::string& topic);
  void releaseSessionBytesLocked(const Item& item);
  // any thread, mu_ not held
  void report(uint64_t delivery_id, fg_delivery status, bool direct);
  void reportAll(std::vector<std::pair<uint64_t, fg_delivery>>& reports, bool direct);
  void defer(std::function<void()> fn);
  void housekeep();
  void expireLocked(Clock::time_point now, std::vector<std::pair<uint64_t, fg_delivery>>& reports, size_t& expired);
  std::string clientKey(const Conn& c, uint64_t session) const {
    return session ? "session " + std::to_string(session) : c.client;
  }

  const Settings cfg_;
  sdk::RateLimitedLog limited_log_{"http: "};
  std::optional<Digest> shared_digest_;
  std::vector<FinToken> fins_;  // guarded by mu_ (sessions change on close_session)

  std::mutex life_mu_;
  bool started_ = false, stopped_ = false;
  std::unique_ptr<httplib::Server> server_;
  int listen_fd_ = -1;
  std::thread listen_thread_;
  std::unique_ptr<Webhook> webhook_;
  std::thread housekeeper_;

  std::mutex mu_;
  std::condition_variable hk_cv_;
  bool stopping_ = false;
  bool hk_exit_ = false;
  std::unordered_map<uint64_t, std::shared_ptr<Conn>> conns_;
  std::map<std::string, size_t> conns_per_client_;
  std::map<std::string, size_t> polls_per_client_;
  size_t polls_ = 0;
  std::map<std::pair<uint64_t, std::string>, std::deque<Item>> backlog_;
  size_t backlog_size_ = 0;
  size_t backlog_bytes_ = 0;  // payload bytes in backlog_ (backlog_max_bytes)
  bool backlogFullLocked(size_t adding_bytes) const {
    return backlog_size_ >= cfg_.backlog_max || backlog_bytes_ + adding_bytes > cfg_.backlog_max_bytes;
  }
  void backlogAddLocked(const Item& item) {
    ++backlog_size_;
    backlog_bytes_ += item.payload->size();
  }
  // Before a whole queue leaves the backlog (while its items still hold their payloads).
  void backlogForgetLocked(const std::deque<Item>& q) {
    backlog_size_ -= q.size();
    for (auto& item : q) backlog_bytes_ -= std::min(backlog_bytes_, item.payload ? item.payload->size() : 0);
  }
  struct SessionBytes {
    size_t bytes = 0;
    bool wants_wakeup = false;
  };
  std::unordered_map<uint64_t, SessionBytes> session_bytes_;
  std::deque<std::function<void()>> deferred_;
  uint64_t next_conn_ = 1;
  uint64_t next_session_ = 1;
  uint64_t next_seq_ = 1;

  std::mutex ack_mu_;
  std::unordered_map<uint64_t, std::shared_ptr<Waiter>> waiters_;
  std::atomic<uint64_t> next_token_{1};
  std::atomic<bool> stop_flag_{false};

  std::array<std::atomic<uint64_t>, kReasonCount> refused_{};
  std::atomic<uint64_t> published_{0}, polled_{0}, poll_timeouts_{0}, expired_{0}, dropped_copies_{0};
  std::array<std::atomic<uint64_t>, 4> outcomes_{};
};

// ---- ConnPool ----------------------------------------------------------------------------

void ConnPool::enqueue(std::function<void()> fn) {
  std::lock_guard lk(mu_);
  jobs_.push_back(std::move(fn));
  // A woken thread counts as idle until it takes a job: compare with the jobs waiting.
  if (jobs_.size() > idle_ && threads_.size() < max_) threads_.emplace_back([this] { work(); });
  cv_.notify_one();
}

void ConnPool::shutdown() {
  {
    std::lock_guard lk(mu_);
    shutdown_ = true;
  }
  cv_.notify_all();
  for (auto& t : threads_) t.join();
  threads_.clear();
}

void ConnPool::work() {
  std::unique_lock lk(mu_);
  while (true) {
    ++idle_;
    cv_.wait(lk, [this] { return !jobs_.empty() || shutdown_; });
    --idle_;
    if (jobs_.empty()) return;  // shut down with nothing left
    auto fn = std::move(jobs_.front());
    jobs_.pop_front();
    lk.unlock();
    auto c = owner_.connOpened();
    t_conn = c.get();
    fn();  // the connection's whole life (process_and_close_socket)
    t_conn = nullptr;
    owner_.connClosed(c);
    lk.lock();
  }
}

// ---- connections -------------------------------------------------------------------------

std::shared_ptr<Conn> HttpPlugin::connOpened() {
  auto c = std::make_shared<Conn>();
  std::lock_guard lk(mu_);
  c->id = next_conn_++;
  c->over_limit = conns_.size() >= cfg_.max_connections;
  conns_[c->id] = c;
  return c;
}

void HttpPlugin::connClosed(const std::shared_ptr<Conn>& c) {
  std::vector<std::pair<uint64_t, fg_delivery>> reports;
  {
    std::lock_guard lk(mu_);
    conns_.erase(c->id);
    if (c->counted) {
      auto it = conns_per_client_.find(c->client);
      if (it != conns_per_client_.end() && --it->second == 0) conns_per_client_.erase(it);
    }
    // What it was subscribed to and never polled: fin/capability messages go back to the
    // backlog for the next poller; `soarca` copies were this connection's own.
    for (auto& [topic, q] : c->queues)
      for (auto& item : q) {
        if (topic == kSoarca || stopping_)
          settleLocked(item, false, FG_DELIVERY_FAILED, reports);
        else
          rebacklogLocked(std::move(item), reports);
      }
    c->queues.clear();
    c->queued = 0;
  }
  reportAll(reports, true);
}

// ---- lifecycle ---------------------------------------------------------------------------

fg_status HttpPlugin::start() {
  std::lock_guard life(life_mu_);
  if (started_) return FG_ERR_STATE;
  started_ = true;
  host_.onState(FG_STATE_STARTING, "");
  {
    std::lock_guard lk(mu_);
    for (auto& f : fins_) f.session = next_session_++;
  }
  for (auto& f : fins_) host_.onSession(f.session, FG_SESSION_OPENED);
  housekeeper_ = std::thread([this] { housekeep(); });
  if (cfg_.webhook) {
    webhook_ = std::make_unique<Webhook>(cfg_, host_, limited_log_,
                                         [this](uint64_t id, fg_delivery st, bool direct) { report(id, st, direct); });
    webhook_->start();
  }
  std::string detail;
  if (cfg_.listen) {
    if (!cfg_.cert_file.empty()) {
      server_ =
          std::make_unique<httplib::SSLServer>(cfg_.cert_file.c_str(), cfg_.key_file.c_str(),
                                               cfg_.client_ca_file.empty() ? nullptr : cfg_.client_ca_file.c_str());
    } else {
      server_ = std::make_unique<httplib::Server>();
    }
    if (!server_->is_valid()) {
      server_.reset();
      host_.error("http: cannot set up TLS with tls.cert_file/tls.key_file" +
                  std::string(cfg_.client_ca_file.empty() ? "" : "/tls.client_ca_file"));
      return FG_ERR_INVALID_ARG;
    }
    setupServer();
    int port = cfg_.address.port;
    bool ok;
    if (port == 0) {
      port = server_->bind_to_any_port(cfg_.address.host);
      ok = port > 0;
    } else {
      ok = server_->bind_to_port(cfg_.address.host, port);
    }
    if (!ok) {
      server_.reset();
      host_.error("http: cannot listen on " + cfg_.address.host + ":" + std::to_string(cfg_.address.port) +
                  " (address in use or not available)");
      return FG_ERR_UNAVAILABLE;
    }
    if (listen_fd_ >= 0) ::listen(listen_fd_, SOMAXCONN);  // on Linux, listen() again only resizes the backlog
    listen_thread_ = std::thread([this] { server_->listen_after_bind(); });
    const bool v6 = cfg_.address.host.find(':') != std::string::npos;
    detail = "listening on " + (v6 ? "[" + cfg_.address.host + "]" : cfg_.address.host) + ":" + std::to_string(port) +
             (cfg_.cert_file.empty()        ? ""
              : cfg_.client_ca_file.empty() ? " (TLS)"
                                            : " (TLS, client certificates)");
  }
  if (cfg_.webhook) detail += std::string(detail.empty() ? "" : ", ") + "webhook " + cfg_.hook.base + cfg_.hook.path;
  host_.info("http: " + detail);
  host_.onState(FG_STATE_UP, detail);
  return FG_OK;
}

fg_status HttpPlugin::stop(uint32_t /*timeout_ms*/) {
  std::lock_guard life(life_mu_);
  if (!started_ || stopped_) return FG_OK;
  stopped_ = true;
  {
    std::lock_guard lk(mu_);
    stopping_ = true;
    for (auto& [id, c] : conns_) c->cv.notify_all();
  }
  {
    std::lock_guard lk(ack_mu_);
    stop_flag_ = true;
    for (auto& [t, w] : waiters_) w->cv.notify_all();
  }
  if (server_) {
    server_->stop();  // idle keep-alive connections end within idle_timeout_s
    if (listen_thread_.joinable()) listen_thread_.join();
  }
  if (webhook_) webhook_->stop();
  std::vector<std::pair<uint64_t, fg_delivery>> reports;
  std::vector<uint64_t> sessions;
  {
    std::lock_guard lk(mu_);
    for (auto& [key, q] : backlog_)
      for (auto& item : q) settleLocked(item, false, FG_DELIVERY_FAILED, reports);
    backlog_.clear();
    backlog_size_ = 0;
    backlog_bytes_ = 0;
    for (auto& f : fins_) sessions.push_back(f.session);
    hk_exit_ = true;
  }
  hk_cv_.notify_all();
  if (housekeeper_.joinable()) housekeeper_.join();
  reportAll(reports, true);
  for (uint64_t s : sessions) host_.onSession(s, FG_SESSION_CLOSED);
  std::string summary = "http: stopped; published " + std::to_string(published_.load()) + ", polled " +
                        std::to_string(polled_.load()) + ", backlog expiries " + std::to_string(expired_.load());
  for (size_t i = 0; i < kReasonCount; ++i)
    if (refused_[i].load()) summary += ", " + std::string(kReasonNames[i]) + " " + std::to_string(refused_[i].load());
  host_.info(summary);
  host_.onState(FG_STATE_STOPPED, "");
  return FG_OK;
}

// ---- host -> plugin ----------------------------------------------------------------------

fg_status HttpPlugin::publish(const fg_message& msg, uint64_t delivery_id) {
  const std::string_view topic = sdk::view(msg.topic);
  if (cfg_.webhook) {
    if (!webhook_) return FG_ERR_STATE;
    if (!webhook_->enqueue(topic, sdk::view(msg.payload), delivery_id)) {
      warnLimited("webhook queue of topic '" + printable(topic) + "' is full (webhook_queue_max " +
                  std::to_string(cfg_.webhook_queue_max) + "): dead-lettered");
      report(delivery_id, FG_DELIVERY_FAILED, false);
    }
    return FG_OK;
  }
  std::vector<std::pair<uint64_t, fg_delivery>> reports;
  {
    std::lock_guard lk(mu_);
    if (stopping_) return FG_ERR_STATE;
    if (msg.session != 0) {
      bool known = false;
      for (auto& f : fins_) known = known || f.session == msg.session;
      if (!known) return FG_ERR_STATE;  // a session that is gone
      auto& sb = session_bytes_[msg.session];
      if (sb.bytes >= cfg_.session_buffer_bytes) {
        sb.wants_wakeup = true;
        return FG_RETRY;
      }
    }
    std::vector<Conn*> targets;
    for (auto& [id, c] : conns_)
      if (c->topics.count(topic) && (msg.session == 0 || c->session == msg.session)) targets.push_back(c.get());
    Item item;
    item.topic = std::string(topic);
    item.payload = std::make_shared<const std::string>(sdk::view(msg.payload));
    item.session = msg.session;
    item.seq = next_seq_++;
    item.deadline = Clock::now() + Ms(cfg_.backlog_ttl_ms);
    if (targets.empty() && topic == kSoarca) {
      // A broadcast is never kept: a fin that polls later must not get an old "unregister all".
      reports.emplace_back(delivery_id, FG_DELIVERY_NO_RECEIVER);
    } else if (targets.empty()) {
      if (backlogFullLocked(item.payload->size())) {
        if (msg.session != 0) {
          session_bytes_[msg.session].wants_wakeup = true;
          return FG_RETRY;
        }
        warnLimited("backlog full (backlog_max " + std::to_string(cfg_.backlog_max) + " messages / backlog_max_bytes " +
                    std::to_string(cfg_.backlog_max_bytes) + "): a message for '" + printable(topic) +
                    "' is dead-lettered");
        reports.emplace_back(delivery_id, FG_DELIVERY_FAILED);
      } else {
        item.tracker = delivery_id ? std::make_shared<Tracker>(Tracker{delivery_id, 1, 0}) : nullptr;
        if (msg.session) session_bytes_[msg.session].bytes += item.payload->size();
        backlogAddLocked(item);
        backlog_[{msg.session, item.topic}].push_back(std::move(item));
      }
    } else {
      if (delivery_id) item.tracker = std::make_shared<Tracker>(Tracker{delivery_id, targets.size(), 0});
      if (msg.session) session_bytes_[msg.session].bytes += item.payload->size() * targets.size();
      for (Conn* c : targets) queueToConn(*c, item, reports);
    }
  }
  if (!reports.empty()) reportAll(reports, false);
  return FG_OK;
}

void HttpPlugin::ack(uint64_t token, fg_outcome outcome) {
  if (outcome >= 0 && outcome < 4) outcomes_[static_cast<size_t>(outcome)]++;
  std::lock_guard lk(ack_mu_);
  auto it = waiters_.find(token);
  if (it == waiters_.end()) return;
  it->second->done = true;
  it->second->outcome = outcome;
  it->second->cv.notify_all();
  waiters_.erase(it);
}

fg_status HttpPlugin::closeSession(uint64_t session, const char* reason) {
  std::vector<std::pair<uint64_t, fg_delivery>> reports;
  uint64_t fresh = 0;
  {
    std::lock_guard lk(mu_);
    FinToken* ft = nullptr;
    for (auto& f : fins_)
      if (f.session == session) ft = &f;
    if (!ft) return FG_ERR_STATE;
    fresh = ft->session = next_session_++;
    for (auto& [id, c] : conns_) {
      if (c->session != session) continue;
      c->kicked = true;
      for (auto& [t, q] : c->queues)
        for (auto& item : q) settleLocked(item, false, FG_DELIVERY_FAILED, reports);
      c->queues.clear();
      c->queued = 0;
      c->topics.clear();
      c->cv.notify_all();
    }
    for (auto it = backlog_.begin(); it != backlog_.end();) {
      if (it->first.first != session) {
        ++it;
        continue;
      }
      backlogForgetLocked(it->second);
      for (auto& item : it->second) settleLocked(item, false, FG_DELIVERY_FAILED, reports);
      it = backlog_.erase(it);
    }
    session_bytes_.erase(session);
  }
  warnLimited("session " + std::to_string(session) + " closed by the gateway: " + printable(reason ? reason : "", 300));
  reportAll(reports, false);
  defer([this, session, fresh] {
    host_.onSession(session, FG_SESSION_CLOSED);
    host_.onSession(fresh, FG_SESSION_OPENED);
  });
  return FG_OK;
}

// ---- queues (mu_ held) -------------------------------------------------------------------

void HttpPlugin::queueToConn(Conn& c, Item item, std::vector<std::pair<uint64_t, fg_delivery>>& reports) {
  if (c.queued >= cfg_.connection_queue_max) {
    ++dropped_copies_;
    settleLocked(item, false, FG_DELIVERY_FAILED, reports);
    return;
  }
  auto& q = c.queues[item.topic];
  q.push_back(std::move(item));
  ++c.queued;
  if (c.polling) c.cv.notify_all();
}

void HttpPlugin::releaseSessionBytesLocked(const Item& item) {
  if (!item.session) return;
  auto it = session_bytes_.find(item.session);
  if (it == session_bytes_.end()) return;
  SessionBytes& sb = it->second;
  sb.bytes -= std::min(sb.bytes, item.payload->size());
  if (sb.wants_wakeup && sb.bytes < cfg_.session_buffer_bytes / 2 && !backlogFullLocked(0)) {
    sb.wants_wakeup = false;
    const uint64_t s = item.session;
    deferred_.push_back([this, s] { host_.sessionWritable(s); });
    hk_cv_.notify_all();
  }
}

// One copy is settled: handed to a poller, or failed with fail_status. The publish's delivery
// is reported when its last copy settles: OK when any copy was handed out.
void HttpPlugin::settleLocked(Item& item, bool handed, fg_delivery fail_status,
                              std::vector<std::pair<uint64_t, fg_delivery>>& reports) {
  releaseSessionBytesLocked(item);
  if (!item.tracker) return;
  fg_delivery st;
  if (item.tracker->settle(handed, fail_status, st)) reports.emplace_back(item.tracker->delivery_id, st);
  item.tracker.reset();
}

void HttpPlugin::rebacklogLocked(Item item, std::vector<std::pair<uint64_t, fg_delivery>>& reports) {
  if (backlogFullLocked(item.payload->size()) || Clock::now() >= item.deadline) {
    settleLocked(item, false, FG_DELIVERY_FAILED, reports);
    return;
  }
  auto& q = backlog_[{item.session, item.topic}];
  // Keep publish order.
  auto pos = std::upper_bound(q.begin(), q.end(), item.seq, [](uint64_t s, const Item& i) { return s < i.seq; });
  backlogAddLocked(item);
  q.insert(pos, std::move(item));
}

// A connection subscribed to `topic`: what waited for the first poller is now its own.
void HttpPlugin::pullBacklogLocked(Conn& c, const std::string& topic) {
  std::vector<Item> taken;
  for (uint64_t s : {uint64_t(0), c.session}) {
    auto it = backlog_.find({s, topic});
    if (it == backlog_.end()) continue;
    backlogForgetLocked(it->second);
    for (auto& item : it->second) taken.push_back(std::move(item));
    backlog_.erase(it);
    if (c.session == 0) break;
  }
  std::sort(taken.begin(), taken.end(), [](const Item& a, const Item& b) { return a.seq < b.seq; });
  auto& q = c.queues[topic];
  for (auto& item : taken) {
    q.push_back(std::move(item));
    ++c.queued;
  }
}

void HttpPlugin::expireLocked(Clock::time_point now, std::vector<std::pair<uint64_t, fg_delivery>>& reports,
                              size_t& expired) {
  for (auto it = backlog_.begin(); it != backlog_.end();) {
    auto& q = it->second;
    while (!q.empty() && q.front().deadline <= now) {
      settleLocked(q.front(), false, FG_DELIVERY_NO_RECEIVER, reports);
      --backlog_size_;
      backlog_bytes_ -= std::min(backlog_bytes_, q.front().payload->size());
      q.pop_front();
      ++expired;
    }
    it = q.empty() ? backlog_.erase(it) : std::next(it);
  }
  // Copies queued on a connection that stopped polling expire too (their outcome must come).
  for (auto& [id, c] : conns_) {
    if (c->queued == 0) continue;
    for (auto& [topic, q] : c->queues)
      while (!q.empty() && q.front().deadline <= now) {
        settleLocked(q.front(), false, FG_DELIVERY_FAILED, reports);
        q.pop_front();
        --c->queued;
        ++expired;
      }
  }
}

// ---- reports and deferred host calls -----------------------------------------------------

void HttpPlugin::report(uint64_t delivery_id, fg_delivery status, bool direct) {
  if (!delivery_id) return;
  if (direct) {
    host_.onDelivery(delivery_id, status);
    return;
  }
  defer([this, delivery_id, status] { host_.onDelivery(delivery_id, status); });
}

void HttpPlugin::reportAll(std::vector<std::pair<uint64_t, fg_delivery>>& reports, bool direct) {
  for (auto& [id, st] : reports) report(id, st, direct);
  reports.clear();
}

void HttpPlugin::defer(std::function<void()> fn) {
  {
    std::lock_guard lk(mu_);
    deferred_.push_back(std::move(fn));
  }
  hk_cv_.notify_all();
}

void HttpPlugin::housekeep() {
  std::unique_lock lk(mu_);
  while (true) {
    std::vector<std::pair<uint64_t, fg_delivery>> reports;
    size_t expired = 0;
    expireLocked(Clock::now(), reports, expired);
    std::deque<std::function<void()>> work;
    work.swap(deferred_);
    const bool exit = hk_exit_;
    lk.unlock();
    if (expired) {
      expired_ += expired;
      warnLimited(std::to_string(expired) + " message(s) expired after backlog_ttl_ms (" +
                  std::to_string(cfg_.backlog_ttl_ms) + " ms) with no poller taking them: dead-lettered");
    }
    for (auto& [id, st] : reports) host_.onDelivery(id, st);
    for (auto& fn : work) fn();
    lk.lock();
    if (exit && deferred_.empty()) return;
    if (deferred_.empty() && !hk_exit_) hk_cv_.wait_for(lk, Ms(kHousekeepMs));
  }
}

// ---- the server --------------------------------------------------------------------------

// A refusal: a clear status and text, a counter, a rate-limited log line. `close`: the request's
// body (if any) was not read, so the connection cannot be reused: the answer closes it (cpp-httplib
// 0.11.4 closes a connection when its response's content provider reports a failure after
// writing everything).
void HttpPlugin::refuse(httplib::Response& res, int status, Reason reason, const std::string& detail, bool close,
                        const std::string& who) {
  refused_[reason]++;
  t_counted = true;
  warnLimited((who.empty() ? "" : who + ": ") + "refused " + std::to_string(status) + " (" + kReasonNames[reason] +
              "): " + detail);
  res.status = status;
  auto body = std::make_shared<std::string>("{\"error\":\"" + std::string(kReasonNames[reason]) + "\",\"detail\":\"" +
                                            jsonEscape(detail) + "\"}\n");
  if (!close) {
    res.set_content(*body, "application/json");
    return;
  }
  res.set_header("Connection", "close");
  res.set_content_provider(body->size(), "application/json", [body](size_t offset, size_t, httplib::DataSink& sink) {
    sink.write(body->data() + offset, body->size() - offset);
    return false;  // everything is written; failing here makes httplib close the connection
  });
}

void HttpPlugin::setupServer() {
  auto& s = *server_;
  s.new_task_queue = [this] { return new ConnPool(*this, cfg_.max_connections + kSpareThreads); };
  s.set_tcp_nodelay(true);
  s.set_socket_options([this](socket_t sock) {
    listen_fd_ = sock;  // the listening socket: its backlog is raised after bind (httplib uses 5)
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);  // no SO_REUSEPORT: a second gateway fails
    ::setsockopt(sock, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof yes);  // inherited by accepted sockets
  });
  s.set_keep_alive_max_count(cfg_.keepalive_requests);
  s.set_keep_alive_timeout(cfg_.idle_timeout_s);
  s.set_read_timeout(cfg_.io_timeout_s, 0);
  s.set_write_timeout(cfg_.io_timeout_s, 0);
  s.set_payload_max_length(cfg_.max_body_bytes);
  s.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) { return preRoute(req, res); });
  s.Post(R"(/v1/publish/[\s\S]+)", [this](const httplib::Request& req, httplib::Response& res,
                                          const httplib::ContentReader& rd) { handlePublish(req, res, rd); });
  // Requests httplib refuses before any handler (a request line over 8 KiB: 414; a malformed
  // request line or a header line over 8 KiB: 400) are counted here.
  s.set_logger([this](const httplib::Request&, const httplib::Response& res) {
    if (t_counted) {
      t_counted = false;
      return;
    }
    if (res.status < 400) return;
    const bool long_url = res.status == 414;
    refused_[long_url ? kUrlTooLong : kBadRequest]++;
    warnLimited(long_url ? "refused 414 (url_too_long): the request line is longer than cpp-httplib's 8 KiB"
                         : "refused " + std::to_string(res.status) +
                               " (bad_request): a malformed request line or a header line over 8 KiB");
  });
}

std::optional<uint64_t> HttpPlugin::authenticate(const httplib::Request& req, std::string& fin) {
  if (!shared_digest_ && fins_.empty()) return 0;
  const std::string h = req.get_header_value("Authorization");
  if (req.get_header_value_count("Authorization") != 1 || h.size() < 7 || strncasecmp(h.c_str(), "Bearer ", 7) != 0)
    return std::nullopt;
  const Digest d = sha256(std::string_view(h).substr(7));
  // Every configured token is compared (constant time each), whichever matches.
  std::optional<uint64_t> match;
  if (shared_digest_ && CRYPTO_memcmp(d.data(), shared_digest_->data(), d.size()) == 0) match = 0;
  std::lock_guard lk(mu_);
  for (auto& f : fins_)
    if (CRYPTO_memcmp(d.data(), f.digest.data(), d.size()) == 0) {
      match = f.session;
      fin = f.fin;
    }
  return match;
}

httplib::Server::HandlerResponse HttpPlugin::preRoute(const httplib::Request& req, httplib::Response& res) {
  using HR = httplib::Server::HandlerResponse;
  Conn* c = t_conn;
  if (!c) {  // cannot happen: every connection runs in ConnPool
    refuse(res, 500, kBadRequest, "internal: no connection context", true);
    return HR::Handled;
  }
  const bool has_length = req.has_header("Content-Length");
  const bool chunked = req.has_header("Transfer-Encoding");
  const bool has_body = chunked || (has_length && req.get_header_value("Content-Length") != "0");
  const std::string who = req.remote_addr;
  {
    std::lock_guard lk(mu_);
    if (!c->counted) {
      c->client = req.remote_addr;
      c->counted = true;
      if (++conns_per_client_[c->client] > cfg_.max_connections_per_client) c->over_limit = true;
    }
  }
  if (c->over_limit) {
    bool global;
    {
      std::lock_guard lk(mu_);
      global = conns_.size() > cfg_.max_connections;
    }
    refuse(res, global ? 503 : 429, kTooManyConnections,
           global ? "max_connections (" + std::to_string(cfg_.max_connections) + ") reached"
                  : "max_connections_per_client (" + std::to_string(cfg_.max_connections_per_client) +
                        ") reached for " + printable(c->client),
           true, who);
    res.set_header("Retry-After", std::to_string(cfg_.retry_after_s));
    return HR::Handled;
  }
  // Header count and size (httplib 0.11.4 reads them all first: each line is capped at 8 KiB).
  size_t header_bytes = 0;
  for (auto& [k, v] : req.headers) header_bytes += k.size() + v.size() + 4;
  if (req.headers.size() > cfg_.max_headers + kSyntheticHeaders) {
    refuse(res, 431, kTooManyHeaders,
           std::to_string(req.headers.size() - kSyntheticHeaders) + " headers (max_headers " +
               std::to_string(cfg_.max_headers) + ")",
           true, who);
    return HR::Handled;
  }
  if (header_bytes > cfg_.max_header_bytes + 256) {
    refuse(res, 431, kTooManyHeaders,
           "the headers hold " + std::to_string(header_bytes) + " bytes (max_header_bytes " +
               std::to_string(cfg_.max_header_bytes) + ")",
           true, who);
    return HR::Handled;
  }
  if (req.target.size() > cfg_.max_url_bytes) {
    refuse(res, 414, kUrlTooLong,
           "the URL has " + std::to_string(req.target.size()) + " bytes (max_url_bytes " +
               std::to_string(cfg_.max_url_bytes) + ")",
           true, who);
    return HR::Handled;
  }
  if (chunked && strcasecmp(req.get_header_value("Transfer-Encoding").c_str(), "chunked") != 0) {
    refuse(res, 501, kBadBody, "only Transfer-Encoding: chunked is supported", true, who);
    return HR::Handled;
  }
  if (req.has_header("Content-Encoding") &&
      strcasecmp(req.get_header_value("Content-Encoding").c_str(), "identity") != 0) {
    refuse(res, 415, kUnsupportedEncoding, "Content-Encoding is not supported: send the payload as is", true, who);
    return HR::Handled;
  }
  std::string fin;
  const auto session = authenticate(req, fin);
  if (!session) {
    refuse(res, 401, kUnauthorized,
           req.has_header("Authorization") ? "wrong token" : "send Authorization: Bearer <token>", has_body, who);
    res.set_header("WWW-Authenticate", "Bearer realm=\"fingate\"");
    return HR::Handled;
  }
  {
    std::lock_guard lk(mu_);
    if (c->session != *session) {
      // Another token on this connection: what it polled belonged to the old one.
      std::vector<std::pair<uint64_t, fg_delivery>> reports;
      for (auto& [topic, q] : c->queues)
        for (auto& item : q) {
          if (topic == kSoarca)
            settleLocked(item, false, FG_DELIVERY_FAILED, reports);
          else
            rebacklogLocked(std::move(item), reports);
        }
      c->queues.clear();
      c->queued = 0;
      c->topics.clear();
      c->session = *session;
      if (!reports.empty()) {
        for (auto& [id, st] : reports) {
          const uint64_t d = id;
          const fg_delivery s = st;
          deferred_.push_back([this, d, s] { host_.onDelivery(d, s); });
        }
        hk_cv_.notify_all();
      }
    }
    c->req_session = *session;
  }
  const std::string_view target = req.target;
  const std::string_view path = target.substr(0, target.find('?'));
  const bool is_publish = path.rfind("/v1/publish/", 0) == 0;
  const bool is_poll = path.rfind("/v1/poll/", 0) == 0;
  if (path == "/v1/stats") {
    if (req.method != "GET") {
      refuse(res, 405, kMethod, req.method + " " + std::string(path) + ": use GET", has_body, who);
      res.set_header("Allow", "GET");
      return HR::Handled;
    }
    handleStats(res);
    return HR::Handled;
  }
  if (!is_publish && !is_poll) {
    refuse(res, 404, kNotFound,
           "no such path: " + printable(path) + " (POST /v1/publish/{topic}, GET /v1/poll/{topic})", has_body, who);
    return HR::Handled;
  }
  if (is_publish && req.method != "POST") {
    refuse(res, 405, kMethod, req.method + " on /v1/publish: use POST", has_body, who);
    res.set_header("Allow", "POST");
    return HR::Handled;
  }
  if (is_poll && req.method != "GET") {
    refuse(res, 405, kMethod, req.method + " on /v1/poll: use GET", has_body, who);
    res.set_header("Allow", "GET");
    return HR::Handled;
  }
  const std::string_view raw = path.substr(is_publish ? 12 : 9);
  auto topic = percentDecode(raw);
  if (!topic) {
    refuse(res, 400, kBadTopic, "the topic is not valid percent-encoding: " + printable(raw), has_body, who);
    return HR::Handled;
  }
  if (const std::string why = topicProblem(*topic); !why.empty()) {
    refuse(res, 400, kBadTopic, why + ": '" + printable(*topic) + "'", has_body, who);
    return HR::Handled;
  }
  c->topic = std::move(*topic);
  if (is_poll) {
    if (has_body) {
      refuse(res, 400, kBadBody, "a poll has no body", true, who);
      return HR::Handled;
    }
    handlePoll(req, res, *c);
    return HR::Handled;
  }
  if (!has_length && !chunked) {
    refuse(res, 411, kLengthRequired, "a publish needs Content-Length or Transfer-Encoding: chunked", false, who);
    return HR::Handled;
  }
  if (has_length && !chunked) {
    const std::string v = req.get_header_value("Content-Length");
    char* end = nullptr;
    errno = 0;
    const unsigned long long n = std::strtoull(v.c_str(), &end, 10);
    if (v.empty() || *end || errno || req.get_header_value_count("Content-Length") != 1) {
      refuse(res, 400, kBadBody, "bad Content-Length", true, who);
      return HR::Handled;
    }
    if (n > cfg_.max_body_bytes) {
      refuse(
          res, 413, kBodyTooLarge,
          "the body has " + std::to_string(n) + " bytes (max_body_bytes " + std::to_string(cfg_.max_body_bytes) + ")",
          true, who);
      return HR::Handled;
    }
  }
  return HR::Unhandled;  // the publish handler reads the body (bounded)
}

void HttpPlugin::handlePublish(const httplib::Request& req, httplib::Response& res,
                               const httplib::ContentReader& reader) {
  Conn* c = t_conn;
  const std::string who = req.remote_addr;
  std::string body;
  bool too_big = false;
  const bool read_ok = reader([&](const char* data, size_t n) {
    if (body.size() + n > cfg_.max_body_bytes) {
      too_big = true;
      return false;
    }
    body.append(data, n);
    return true;
  });
  if (too_big) {
    refuse(res, 413, kBodyTooLarge,
           "the body is larger than max_body_bytes (" + std::to_string(cfg_.max_body_bytes) + ")", true, who);
    return;
  }
  if (!read_ok) {
    refuse(res, 400, kBadBody, "the body could not be read (bad chunked encoding, or it ended early)", true, who);
    return;
  }
  const httpjson::Info info = httpjson::inspect(body);
  if (!info.ok) {
    refuse(res, 400, kNotJson, "the body is not JSON: " + info.error, false, who);
    return;
  }
  const std::string& topic = c->topic;
  const uint64_t session = c->req_session;
  if (session != 0 && topic == kSoarca && info.type == "register") {
    std::string fin;
    {
      std::lock_guard lk(mu_);
      for (auto& f : fins_)
        if (f.session == session) fin = f.fin;
    }
    if (info.fin_id != fin) {
      refuse(res, 403, kTokenMismatch,
             "this token belongs to fin '" + printable(fin) + "', the register is for '" + printable(info.fin_id) + "'",
             false, who);
      return;
    }
  }
  bool stopping;
  {
    std::lock_guard lk(mu_);
    stopping = stopping_;
  }
  if (stopping) {
    refuse(res, 503, kStopping, "the gateway is stopping", false, who);
    return;
  }
  const uint64_t token = next_token_++;
  auto waiter = std::make_shared<Waiter>();
  {
    std::lock_guard lk(ack_mu_);
    waiters_[token] = waiter;
  }
  const fg_message m{str(topic), str(body), nullptr, 0, nowMs(), session};
  bool tracked = false;
  const fg_status st = host_.onMessageTracked(0, m, token, &tracked);
  if (st != FG_OK || !tracked) {
    std::lock_guard lk(ack_mu_);
    waiters_.erase(token);
  }
  if (st == FG_RETRY) {
    refuse(res, 503, kBackPressure, "the gateway is full (back-pressure): try again", false, who);
    res.set_header("Retry-After", std::to_string(cfg_.retry_after_s));
    return;
  }
  if (st != FG_OK) {
    refuse(res, 503, kHostRefused, "the gateway did not take the message (status " + std::to_string(st) + ")", false,
           who);
    res.set_header("Retry-After", std::to_string(cfg_.retry_after_s));
    return;
  }
  published_++;
  std::string outcome = "pending";
  if (tracked && cfg_.publish_wait_ms > 0) {
    std::unique_lock lk(ack_mu_);
    waiter->cv.wait_for(lk, Ms(cfg_.publish_wait_ms), [&] { return waiter->done || stop_flag_.load(); });
    if (waiter->done) {
      switch (waiter->outcome) {
        case FG_OUTCOME_DELIVERED:
          outcome = "delivered";
          break;
        case FG_OUTCOME_DEAD_LETTERED:
          outcome = "dead_lettered";
          break;
        case FG_OUTCOME_REFUSED:
          outcome = "refused";
          break;
        case FG_OUTCOME_FILTERED:
          outcome = "filtered";
          break;
        default:
          outcome = "unknown";
          break;
      }
    }
  } else if (!tracked) {
    outcome = "accepted";
  }
  if (outcome == "refused") {
    refuse(res, 422, kRefused,
           "the gateway's rules refused this message on '" + printable(topic) +
               "' (see the nack it sent and /v1/dead-letters on the admin API)",
           false, who);
    res.set_header("Fin-Outcome", outcome);
    return;
  }
  res.status = 202;
  res.set_header("Fin-Outcome", outcome);
  res.set_content("{\"outcome\":\"" + outcome + "\"}\n", "application/json");
}

void HttpPlugin::handlePoll(const httplib::Request& req, httplib::Response& res, Conn& c) {
  const std::string who = req.remote_addr;
  if (cfg_.webhook) {
    refuse(res, 409, kNotFound, "this endpoint delivers by webhook: polling is off", false, who);
    return;
  }
  uint32_t wait_s = cfg_.default_wait_s;
  if (req.has_param("wait")) {
    const std::string w = req.get_param_value("wait");
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(w.c_str(), &end, 10);
    if (req.get_param_value_count("wait") != 1 || w.empty() || w.size() > 6 || *end || errno || v < 0 ||
        v > static_cast<long>(cfg_.max_wait_s)) {
      refuse(res, 400, kBadWait,
             "wait must be a whole number of seconds from 0 to " + std::to_string(cfg_.max_wait_s) + ", got '" +
                 printable(w, 40) + "'",
             false, who);
      return;
    }
    wait_s = static_cast<uint32_t>(v);
  }
  const std::string topic = c.topic;
  const uint64_t session = c.req_session;
  bool subscribe = false;
  {
    std::lock_guard lk(mu_);
    const std::string key = clientKey(c, session);
    if (polls_ >= cfg_.max_polls) {
      refuse(res, 429, kTooManyPolls, "max_polls (" + std::to_string(cfg_.max_polls) + ") polls are waiting", false,
             who);
      res.set_header("Retry-After", std::to_string(cfg_.retry_after_s));
      return;
    }
    if (polls_per_client_[key] >= cfg_.max_polls_per_client) {
      refuse(res, 429, kTooManyPolls,
             "max_polls_per_client (" + std::to_string(cfg_.max_polls_per_client) + ") reached for " + printable(key),
             false, who);
      res.set_header("Retry-After", std::to_string(cfg_.retry_after_s));
      return;
    }
    subscribe = !c.topics.count(topic);
    if (subscribe && c.topics.size() >= cfg_.max_topics_per_connection) {
      refuse(res, 429, kTooManyTopics,
             "max_topics_per_connection (" + std::to_string(cfg_.max_topics_per_connection) + ") reached", false, who);
      return;
    }
    // Counted here, under the same lock as the checks, so concurrent polls cannot all pass them.
    ++polls_;
    ++polls_per_client_[key];
  }
  auto releasePoll = [&] {  // under mu_
    const std::string key = clientKey(c, session);
    --polls_;
    if (--polls_per_client_[key] == 0) polls_per_client_.erase(key);
  };
  if (subscribe) {
    std::string reason;
    if (host_.authorizeSubscribe(session, topic, &reason) != FG_OK) {
      {
        std::lock_guard lk(mu_);
        releasePoll();
      }
      refuse(res, 403, kSubscribeRefused, "poll of '" + printable(topic) + "' refused: " + reason, false, who);
      return;
    }
  }
  std::optional<Item> got;
  bool kicked = false;
  {
    std::unique_lock lk(mu_);
    if (subscribe && !c.topics.count(topic)) {
      c.topics.insert(topic);
      pullBacklogLocked(c, topic);
    }
    c.polling = true;
    const auto deadline = Clock::now() + std::chrono::seconds(wait_s);
    auto ready = [&] {
      auto it = c.queues.find(topic);
      return stopping_ || c.kicked || (it != c.queues.end() && !it->second.empty());
    };
    while (!ready() && c.cv.wait_until(lk, deadline) != std::cv_status::timeout) {
    }
    c.polling = false;
    kicked = c.kicked;
    releasePoll();
    auto it = c.queues.find(topic);
    if (!c.kicked && it != c.queues.end() && !it->second.empty()) {
      got = std::move(it->second.front());
      it->second.pop_front();
      --c.queued;
    }
  }
  if (kicked) {
    refuse(res, 409, kStopping, "the gateway closed this session", true, who);
    return;
  }
  if (!got) {
    bool stopping;
    {
      std::lock_guard lk(mu_);
      stopping = stopping_;
    }
    if (stopping) {
      refuse(res, 503, kStopping, "the gateway is stopping", true, who);
      return;
    }
    poll_timeouts_++;
    res.status = 204;
    return;
  }
  polled_++;
  res.status = 200;
  res.set_header("Fin-Topic", got->topic);
  auto item = std::make_shared<Item>(std::move(*got));
  const size_t size = item->payload->size();
  res.set_content_provider(
      size, "application/json",
      [item](size_t offset, size_t length, httplib::DataSink& sink) {
        sink.write(item->payload->data() + offset, length);
        return true;
      },
      [this, item](bool success) {
        // Written: delivered. Not written: a fin/capability message waits for the next poller.
        std::vector<std::pair<uint64_t, fg_delivery>> reports;
        {
          std::lock_guard lk(mu_);
          if (success)
            settleLocked(*item, true, FG_DELIVERY_OK, reports);
          else if (item->topic == kSoarca || stopping_)
            settleLocked(*item, false, FG_DELIVERY_FAILED, reports);
          else
            rebacklogLocked(std::move(*item), reports);
        }
        reportAll(reports, true);
      });
}

void HttpPlugin::handleStats(httplib::Response& res) {
  std::string s = "{\"refused\":{";
  for (size_t i = 0; i < kReasonCount; ++i)
    s += std::string(i ? "," : "") + "\"" + kReasonNames[i] + "\":" + std::to_string(refused_[i].load());
  s += "},\"published\":" + std::to_string(published_.load()) + ",\"polled\":" + std::to_string(polled_.load()) +
       ",\"poll_timeouts\":" + std::to_string(poll_timeouts_.load()) +
       ",\"backlog_expired\":" + std::to_string(expired_.load()) +
       ",\"dropped_copies\":" + std::to_string(dropped_copies_.load()) +
       ",\"outcomes\":{\"delivered\":" + std::to_string(outcomes_[0].load()) +
       ",\"dead_lettered\":" + std::to_string(outcomes_[1].load()) +
       ",\"refused\":" + std::to_string(outcomes_[2].load()) + ",\"filtered\":" + std::to_string(outcomes_[3].load()) +
       "}";
  {
    std::lock_guard lk(mu_);
    s += ",\"connections\":" + std::to_string(conns_.size()) + ",\"polls\":" + std::to_string(polls_) +
         ",\"backlog\":" + std::to_string(backlog_size_) + ",\"backlog_bytes\":" + std::to_string(backlog_bytes_);
  }
  if (webhook_) s += ",\"webhook\":" + webhook_->statsJson();
  s += "}\n";
  res.status = 200;
  res.set_content(s, "application/json");
}

}  // namespace
}  // namespace fingate

FG_DEFINE_PLUGIN(fingate::HttpPlugin, "http", "0.1.0", FG_CAP_SESSIONS | FG_CAP_DELIVERY | FG_CAP_NO_LOCAL,
                 FG_HTTP_KEYS)
