// kafka: the Kafka transport (librdkafka's C API).
//
// Mapping (DESIGN §5, docs/transports.md "Kafka"): a fin topic goes to the Kafka topic
// `topic_template` (default `fin.{topic}`; characters outside [A-Za-z0-9._-] in the fin topic
// become `_` first), or to `single_topic` for every fin topic. Every record carries key = fin
// topic, header `fin-topic` = fin topic and header `fingate-origin` = this instance's id (plus
// `fingate-group`). An instance skips its own records exactly, and the records of the other
// instances of its group (they are the same logical gateway's publishes).
//
// Threads:
//  - host threads call publish/subscribe/unsubscribe/ack: publish hands the record to
//    librdkafka's producer queue (never waits: a full queue is FG_RETRY); subscribe/unsubscribe
//    and ack only record the change and return;
//  - the producer thread polls the producer: delivery reports become on_delivery, it creates
//    the topics the gateway needs (admin CreateTopics, or a metadata request that lets the
//    broker auto-create them where CreateTopics is not served), and reports UP/DOWN;
//  - the consumer thread owns the group consumer: it applies subscription changes (creating the
//    topics first), confirms subscriptions once the group has assigned them, hands records to
//    the host with outcome tokens, keeps a record the host answered RETRY for (and pauses the
//    assignment until it is taken), stores offsets contiguously as outcomes arrive and commits
//    them; the rebalance callback runs on this thread too;
//  - the registry thread (only when the host subscribes `$fingate/bindings/#` and
//    `registry_topic` is set) reads the registry topic from the beginning with no group.
//
// At-least-once: an offset is committed only when every record up to it has a final outcome
// (ack from the host, or filtered here). A crash or a rebalance re-delivers what was not final
// (duplicates, never loss).
#include <librdkafka/rdkafka.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using namespace std::chrono_literals;
using fingate::sdk::Config;
using fingate::sdk::ConfigError;
using fingate::sdk::Host;
using fingate::sdk::view;
using Clock = std::chrono::steady_clock;

constexpr std::string_view kRegistryFilter = "$fingate/bindings/#";
constexpr std::string_view kRegistryPrefix = "$fingate/bindings/";
constexpr std::string_view kReservedPrefix = "$fingate/";
constexpr const char* kHdrTopic = "fin-topic";
constexpr const char* kHdrOrigin = "fingate-origin";
constexpr const char* kHdrGroup = "fingate-group";
constexpr uint64_t kRegistryTokenBit = 1ull << 63;

bool kafkaChar(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
}

std::string sanitize(std::string_view fin) {
  std::string out(fin);
  for (char& c : out)
    if (!kafkaChar(c)) c = '_';
  return out;
}

std::string regexEscape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '.') out += "\\";
    out += c;
  }
  return out;
}

using fingate::sdk::randomHex;

struct Settings {
  std::string brokers;
  std::string group = "fingate";
  std::string tmpl_prefix = "fin.", tmpl_suffix;  // topic_template around {topic}
  std::string single_topic;
  std::string instance_id;
  std::string registry_topic;
  int partitions = 3;
  int replication = -1;  // broker default
  int flush_timeout_ms = 10000;
  std::vector<std::pair<std::string, std::string>> rdkafka;  // without the "rdkafka." prefix
};

void checkTopicName(const std::string& key, const std::string& name) {
  if (name.empty() || name.size() > 249) throw ConfigError(key, "a Kafka topic name is 1 to 249 characters");
  if (name == "." || name == "..") throw ConfigError(key, "'" + name + "' is not a valid Kafka topic name");
  for (char c : name)
    if (!kafkaChar(c)) throw ConfigError(key, "'" + name + "': a Kafka topic name uses only [A-Za-z0-9._-]");
}

#define FG_KAFKA_KEYS                                                                                        \
  "brokers", "group", "topic_template", "single_topic", "instance_id", "registry_topic", "topic_partitions", \
      "topic_replication", "flush_timeout_ms"

const char* const kKnownKeys[] = {FG_KAFKA_KEYS, "rdkafka.*", "plugin", "role"};

Settings parseSettings(const Config& cfg) {
  cfg.rejectUnknown(kKnownKeys, "kafka");
  Settings s;
  s.brokers = cfg.require("brokers");
  for (char c : s.brokers)
    if (static_cast<unsigned char>(c) <= 0x20)
      throw ConfigError("brokers", "expected host:port[,host:port...] without spaces");
  s.group = cfg.get("group", "fingate");
  if (s.group.empty()) throw ConfigError("group", "must not be empty");
  std::string tmpl = cfg.get("topic_template", "fin.{topic}");
  auto at = tmpl.find("{topic}");
  if (at == std::string::npos || tmpl.find("{topic}", at + 1) != std::string::npos)
    throw ConfigError("topic_template", "must contain '{topic}' exactly once, got '" + tmpl + "'");
  s.tmpl_prefix = tmpl.substr(0, at);
  s.tmpl_suffix = tmpl.substr(at + 7);
  for (char c : s.tmpl_prefix + s.tmpl_suffix)
    if (!kafkaChar(c))
      throw ConfigError("topic_template", "'" + tmpl + "': outside {topic} only [A-Za-z0-9._-] are allowed");
  if (cfg.has("single_topic")) {
    s.single_topic = cfg.get("single_topic");
    checkTopicName("single_topic", s.single_topic);
    if (cfg.has("topic_template")) throw ConfigError("single_topic", "cannot be used together with topic_template");
  }
  s.instance_id = cfg.get("instance_id", "");
  if (cfg.has("instance_id") && s.instance_id.empty()) throw ConfigError("instance_id", "must not be empty");
  if (s.instance_id.empty()) s.instance_id = "fingate-" + std::to_string(::getpid()) + "-" + randomHex(6);
  if (cfg.has("registry_topic")) {
    s.registry_topic = cfg.get("registry_topic");
    checkTopicName("registry_topic", s.registry_topic);
    if (s.registry_topic == s.single_topic) throw ConfigError("registry_topic", "must differ from single_topic");
  }
  s.partitions = static_cast<int>(cfg.getInt("topic_partitions", 3, 1, 100000));
  s.replication = static_cast<int>(cfg.getInt("topic_replication", -1, -1, 1000));
  if (s.replication == 0) throw ConfigError("topic_replication", "must be -1 (broker default) or at least 1");
  s.flush_timeout_ms = static_cast<int>(cfg.getInt("flush_timeout_ms", 10000, 0, 600000));
  static const std::map<std::string, std::string> owned = {
      {"bootstrap.servers", "use the endpoint's 'brokers' key"},
      {"metadata.broker.list", "use the endpoint's 'brokers' key"},
      {"group.id", "use the endpoint's 'group' key"},
      {"enable.auto.commit", "offsets are committed by the gateway once a message's outcome is final"},
      {"enable.auto.offset.store", "offsets are stored by the gateway once a message's outcome is final"},
      {"enable.idempotence", "the producer is always idempotent"},
      {"client.id", "the client id is the instance id ('instance_id')"}};
  for (auto& [k, v] : cfg.all()) {
    if (k.rfind("rdkafka.", 0) != 0) continue;
    std::string prop = k.substr(8);
    if (prop.empty()) throw ConfigError(k, "expected rdkafka.<librdkafka property>");
    if (auto it = owned.find(prop); it != owned.end()) throw ConfigError(k, "is set by the gateway: " + it->second);
    s.rdkafka.emplace_back(prop, v);
  }
  return s;
}

// Builds a librdkafka configuration; throws ConfigError naming the key librdkafka refused.
rd_kafka_conf_t* buildConf(const Settings& s, const std::vector<std::pair<std::string, std::string>>& defaults) {
  rd_kafka_conf_t* conf = rd_kafka_conf_new();
  char err[512];
  auto set = [&](const std::string& k, const std::string& v, const std::string& key_name) {
    if (rd_kafka_conf_set(conf, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK) {
      rd_kafka_conf_destroy(conf);
      throw ConfigError(key_name, err);
    }
  };
  set("bootstrap.servers", s.brokers, "brokers");
  set("client.id", s.instance_id, "instance_id");
  for (auto& [k, v] : defaults) set(k, v, "rdkafka." + k);
  for (auto& [k, v] : s.rdkafka) set(k, v, "rdkafka." + k);
  return conf;
}

fg_log_level logLevel(int syslog_level) {
  if (syslog_level <= 3) return FG_LOG_ERROR;
  if (syslog_level == 4) return FG_LOG_WARN;
  if (syslog_level <= 6) return FG_LOG_INFO;
  return FG_LOG_DEBUG;
}

std::string headerValue(rd_kafka_headers_t* hdrs, const char* name, bool* present) {
  const void* val = nullptr;
  size_t size = 0;
  *present = hdrs && rd_kafka_header_get_last(hdrs, name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR;
  if (!*present || !val) return "";
  return std::string(static_cast<const char*>(val), size);
}

class KafkaPlugin : public fingate::sdk::Plugin {
 public:
  KafkaPlugin(Host host, const Config& cfg) : Plugin(host), s_(parseSettings(cfg)) {
    // Build both configurations now so that `fingate validate` reports a bad rdkafka.* key.
    rd_kafka_conf_destroy(producerConf());
    rd_kafka_conf_destroy(consumerConf(false));
  }
  ~KafkaPlugin() override { stop(2000); }

  // ---- host API ------------------------------------------------------------------------

  fg_status start() override {
    if (started_) return FG_ERR_STATE;
    char err[512];
    rd_kafka_conf_t* pc = producerConf();
    prod_ = rd_kafka_new(RD_KAFKA_PRODUCER, pc, err, sizeof err);
    if (!prod_) {
      rd_kafka_conf_destroy(pc);
      host_.error(std::string("kafka: cannot create the producer: ") + err);
      return FG_ERR_FATAL;
    }
    rd_kafka_conf_t* cc = consumerConf(true);
    cons_ = rd_kafka_new(RD_KAFKA_CONSUMER, cc, err, sizeof err);
    if (!cons_) {
      rd_kafka_conf_destroy(cc);
      rd_kafka_destroy(prod_);
      prod_ = nullptr;
      host_.error(std::string("kafka: cannot create the consumer: ") + err);
      return FG_ERR_FATAL;
    }
    rd_kafka_poll_set_consumer(cons_);
    admin_q_ = rd_kafka_queue_new(prod_);
    started_ = true;
    running_ = true;
    host_.onState(FG_STATE_STARTING, "brokers " + s_.brokers);
    prod_thread_ = std::thread([this] { producerLoop(); });
    cons_thread_ = std::thread([this] { consumerLoop(); });
    {
      std::lock_guard lk(subs_mu_);
      if (reg_sub_) startRegistryLocked();
    }
    return FG_OK;
  }

  fg_status stop(uint32_t timeout_ms) override {
    if (!started_ || stopped_) return FG_OK;
    stopped_ = true;
    auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
    running_ = false;  // no more publishes
    // Consumer first: it commits what is final and leaves the group (the rest is re-consumed).
    cons_stop_ = true;
    if (cons_thread_.joinable()) cons_thread_.join();
    reg_stop_ = true;
    if (reg_thread_.joinable()) reg_thread_.join();
    // Producer: flush with a bounded wait; what is still undelivered is reported FAILED.
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    int flush_ms = static_cast<int>(std::clamp<long long>(left, 0, s_.flush_timeout_ms));
    prod_stop_ = true;
    if (prod_thread_.joinable()) prod_thread_.join();
    rd_kafka_resp_err_t fe = rd_kafka_flush(prod_, flush_ms);
    if (fe != RD_KAFKA_RESP_ERR_NO_ERROR) {
      host_.warn("kafka: " + std::to_string(rd_kafka_outq_len(prod_)) +
                 " record(s) not delivered within the stop timeout: reported FAILED");
      rd_kafka_purge(prod_, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
      rd_kafka_poll(prod_, 0);  // the purged records' delivery reports (FAILED)
      rd_kafka_flush(prod_, 100);
    }
    rd_kafka_queue_destroy(admin_q_);
    admin_q_ = nullptr;
    rd_kafka_destroy(prod_);
    prod_ = nullptr;
    host_.onState(FG_STATE_STOPPED, "");
    return FG_OK;
  }

  fg_status publish(const fg_message& m, uint64_t delivery_id) override {
    if (!running_) return FG_ERR_STATE;
    std::string_view topic = view(m.topic);
    if (topic.empty()) return FG_ERR_INVALID_ARG;
    std::string ktopic;
    std::string_view key = topic;
    bool registry = false;
    if (topic.substr(0, kReservedPrefix.size()) == kReservedPrefix) {
      if (topic.substr(0, kRegistryPrefix.size()) != kRegistryPrefix || topic.size() == kRegistryPrefix.size())
        return FG_ERR_INVALID_ARG;
      if (s_.registry_topic.empty()) {
        host_.warn("kafka: publish on " + std::string(topic) + " needs 'registry_topic'");
        return FG_ERR_STATE;
      }
      ktopic = s_.registry_topic;
      key = topic.substr(kRegistryPrefix.size());
      registry = true;
    } else {
      ktopic = mapTopic(topic);
    }
    requestTopic(ktopic, registry);
    rd_kafka_headers_t* hdrs = rd_kafka_headers_new(3 + m.header_count);
    rd_kafka_header_add(hdrs, kHdrTopic, -1, topic.data(), static_cast<ssize_t>(topic.size()));
    rd_kafka_header_add(hdrs, kHdrOrigin, -1, s_.instance_id.data(), static_cast<ssize_t>(s_.instance_id.size()));
    if (!registry) rd_kafka_header_add(hdrs, kHdrGroup, -1, s_.group.data(), static_cast<ssize_t>(s_.group.size()));
    for (size_t i = 0; i < m.header_count && m.headers; ++i) {
      std::string name(view(m.headers[i].key));
      if (name.empty() || name == kHdrTopic || name == kHdrOrigin || name == kHdrGroup) continue;
      rd_kafka_header_add(hdrs, name.c_str(), -1, m.headers[i].value.data,
                          static_cast<ssize_t>(m.headers[i].value.len));
    }
    const void* value = m.payload.len ? m.payload.data : nullptr;
    size_t vlen = m.payload.len;
    if (registry && vlen == 0)
      value = nullptr;  // a tombstone
    else if (!value)
      value = "";  // an empty (not null) value
    rd_kafka_resp_err_t err = rd_kafka_producev(
        prod_, RD_KAFKA_V_TOPIC(ktopic.c_str()), RD_KAFKA_V_KEY(key.data(), key.size()),
        RD_KAFKA_V_VALUE(const_cast<void*>(value), vlen), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_OPAQUE(reinterpret_cast<void*>(static_cast<uintptr_t>(delivery_id))),
        RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR) return FG_OK;
    rd_kafka_headers_destroy(hdrs);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      retries_.fetch_add(1, std::memory_order_relaxed);
      return FG_RETRY;
    }
    host_.warn("kafka: produce to " + ktopic + " refused: " + rd_kafka_err2str(err));
    if (err == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE || err == RD_KAFKA_RESP_ERR__INVALID_ARG) return FG_ERR_INVALID_ARG;
    if (err == RD_KAFKA_RESP_ERR__FATAL) return FG_ERR_FATAL;
    return FG_ERR_UNAVAILABLE;
  }

  fg_status subscribe(std::string_view filter, uint64_t sub_id) override {
    if (filter == kRegistryFilter) {
      if (s_.registry_topic.empty()) {
        host_.subscriptionSettled(sub_id, FG_ERR_STATE,
                                  "the shared binding registry needs 'registry_topic' on this endpoint");
        return FG_OK;
      }
      std::lock_guard lk(subs_mu_);
      reg_sub_ = sub_id;
      if (started_ && !stopped_) startRegistryLocked();
      return FG_OK;
    }
    if (filter.empty() || !fingate::isValidFilter(filter) || filter.find('\0') != std::string_view::npos) {
      host_.warn("kafka: invalid subscription filter '" + std::string(filter) + "'");
      return FG_ERR_INVALID_ARG;
    }
    if (filter[0] == '$') {
      host_.subscriptionSettled(sub_id, FG_ERR_UNSUPPORTED, "only '$fingate/bindings/#' is served among '$' filters");
      return FG_OK;
    }
    Sub sub;
    sub.id = sub_id;
    sub.filter = std::string(filter);
    if (!s_.single_topic.empty())
      sub.ktopic = s_.single_topic;
    else if (fingate::hasWildcard(filter))
      sub.ktopic = "^" + regexEscape(s_.tmpl_prefix) + ".*" + regexEscape(s_.tmpl_suffix) + "$";
    else
      sub.ktopic = mapTopic(filter);
    std::lock_guard lk(subs_mu_);
    subs_[sub_id] = std::move(sub);
    subs_dirty_ = true;
    return FG_OK;
  }

  fg_status unsubscribe(uint64_t sub_id) override {
    std::lock_guard lk(subs_mu_);
    if (sub_id == reg_sub_ && reg_sub_) {
      reg_sub_ = 0;  // the registry reader goes on (it is cheap) but hands nothing in
      return FG_OK;
    }
    if (subs_.erase(sub_id)) subs_dirty_ = true;
    return FG_OK;
  }

  void ack(uint64_t token, fg_outcome outcome) override {
    if (token & kRegistryTokenBit) return;  // registry records: nothing to commit (no group)
    std::lock_guard lk(ack_mu_);
    acks_.emplace_back(token, outcome);
  }

 private:
  struct Sub {
    uint64_t id = 0;
    std::string filter;
    std::string ktopic;  // exact Kafka topic, or "^regex" for a wildcard filter
    bool confirmed = false;
  };

  // Per assigned partition (consumer thread only).
  struct Part {
    std::string topic;
    int32_t partition = 0;
    std::map<int64_t, bool> inflight;  // consumed offsets -> final?
    int64_t next = -1;                 // next offset to commit (-1: nothing consumed yet)
    int64_t committed = -1;            // last position committed
    bool revoked = false;
  };
  using PartPtr = std::shared_ptr<Part>;
  struct TokenInfo {
    PartPtr part;
    int64_t offset;
  };

  std::string mapTopic(std::string_view fin) const {
    if (!s_.single_topic.empty()) return s_.single_topic;
    return s_.tmpl_prefix + sanitize(fin) + s_.tmpl_suffix;
  }

  static void logCb(const rd_kafka_t* rk, int level, const char* fac, const char* buf) {
    auto* self = static_cast<KafkaPlugin*>(rd_kafka_opaque(rk));
    if (self) self->host_.log(logLevel(level), std::string("librdkafka ") + fac + ": " + buf);
  }
  static void errorCb(rd_kafka_t* rk, int err, const char* reason, void* opaque) {
    auto* self = static_cast<KafkaPlugin*>(opaque);
    if (!self) return;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && rk == self->prod_) self->all_down_ = true;
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
      char why[512];
      rd_kafka_fatal_error(rk, why, sizeof why);
      self->host_.error(std::string("kafka: fatal error: ") + why);
      self->fatal_ = true;
      return;
    }
    self->host_.log(
        err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN ? FG_LOG_WARN : FG_LOG_ERROR,
        std::string("kafka: ") + rd_kafka_err2name(static_cast<rd_kafka_resp_err_t>(err)) + ": " + reason);
  }
  static void drCb(rd_kafka_t*, const rd_kafka_message_t* m, void* opaque) {
    auto* self = static_cast<KafkaPlugin*>(opaque);
    uint64_t id = static_cast<uint64_t>(reinterpret_cast<uintptr_t>(m->_private));
    if (!self || !id) return;
    if (m->err) {
      self->host_.warn(std::string("kafka: delivery to ") + rd_kafka_topic_name(m->rkt) +
                       " failed: " + rd_kafka_err2str(m->err));
      self->host_.onDelivery(id, FG_DELIVERY_FAILED);
    } else {
      self->host_.onDelivery(id, FG_DELIVERY_OK);
    }
  }
  static void commitCb(rd_kafka_t*, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets, void* opaque) {
    static_cast<KafkaPlugin*>(opaque)->onCommitted(err, offsets);
  }
  // Consumer thread (served by consumer_poll): a commit that failed is sent again next time.
  void onCommitted(rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* offsets) {
    if (err == RD_KAFKA_RESP_ERR_NO_ERROR || err == RD_KAFKA_RESP_ERR__NO_OFFSET || !offsets) return;
    host_.warn(std::string("kafka: commit failed (will retry): ") + rd_kafka_err2str(err));
    for (int i = 0; i < offsets->cnt; ++i) {
      auto it = parts_.find(partKey(offsets->elems[i].topic, offsets->elems[i].partition));
      if (it != parts_.end()) it->second->committed = -1;
    }
  }
  static void rebalanceCb(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts,
                          void* opaque) {
    static_cast<KafkaPlugin*>(opaque)->onRebalance(rk, err, parts);
  }

  rd_kafka_conf_t* producerConf() {
    rd_kafka_conf_t* c = buildConf(s_, {{"enable.idempotence", "true"}, {"linger.ms", "1"}});
    rd_kafka_conf_set_opaque(c, this);
    rd_kafka_conf_set_dr_msg_cb(c, &drCb);
    rd_kafka_conf_set_error_cb(c, &errorCb);
    rd_kafka_conf_set_log_cb(c, &logCb);
    return c;
  }
  rd_kafka_conf_t* consumerConf(bool group) {
    std::vector<std::pair<std::string, std::string>> d = {{"enable.auto.commit", "false"},
                                                          {"enable.auto.offset.store", "false"},
                                                          {"auto.offset.reset", "earliest"},
                                                          {"partition.assignment.strategy", "cooperative-sticky"}};
    rd_kafka_conf_t* c = buildConf(s_, d);
    char err[256];
    if (group) rd_kafka_conf_set(c, "group.id", s_.group.c_str(), err, sizeof err);
    rd_kafka_conf_set_opaque(c, this);
    rd_kafka_conf_set_error_cb(c, &errorCb);
    rd_kafka_conf_set_log_cb(c, &logCb);
    if (group) rd_kafka_conf_set_rebalance_cb(c, &rebalanceCb);
    if (group) rd_kafka_conf_set_offset_commit_cb(c, &commitCb);
    return c;
  }

  // ---- topics the gateway needs --------------------------------------------------------

  enum class TopicState { Requested, Creating, Ready };

  // Asks the producer thread to create ktopic (once). Any thread.
  void requestTopic(const std::string& ktopic, bool registry) {
    std::lock_guard lk(topics_mu_);
    if (topics_.count(ktopic)) return;
    topics_[ktopic] = TopicState::Requested;
    topic_compact_[ktopic] = registry;
    topics_cv_.notify_all();
  }
  // Waits (bounded) until ktopic was created or found. Consumer/registry threads.
  bool awaitTopic(const std::string& ktopic, std::chrono::milliseconds timeout) {
    requestTopic(ktopic, ktopic == s_.registry_topic);
    auto deadline = Clock::now() + timeout;
    std::unique_lock lk(topics_mu_);
    while (topics_[ktopic] != TopicState::Ready) {
      if (Clock::now() >= deadline || prod_stop_ || cons_stop_ || reg_stop_) return false;
      topics_cv_.wait_for(lk, 100ms);
    }
    return true;
  }

  // Producer thread: CreateTopics for every requested topic; results come on admin_q_.
  void createRequested() {
    std::vector<std::string> todo;
    {
      std::lock_guard lk(topics_mu_);
      for (auto& [t, st] : topics_)
        if (st == TopicState::Requested) {
          st = TopicState::Creating;
          todo.push_back(t);
        }
    }
    for (auto& t : todo) {
      if (create_unsupported_) {
        autoCreate(t);
        continue;
      }
      char err[256];
      bool compact;
      {
        std::lock_guard lk(topics_mu_);
        compact = topic_compact_[t];
      }
      rd_kafka_NewTopic_t* nt =
          rd_kafka_NewTopic_new(t.c_str(), compact ? 1 : s_.partitions, s_.replication, err, sizeof err);
      if (!nt) {
        host_.error("kafka: cannot create topic " + t + ": " + err);
        markTopic(t, TopicState::Ready);
        continue;
      }
      if (compact) rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact");
      rd_kafka_AdminOptions_t* opts = rd_kafka_AdminOptions_new(prod_, RD_KAFKA_ADMIN_OP_CREATETOPICS);
      rd_kafka_AdminOptions_set_request_timeout(opts, 3000, err, sizeof err);
      // The opaque names the topic in the result; owned here, so a request still in flight at
      // stop is freed with the plugin.
      admin_pending_.push_back(t);
      rd_kafka_AdminOptions_set_opaque(opts, &admin_pending_.back());
      rd_kafka_CreateTopics(prod_, &nt, 1, opts, admin_q_);
      rd_kafka_AdminOptions_destroy(opts);
      rd_kafka_NewTopic_destroy(nt);
    }
    while (rd_kafka_event_t* ev = rd_kafka_queue_poll(admin_q_, 0)) {
      std::unique_ptr<std::string> t;
      if (auto* name = static_cast<std::string*>(rd_kafka_event_opaque(ev))) {
        t = std::make_unique<std::string>(*name);
        admin_pending_.remove_if([name](const std::string& x) { return &x == name; });
      }
      const rd_kafka_CreateTopics_result_t* res = rd_kafka_event_CreateTopics_result(ev);
      rd_kafka_resp_err_t e = rd_kafka_event_error(ev);
      std::string why = e && rd_kafka_event_error_string(ev) ? rd_kafka_event_error_string(ev) : "";
      size_t n = 0;
      const rd_kafka_topic_result_t** rs = res ? rd_kafka_CreateTopics_result_topics(res, &n) : nullptr;
      if (!e && n == 1) {
        e = rd_kafka_topic_result_error(rs[0]);
        if (rd_kafka_topic_result_error_string(rs[0])) why = rd_kafka_topic_result_error_string(rs[0]);
      }
      rd_kafka_event_destroy(ev);
      if (!t) continue;
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR || e == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
        if (e == RD_KAFKA_RESP_ERR_NO_ERROR) host_.info("kafka: created topic " + *t);
        markTopic(*t, TopicState::Ready);
        continue;
      }
      // Not served (e.g. librdkafka's mock cluster), not allowed, or a config the broker refuses
      // (cleanup.policy): fall back to a metadata request that lets the broker auto-create it,
      // and tolerate what exists.
      host_.info("kafka: CreateTopics " + *t + ": " + rd_kafka_err2name(e) + " (" + why +
                 "); falling back to broker auto-create");
      if (e == RD_KAFKA_RESP_ERR__UNSUPPORTED_FEATURE || e == RD_KAFKA_RESP_ERR_UNSUPPORTED_VERSION ||
          e == RD_KAFKA_RESP_ERR_INVALID_REQUEST || e == RD_KAFKA_RESP_ERR__TIMED_OUT)
        create_unsupported_ = true;
      autoCreate(*t);
    }
  }

  // A metadata request for the topic (the producer allows auto-creation).
  void autoCreate(const std::string& t) {
    rd_kafka_topic_t* rkt = rd_kafka_topic_new(prod_, t.c_str(), nullptr);
    bool ok = false;
    for (int attempt = 0; attempt < 10 && !ok && !prod_stop_; ++attempt) {
      const rd_kafka_metadata_t* md = nullptr;
      if (rd_kafka_metadata(prod_, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR && md) {
        ok = md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR && md->topics[0].partition_cnt > 0;
        rd_kafka_metadata_destroy(md);
      }
      if (!ok) std::this_thread::sleep_for(100ms);
    }
    rd_kafka_topic_destroy(rkt);
    if (!ok) host_.warn("kafka: topic " + t + " could not be created or found; subscribing anyway");
    markTopic(t, TopicState::Ready);
  }

  void markTopic(const std::string& t, TopicState st) {
    std::lock_guard lk(topics_mu_);
    topics_[t] = st;
    topics_cv_.notify_all();
  }

  // ---- producer thread -----------------------------------------------------------------

  bool probe() {
    const rd_kafka_metadata_t* md = nullptr;
    bool ok = rd_kafka_metadata(prod_, 0, nullptr, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR && md && md->broker_cnt > 0;
    if (md) rd_kafka_metadata_destroy(md);
    return ok;
  }

  void producerLoop() {
    bool up = false, ever_up = false;
    auto next_probe = Clock::now();
    while (!prod_stop_) {
      rd_kafka_poll(prod_, 20);
      createRequested();
      if (fatal_ && !reported_fatal_) {
        reported_fatal_ = true;
        host_.onState(FG_STATE_FAILED, "librdkafka fatal error (see log)");
      }
      if (all_down_.exchange(false) && up) {
        up = false;
        host_.onState(FG_STATE_DOWN, "all brokers down: " + s_.brokers);
      }
      if (!up && Clock::now() >= next_probe) {
        if (probe()) {
          up = true;
          host_.connectionFacts(FG_CONN_NO_LOCAL);
          host_.onState(ever_up ? FG_STATE_RECONNECTED : FG_STATE_UP,
                        "brokers " + s_.brokers + ", instance " + s_.instance_id);
          ever_up = true;
        }
        next_probe = Clock::now() + 1s;
      }
    }
  }

  // ---- consumer thread -----------------------------------------------------------------

  void consumerLoop() {
    auto last_commit = Clock::now();
    while (!cons_stop_) {
      applySubscriptions();
      applyAcks();
      if (Clock::now() - last_commit >= 100ms) {
        commit(false, nullptr);
        last_commit = Clock::now();
      }
      if (!held_.empty()) {
        if (!offerHeld()) {
          if (!paused_) setPaused(true);
          // Keep serving the group (rebalances, heartbeats); what is already fetched queues behind.
          if (rd_kafka_message_t* m = rd_kafka_consumer_poll(cons_, 5)) received(m);
          continue;
        }
      }
      if (paused_) setPaused(false);
      if (rd_kafka_message_t* m = rd_kafka_consumer_poll(cons_, 50)) received(m);
    }
    // Stop: what is final is committed; leaving the group revokes (and commits) the rest.
    applyAcks();
    commit(true, nullptr);
    for (auto& h : held_) rd_kafka_message_destroy(h.msg);
    held_.clear();
    rd_kafka_consumer_close(cons_);
    rd_kafka_destroy(cons_);
    cons_ = nullptr;
  }

  // Recomputes the Kafka subscription from the host's filters (consumer thread).
  void applySubscriptions() {
    std::vector<Sub> subs;
    {
      std::lock_guard lk(subs_mu_);
      if (!subs_dirty_) return;
      subs_dirty_ = false;
      for (auto& [id, s] : subs_) subs.push_back(s);
    }
    std::set<std::string> want;
    for (auto& s : subs) want.insert(s.ktopic);
    // Create the exact topics before subscribing, so the group assigns them at once and reads
    // them from the earliest offset (nothing published right after a register is missed).
    for (auto& t : want)
      if (t[0] != '^' && !awaitTopic(t, 10s) && !cons_stop_)
        host_.warn("kafka: topic " + t + " not ready; subscribing anyway");
    if (want != kafka_subs_) {
      if (want.empty()) {
        rd_kafka_unsubscribe(cons_);
      } else {
        rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(static_cast<int>(want.size()));
        for (auto& t : want) rd_kafka_topic_partition_list_add(l, t.c_str(), RD_KAFKA_PARTITION_UA);
        rd_kafka_resp_err_t e = rd_kafka_subscribe(cons_, l);
        rd_kafka_topic_partition_list_destroy(l);
        if (e) host_.error(std::string("kafka: subscribe failed: ") + rd_kafka_err2str(e));
      }
      kafka_subs_ = want;
      // A topic dropped and added again must be assigned again before it is confirmed.
      for (auto it = assigned_subs_.begin(); it != assigned_subs_.end();)
        it = want.count(*it) ? std::next(it) : assigned_subs_.erase(it);
    }
    // Filters on topics the group has already assigned since they were subscribed: confirmed.
    std::vector<uint64_t> confirm;
    for (auto& s : subs)
      if (assigned_subs_.count(s.ktopic) && !confirmed_.count(s.id)) confirm.push_back(s.id);
    {
      std::lock_guard lk(subs_mu_);
      active_.clear();
      for (auto& [id, s] : subs_) active_.push_back(s);
    }
    for (uint64_t id : confirm) settle(id);
    std::set<uint64_t> live;
    for (auto& s : subs) live.insert(s.id);
    for (auto it = confirmed_.begin(); it != confirmed_.end();)
      it = live.count(*it) ? std::next(it) : confirmed_.erase(it);
  }

  void settle(uint64_t id) {
    confirmed_.insert(id);
    host_.subscriptionSettled(id, FG_OK, "assigned by group " + s_.group);
  }

  void onRebalance(rd_kafka_t* rk, rd_kafka_resp_err_t err, rd_kafka_topic_partition_list_t* parts) {
    bool coop = std::strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    if (err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
      for (int i = 0; i < parts->cnt; ++i) {
        auto p = std::make_shared<Part>();
        p->topic = parts->elems[i].topic;
        p->partition = parts->elems[i].partition;
        parts_[partKey(p->topic, p->partition)] = p;
      }
      if (coop)
        rd_kafka_incremental_assign(rk, parts);
      else
        rd_kafka_assign(rk, parts);
      paused_ = false;
      host_.debug("kafka: assigned " + std::to_string(parts->cnt) + " partition(s)");
      // The group has now seen every topic subscribed so far: confirm their filters.
      assigned_subs_ = kafka_subs_;
      std::vector<uint64_t> confirm;
      for (auto& s : active_)
        if (assigned_subs_.count(s.ktopic) && !confirmed_.count(s.id)) confirm.push_back(s.id);
      for (uint64_t id : confirm) settle(id);
      return;
    }
    if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS) {
      applyAcks();
      commit(true, parts);  // what is final of the revoked partitions
      std::set<std::string> gone;
      for (int i = 0; i < parts->cnt; ++i) gone.insert(partKey(parts->elems[i].topic, parts->elems[i].partition));
      size_t forgotten = 0;
      for (auto& k : gone) {
        auto it = parts_.find(k);
        if (it == parts_.end()) continue;
        it->second->revoked = true;
        for (auto& [off, fin] : it->second->inflight)
          if (!fin) ++forgotten;
        parts_.erase(it);
      }
      for (auto it = held_.begin(); it != held_.end();) {
        if (gone.count(partKey(rd_kafka_topic_name(it->msg->rkt), it->msg->partition))) {
          rd_kafka_message_destroy(it->msg);
          it = held_.erase(it);
        } else {
          ++it;
        }
      }
      if (forgotten)
        host_.info("kafka: rebalance: " + std::to_string(forgotten) +
                   " record(s) without a final outcome are left to the next owner");
      if (coop)
        rd_kafka_incremental_unassign(rk, parts);
      else
        rd_kafka_assign(rk, nullptr);
      paused_ = false;
      return;
    }
    host_.error(std::string("kafka: rebalance error: ") + rd_kafka_err2str(err));
    if (coop)
      rd_kafka_incremental_unassign(rk, parts);
    else
      rd_kafka_assign(rk, nullptr);
  }

  static std::string partKey(const std::string& topic, int32_t partition) {
    return topic + '\0' + std::to_string(partition);
  }

  void setPaused(bool pause) {
    rd_kafka_topic_partition_list_t* a = nullptr;
    if (rd_kafka_assignment(cons_, &a) == RD_KAFKA_RESP_ERR_NO_ERROR && a) {
      if (pause)
        rd_kafka_pause_partitions(cons_, a);
      else
        rd_kafka_resume_partitions(cons_, a);
      rd_kafka_topic_partition_list_destroy(a);
    }
    paused_ = pause;
  }

  struct Held {
    rd_kafka_message_t* msg;
    uint64_t sub_id;
    std::string fin_topic;
    PartPtr part;
  };

  // A record from the group consumer (consumer thread).
  void received(rd_kafka_message_t* m) {
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        host_.warn(std::string("kafka: consume: ") + rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      return;
    }
    std::string ktopic = rd_kafka_topic_name(m->rkt);
    auto pit = parts_.find(partKey(ktopic, m->partition));
    if (pit == parts_.end()) {  // not (or no longer) ours: the next owner reads it
      rd_kafka_message_destroy(m);
      return;
    }
    PartPtr part = pit->second;
    part->inflight.emplace(m->offset, false);
    if (part->next < 0) part->next = m->offset;
    rd_kafka_headers_t* hdrs = nullptr;
    rd_kafka_message_headers(m, &hdrs);
    bool has_origin = false, has_group = false, has_hdr = false;
    std::string origin = headerValue(hdrs, kHdrOrigin, &has_origin);
    std::string group = headerValue(hdrs, kHdrGroup, &has_group);
    if ((has_origin && origin == s_.instance_id) || (has_group && group == s_.group)) {
      // Our own publish (or one of our group's instances'): consumed on purpose.
      skipped_own_.fetch_add(1, std::memory_order_relaxed);
      finalize(part, m->offset);
      rd_kafka_message_destroy(m);
      return;
    }
    std::string hdr_topic = headerValue(hdrs, kHdrTopic, &has_hdr);
    std::string key = m->key ? std::string(static_cast<const char*>(m->key), m->key_len) : std::string();
    std::string fin, problem;
    if (!has_hdr && !m->key)
      problem = "record without key and without a fin-topic header";
    else if (has_hdr && m->key && hdr_topic != key)
      problem = "key and fin-topic header differ";
    else
      fin = has_hdr ? hdr_topic : key;
    if (problem.empty() && fin.empty()) problem = "empty fin topic";
    if (problem.empty() && s_.single_topic.empty() && mapTopic(fin) != ktopic)
      problem = "fin topic '" + fin.substr(0, 200) + "' does not belong on Kafka topic " + ktopic;
    if (problem.empty() && fin.rfind("$", 0) == 0) problem = "fin topics starting with '$' are reserved";
    uint64_t sub_id = 0;
    if (problem.empty()) {
      bool found = false;
      for (auto& s : active_)
        if ((s.ktopic == ktopic || s.ktopic[0] == '^') && fingate::topicMatches(s.filter, fin)) {
          sub_id = s.id;
          found = true;
          break;
        }
      if (!found && s_.single_topic.empty()) {
        // Subscribed a moment ago, unsubscribed since: nothing wants it here.
        finalize(part, m->offset);
        rd_kafka_message_destroy(m);
        return;
      }
    } else {
      // Handed in under a topic nothing routes, so the gateway dead-letters and counts it.
      bad_records_.fetch_add(1, std::memory_order_relaxed);
      host_.warn("kafka: bad record " + ktopic + "[" + std::to_string(m->partition) + "]@" + std::to_string(m->offset) +
                 ": " + problem);
      fin = "$kafka/" + ktopic;
    }
    Held h{m, sub_id, std::move(fin), part};
    if (!held_.empty()) {
      held_.push_back(std::move(h));
      return;
    }
    if (!offer(h)) held_.push_back(std::move(h));
  }

  // Hands one record to the host. False: RETRY (keep it).
  bool offer(Held& h) {
    if (h.part->revoked) {
      rd_kafka_message_destroy(h.msg);
      return true;
    }
    rd_kafka_message_t* m = h.msg;
    rd_kafka_headers_t* hdrs = nullptr;
    rd_kafka_message_headers(m, &hdrs);
    std::vector<fg_header> hs;
    if (hdrs) {
      const char* name;
      const void* val;
      size_t size;
      for (size_t i = 0; rd_kafka_header_get_all(hdrs, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; ++i)
        hs.push_back(fg_header{fingate::sdk::str(name), fg_str{static_cast<const char*>(val), val ? size : 0}});
    }
    rd_kafka_timestamp_type_t tt;
    int64_t ts = rd_kafka_message_timestamp(m, &tt);
    fg_message msg{fingate::sdk::str(h.fin_topic),
                   fg_str{static_cast<const char*>(m->payload), m->payload ? m->len : 0},
                   hs.empty() ? nullptr : hs.data(),
                   hs.size(),
                   ts > 0 ? ts : 0,
                   0};
    uint64_t token = next_token_++;
    bool tracked = false;
    tokens_.emplace(token, TokenInfo{h.part, m->offset});
    fg_status st = host_.onMessageTracked(h.sub_id, msg, token, &tracked);
    if (st == FG_RETRY) {
      tokens_.erase(token);
      return false;
    }
    if (st != FG_OK || !tracked) {
      // Refused for good (the host logged and counted why), or a 1.0 host: final now.
      tokens_.erase(token);
      finalize(h.part, m->offset);
    }
    rd_kafka_message_destroy(m);
    return true;
  }

  bool offerHeld() {
    while (!held_.empty()) {
      if (!offer(held_.front())) return false;
      held_.pop_front();
    }
    return true;
  }

  void applyAcks() {
    std::vector<std::pair<uint64_t, fg_outcome>> acks;
    {
      std::lock_guard lk(ack_mu_);
      acks.swap(acks_);
    }
    for (auto& [token, outcome] : acks) {
      auto it = tokens_.find(token);
      if (it == tokens_.end()) continue;
      finalize(it->second.part, it->second.offset);
      tokens_.erase(it);
    }
  }

  // Marks offset final and advances the partition's commit position over every final prefix.
  void finalize(const PartPtr& p, int64_t offset) {
    if (p->revoked) return;
    auto it = p->inflight.find(offset);
    if (it == p->inflight.end()) return;
    it->second = true;
    while (!p->inflight.empty() && p->inflight.begin()->second) {
      p->next = p->inflight.begin()->first + 1;
      p->inflight.erase(p->inflight.begin());
    }
  }

  // Commits each partition's final position that moved (only those in `only`, when given).
  void commit(bool sync, rd_kafka_topic_partition_list_t* only) {
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(8);
    std::vector<PartPtr> moved;
    for (auto& [k, p] : parts_) {
      if (p->next < 0 || p->next == p->committed) continue;
      if (only && !rd_kafka_topic_partition_list_find(only, p->topic.c_str(), p->partition)) continue;
      rd_kafka_topic_partition_list_add(l, p->topic.c_str(), p->partition)->offset = p->next;
      moved.push_back(p);
    }
    if (l->cnt > 0) {
      rd_kafka_resp_err_t e = rd_kafka_commit(cons_, l, sync ? 0 : 1);
      if (e && e != RD_KAFKA_RESP_ERR__NO_OFFSET)
        host_.warn(std::string("kafka: commit failed: ") + rd_kafka_err2str(e));
      else
        for (auto& p : moved) p->committed = p->next;
    }
    rd_kafka_topic_partition_list_destroy(l);
  }

  // ---- the shared binding registry (no group) -----------------------------------------

  void startRegistryLocked() {
    if (reg_thread_.joinable()) return;
    reg_thread_ = std::thread([this] { registryLoop(); });
  }

  uint64_t registrySub() {
    std::lock_guard lk(subs_mu_);
    return reg_sub_;
  }

  void registryLoop() {
    const std::string& t = s_.registry_topic;
    awaitTopic(t, 10s);
    char err[512];
    rd_kafka_conf_t* c = consumerConf(false);
    rd_kafka_conf_set(c, "enable.partition.eof", "true", err, sizeof err);
    // librdkafka's consumer API wants a group id even for assign(); it is never joined (no
    // subscribe) and nothing is committed: every instance reads the whole registry.
    std::string gid = s_.instance_id + ".registry";
    rd_kafka_conf_set(c, "group.id", gid.c_str(), err, sizeof err);
    rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    if (!rk) {
      rd_kafka_conf_destroy(c);
      host_.error(std::string("kafka: registry consumer: ") + err);
      if (uint64_t id = registrySub()) host_.subscriptionSettled(id, FG_ERR_INTERNAL, err);
      return;
    }
    rd_kafka_poll_set_consumer(rk);
    // The end offsets seen now: the registry is rebuilt once every partition reached them.
    std::map<int32_t, int64_t> end;
    while (!reg_stop_ && end.empty()) {
      rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk, t.c_str(), nullptr);
      const rd_kafka_metadata_t* md = nullptr;
      if (rd_kafka_metadata(rk, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR && md && md->topic_cnt == 1 &&
          md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR) {
        for (int i = 0; i < md->topics[0].partition_cnt; ++i) {
          int32_t p = md->topics[0].partitions[i].id;
          int64_t lo = 0, hi = 0;
          if (rd_kafka_query_watermark_offsets(rk, t.c_str(), p, &lo, &hi, 5000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            end.clear();
            break;
          }
          end[p] = hi;
        }
      }
      if (md) rd_kafka_metadata_destroy(md);
      rd_kafka_topic_destroy(rkt);
      if (end.empty()) std::this_thread::sleep_for(200ms);
    }
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(static_cast<int>(end.size()));
    for (auto& [p, hi] : end) rd_kafka_topic_partition_list_add(l, t.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
    rd_kafka_assign(rk, l);
    rd_kafka_topic_partition_list_destroy(l);
    std::set<int32_t> behind;
    for (auto& [p, hi] : end)
      if (hi > 0) behind.insert(p);
    bool confirmed = false;
    uint64_t confirmed_for = 0;
    std::deque<rd_kafka_message_t*> held;
    while (!reg_stop_) {
      uint64_t sub = registrySub();
      if (sub && (!confirmed || confirmed_for != sub) && behind.empty()) {
        confirmed = true;
        confirmed_for = sub;
        host_.subscriptionSettled(sub, FG_OK, "registry " + t + " read up to its end");
      }
      rd_kafka_message_t* m = nullptr;
      if (!held.empty()) {
        m = held.front();
        held.pop_front();
      } else {
        m = rd_kafka_consumer_poll(rk, 50);
      }
      if (!m) continue;
      if (m->err) {
        if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
          if (end.count(m->partition) && m->offset >= end[m->partition]) behind.erase(m->partition);
        } else {
          host_.warn(std::string("kafka: registry consume: ") + rd_kafka_message_errstr(m));
        }
        rd_kafka_message_destroy(m);
        continue;
      }
      bool delivered = registryRecord(m, sub);
      if (!delivered) {  // RETRY: keep it first, try again shortly
        held.push_front(m);
        std::this_thread::sleep_for(2ms);
        continue;
      }
      if (end.count(m->partition) && m->offset + 1 >= end[m->partition]) behind.erase(m->partition);
      rd_kafka_message_destroy(m);
    }
    for (auto* m : held) rd_kafka_message_destroy(m);
    rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
  }

  // False only when the host answered RETRY.
  bool registryRecord(rd_kafka_message_t* m, uint64_t sub) {
    if (!sub || !m->key) return true;
    rd_kafka_headers_t* hdrs = nullptr;
    rd_kafka_message_headers(m, &hdrs);
    bool has_origin = false;
    std::string origin = headerValue(hdrs, kHdrOrigin, &has_origin);
    if (has_origin && origin == s_.instance_id) return true;
    std::string topic(kRegistryPrefix);
    topic.append(static_cast<const char*>(m->key), m->key_len);
    fg_message msg{fingate::sdk::str(topic),
                   fg_str{static_cast<const char*>(m->payload), m->payload ? m->len : 0},
                   nullptr,
                   0,
                   0,
                   0};
    uint64_t token = kRegistryTokenBit | reg_token_++;
    return host_.onMessageTracked(sub, msg, token) != FG_RETRY;
  }

  Settings s_;
  bool started_ = false, stopped_ = false;
  std::atomic<bool> running_{false};
  std::atomic<bool> prod_stop_{false}, cons_stop_{false}, reg_stop_{false};
  std::atomic<bool> all_down_{false}, fatal_{false};
  bool reported_fatal_ = false;
  std::atomic<bool> create_unsupported_{false};
  rd_kafka_t* prod_ = nullptr;
  rd_kafka_t* cons_ = nullptr;
  rd_kafka_queue_t* admin_q_ = nullptr;
  std::list<std::string> admin_pending_;  // CreateTopics requests in flight (producer thread)
  std::thread prod_thread_, cons_thread_, reg_thread_;

  std::mutex topics_mu_;
  std::condition_variable topics_cv_;
  std::map<std::string, TopicState> topics_;
  std::map<std::string, bool> topic_compact_;

  std::mutex subs_mu_;  // guards subs_, subs_dirty_, reg_sub_, active_ writes
  std::map<uint64_t, Sub> subs_;
  bool subs_dirty_ = false;
  uint64_t reg_sub_ = 0;

  // consumer thread only
  std::vector<Sub> active_;              // the host's filters as last applied
  std::set<std::string> kafka_subs_;     // what the consumer is subscribed to
  std::set<std::string> assigned_subs_;  // ... as of the last assignment
  std::set<uint64_t> confirmed_;
  std::unordered_map<std::string, PartPtr> parts_;
  std::unordered_map<uint64_t, TokenInfo> tokens_;
  std::deque<Held> held_;
  bool paused_ = false;
  uint64_t next_token_ = 1;
  uint64_t reg_token_ = 1;

  std::mutex ack_mu_;
  std::vector<std::pair<uint64_t, fg_outcome>> acks_;

  std::atomic<uint64_t> retries_{0}, skipped_own_{0}, bad_records_{0};
};

}  // namespace

FG_DEFINE_PLUGIN(KafkaPlugin, "kafka", "0.1.0", FG_CAP_DELIVERY | FG_CAP_SUBSCRIBE_ACK | FG_CAP_NO_LOCAL, FG_KAFKA_KEYS,
                 "rdkafka.*")
