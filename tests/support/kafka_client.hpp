// Plain librdkafka clients for Kafka tests and benchmarks (header-only, so that only targets
// that link rdkafka include it): a producer that waits for its delivery reports, a consumer
// (assign from the beginning, or a group), committed offsets and watermarks.
#pragma once

#include <librdkafka/rdkafka.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace fingate::test {

struct KafkaRecord {
  std::string topic;
  int32_t partition = 0;
  int64_t offset = 0;
  std::optional<std::string> key;
  std::optional<std::string> value;  // nullopt = a NULL value (tombstone)
  std::vector<std::pair<std::string, std::string>> headers;
  std::optional<std::string> header(const std::string& name) const {
    std::optional<std::string> v;
    for (auto& [k, val] : headers)
      if (k == name) v = val;
    return v;
  }
};

inline rd_kafka_conf_t* kafkaConf(const std::string& bootstrap,
                                  const std::vector<std::pair<std::string, std::string>>& extra) {
  rd_kafka_conf_t* c = rd_kafka_conf_new();
  char err[512];
  if (rd_kafka_conf_set(c, "bootstrap.servers", bootstrap.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK)
    throw std::runtime_error(err);
  rd_kafka_conf_set(c, "log_level", "3", err, sizeof err);
  for (auto& [k, v] : extra)
    if (rd_kafka_conf_set(c, k.c_str(), v.c_str(), err, sizeof err) != RD_KAFKA_CONF_OK)
      throw std::runtime_error(k + ": " + err);
  return c;
}

class KafkaProducer {
 public:
  explicit KafkaProducer(const std::string& bootstrap, std::vector<std::pair<std::string, std::string>> extra = {}) {
    extra.emplace_back("enable.idempotence", "true");
    rd_kafka_conf_t* c = kafkaConf(bootstrap, extra);
    rd_kafka_conf_set_dr_msg_cb(c, [](rd_kafka_t*, const rd_kafka_message_t* m, void* op) {
      auto* self = static_cast<KafkaProducer*>(op);
      if (m->err)
        ++self->failed_;
      else
        ++self->delivered_;
    });
    rd_kafka_conf_set_opaque(c, this);
    char err[512];
    rk_ = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
    if (!rk_) throw std::runtime_error(err);
  }
  ~KafkaProducer() {
    rd_kafka_flush(rk_, 10000);
    rd_kafka_destroy(rk_);
  }
  // Queues one record (retrying while the local queue is full). value nullopt = NULL value.
  bool send(const std::string& topic, const std::optional<std::string>& key, const std::optional<std::string>& value,
            const std::vector<std::pair<std::string, std::string>>& headers = {}) {
    const void* kp = key ? key->data() : nullptr;
    size_t kl = key ? key->size() : 0;
    void* vp = value ? const_cast<char*>(value->data()) : nullptr;
    size_t vl = value ? value->size() : 0;
    for (int i = 0; i < 10000; ++i) {
      rd_kafka_headers_t* h = rd_kafka_headers_new(headers.size());
      for (auto& [k, v] : headers) rd_kafka_header_add(h, k.c_str(), -1, v.data(), static_cast<ssize_t>(v.size()));
      rd_kafka_resp_err_t e =
          rd_kafka_producev(rk_, RD_KAFKA_V_TOPIC(topic.c_str()), RD_KAFKA_V_KEY(kp, kl), RD_KAFKA_V_VALUE(vp, vl),
                            RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END);
      if (e == RD_KAFKA_RESP_ERR_NO_ERROR) return true;
      rd_kafka_headers_destroy(h);
      if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL) return false;
      rd_kafka_poll(rk_, 10);
    }
    return false;
  }
  // Waits for every queued record's delivery report; true when none is left and none failed.
  bool flush(int timeout_ms = 20000) {
    return rd_kafka_flush(rk_, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR && failed_ == 0;
  }
  void poll() { rd_kafka_poll(rk_, 0); }
  uint64_t delivered() const { return delivered_; }
  uint64_t failed() const { return failed_; }
  rd_kafka_t* handle() { return rk_; }

 private:
  rd_kafka_t* rk_ = nullptr;
  uint64_t delivered_ = 0, failed_ = 0;
};

class KafkaConsumer {
 public:
  // group empty: no group membership, every partition of `topics` assigned from the beginning (the topics
  // must exist). Otherwise a group subscription (auto.offset.reset=earliest, auto commit).
  KafkaConsumer(const std::string& bootstrap, const std::vector<std::string>& topics, const std::string& group = "",
                std::vector<std::pair<std::string, std::string>> extra = {}) {
    extra.emplace_back("auto.offset.reset", "earliest");
    extra.emplace_back("enable.auto.commit", group.empty() ? "false" : "true");
    // librdkafka's consumer API needs a group id even for assign(); with assign() it never joins.
    extra.emplace_back("group.id", group.empty() ? "fingate-test-reader" : group);
    rd_kafka_conf_t* c = kafkaConf(bootstrap, extra);
    char err[512];
    rk_ = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
    if (!rk_) throw std::runtime_error(err);
    rd_kafka_poll_set_consumer(rk_);
    rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(4);
    if (group.empty()) {
      for (auto& t : topics) {
        for (int32_t p : partitions(t))
          rd_kafka_topic_partition_list_add(l, t.c_str(), p)->offset = RD_KAFKA_OFFSET_BEGINNING;
      }
      rd_kafka_assign(rk_, l);
    } else {
      for (auto& t : topics) rd_kafka_topic_partition_list_add(l, t.c_str(), RD_KAFKA_PARTITION_UA);
      rd_kafka_subscribe(rk_, l);
    }
    rd_kafka_topic_partition_list_destroy(l);
  }
  ~KafkaConsumer() {
    rd_kafka_consumer_close(rk_);
    rd_kafka_destroy(rk_);
  }
  std::vector<int32_t> partitions(const std::string& topic) {
    std::vector<int32_t> out;
    for (int attempt = 0; attempt < 50 && out.empty(); ++attempt) {
      rd_kafka_topic_t* rkt = rd_kafka_topic_new(rk_, topic.c_str(), nullptr);
      const rd_kafka_metadata_t* md = nullptr;
      if (rd_kafka_metadata(rk_, 0, rkt, &md, 2000) == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
          md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        for (int i = 0; i < md->topics[0].partition_cnt; ++i) out.push_back(md->topics[0].partitions[i].id);
      if (md) rd_kafka_metadata_destroy(md);
      rd_kafka_topic_destroy(rkt);
    }
    return out;
  }
  // The next record, or nullopt after timeout.
  std::optional<KafkaRecord> next(std::chrono::milliseconds timeout = std::chrono::seconds(10)) {
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end) {
      rd_kafka_message_t* m = rd_kafka_consumer_poll(rk_, 100);
      if (!m) continue;
      if (m->err) {
        rd_kafka_message_destroy(m);
        continue;
      }
      KafkaRecord r;
      r.topic = rd_kafka_topic_name(m->rkt);
      r.partition = m->partition;
      r.offset = m->offset;
      if (m->key) r.key = std::string(static_cast<const char*>(m->key), m->key_len);
      if (m->payload) r.value = std::string(static_cast<const char*>(m->payload), m->len);
      rd_kafka_headers_t* h = nullptr;
      if (rd_kafka_message_headers(m, &h) == RD_KAFKA_RESP_ERR_NO_ERROR && h) {
        const char* name;
        const void* val;
        size_t size;
        for (size_t i = 0; rd_kafka_header_get_all(h, i, &name, &val, &size) == RD_KAFKA_RESP_ERR_NO_ERROR; ++i)
          r.headers.emplace_back(name, val ? std::string(static_cast<const char*>(val), size) : std::string());
      }
      rd_kafka_message_destroy(m);
      return r;
    }
    return std::nullopt;
  }
  rd_kafka_t* handle() { return rk_; }

 private:
  rd_kafka_t* rk_ = nullptr;
};

// The group's committed offset of topic/partition (-1001 = none), asked with a fresh client.
inline int64_t kafkaCommitted(const std::string& bootstrap, const std::string& group, const std::string& topic,
                              int32_t partition) {
  rd_kafka_conf_t* c = kafkaConf(bootstrap, {{"group.id", group}});
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_CONSUMER, c, err, sizeof err);
  if (!rk) throw std::runtime_error(err);
  rd_kafka_topic_partition_list_t* l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, topic.c_str(), partition);
  int64_t off = RD_KAFKA_OFFSET_INVALID;
  if (rd_kafka_committed(rk, l, 10000) == RD_KAFKA_RESP_ERR_NO_ERROR) off = l->elems[0].offset;
  rd_kafka_topic_partition_list_destroy(l);
  rd_kafka_destroy(rk);
  return off;
}

// The high watermark (end offset) of topic/partition, -1 on error.
inline int64_t kafkaEndOffset(const std::string& bootstrap, const std::string& topic, int32_t partition) {
  rd_kafka_conf_t* c = kafkaConf(bootstrap, {});
  char err[512];
  rd_kafka_t* rk = rd_kafka_new(RD_KAFKA_PRODUCER, c, err, sizeof err);
  if (!rk) throw std::runtime_error(err);
  int64_t lo = -1, hi = -1;
  if (rd_kafka_query_watermark_offsets(rk, topic.c_str(), partition, &lo, &hi, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR)
    hi = -1;
  rd_kafka_destroy(rk);
  return hi;
}

}  // namespace fingate::test
