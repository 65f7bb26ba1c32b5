// loopback: the in-process reference plugin and test fixture. It uses every part of the
// ABI 1.1 (outcome tokens and ack, typed events, connection facts, FG_DELIVERY_NO_RECEIVER),
// each configurable so that the core's handling of it can be tested without a broker.
//
// Every published message is handed back, from the plugin's own thread, to each
// subscription whose filter matches its topic (mode: echo, the default), or only counted
// (mode: sink). Its queue is bounded (`capacity`): publish answers FG_RETRY when full, and
// on_message's FG_RETRY makes it wait and try the same message again, so nothing is dropped.
//
// Keys (all optional):
//   mode               echo (default) | sink
//   capacity           queued publishes before publish answers FG_RETRY (default 10000)
//   ack_log            a file: each ack(token, outcome) appends "<token> <topic> <outcome>\n"
//                      (outcome: delivered | dead_lettered | refused | filtered), flushed per
//                      line; an ack of a token it does not hold (twice, or never handed in)
//                      appends "<token> - <outcome> UNKNOWN_TOKEN". Opened (append) at start.
//                      Acks are counted either way; stop() logs the counts.
//   deliver            the on_delivery outcome of publishes whose topic matches deliver_topic:
//                      ok (default) | fail | no_receiver | none (never reported: stays pending)
//   deliver_delay_ms   report that outcome this long after the publish was processed, from the
//                      plugin's worker thread (default 0: at once); stop() reports what is due
//                      later at once
//   deliver_topic      an MQTT-style filter: deliver/deliver_delay_ms apply only to publishes
//                      whose topic matches it; others are reported ok at once (default "#")
//   subscribe_delay_ms confirm (or refuse) subscriptions this long after subscribe(), from the
//                      worker thread (default 0: from inside subscribe(), as a 1.0 broker
//                      plugin might). A subscription echoes only once it is confirmed.
//   subscribe_refuse   an MQTT-style filter: a subscription whose filter matches it (the filter
//                      read as a topic) is refused: FG_EVENT_SUBSCRIPTION with status
//                      FG_ERR_STATE, detail "refused by loopback config", and it never echoes
//                      (default: none refused)
//   no_local           true: report FG_CONN_NO_LOCAL (FG_EVENT_CONNECTION) before UP (default
//                      false). The echo goes on regardless: the flag is a claim the host trusts,
//                      so a test can check the host's echo window both ways.
//
// Inbound messages go in with on_message_tracked and a fresh token each (a 1.0 host has no
// tokens: the message goes in untracked and is logged as delivered once the host took it).
// Subscriptions are settled with the typed event (FG_STATE_SUBSCRIBED on a 1.0 host).
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <deque>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <vector>

namespace {

using fingate::sdk::Config;
using fingate::sdk::ConfigError;
using fingate::sdk::Host;
using Clock = std::chrono::steady_clock;

const char* outcomeName(fg_outcome o) {
  switch (o) {
    case FG_OUTCOME_DELIVERED: return "delivered";
    case FG_OUTCOME_DEAD_LETTERED: return "dead_lettered";
    case FG_OUTCOME_REFUSED: return "refused";
    case FG_OUTCOME_FILTERED: return "filtered";
    default: return nullptr;
  }
}

enum class Deliver { Ok, Fail, NoReceiver, None };

std::string validFilter(const Config& cfg, const std::string& key, const std::string& def) {
  std::string f = cfg.get(key, def);
  if (!fingate::isValidFilter(f)) throw ConfigError(key, "'" + f + "' is not a valid MQTT-style filter");
  return f;
}

class Loopback final : public fingate::sdk::Plugin {
 public:
  Loopback(Host host, const Config& cfg) : Plugin(host) {
    std::string mode = cfg.get("mode", "echo");
    if (mode != "echo" && mode != "sink") throw ConfigError("mode", "expected echo or sink, got '" + mode + "'");
    echo_ = mode == "echo";
    capacity_ = static_cast<size_t>(cfg.getInt("capacity", 10000, 1, 100000000));
    ack_log_ = cfg.get("ack_log");
    const std::string d = cfg.get("deliver", "ok");
    if (d == "ok") deliver_ = Deliver::Ok;
    else if (d == "fail") deliver_ = Deliver::Fail;
    else if (d == "no_receiver") deliver_ = Deliver::NoReceiver;
    else if (d == "none") deliver_ = Deliver::None;
    else throw ConfigError("deliver", "expected ok, fail, no_receiver or none, got '" + d + "'");
    deliver_delay_ = std::chrono::milliseconds(cfg.getInt("deliver_delay_ms", 0, 0, 3600000));
    deliver_topic_ = validFilter(cfg, "deliver_topic", "#");
    subscribe_delay_ = std::chrono::milliseconds(cfg.getInt("subscribe_delay_ms", 0, 0, 3600000));
    if (cfg.has("subscribe_refuse")) subscribe_refuse_ = validFilter(cfg, "subscribe_refuse", "");
    no_local_ = cfg.getBool("no_local", false);
  }
  ~Loopback() override {
    stop(1000);
    if (ack_file_) std::fclose(ack_file_);
  }

  fg_status start() override {
    {
      std::lock_guard lk(mu_);
      if (running_ || started_) return FG_ERR_STATE;
      started_ = true;
    }
    if (!ack_log_.empty()) {
      std::lock_guard lk(ack_mu_);
      ack_file_ = std::fopen(ack_log_.c_str(), "a");
      if (!ack_file_) {
        host_.error("loopback: ack_log: cannot open '" + ack_log_ + "' for appending");
        return FG_ERR_INVALID_ARG;
      }
    }
    {
      std::lock_guard lk(mu_);
      running_ = true;
    }
    worker_ = std::thread([this] { run(); });
    if (no_local_) host_.connectionFacts(FG_CONN_NO_LOCAL);
    host_.onState(FG_STATE_UP, "loopback ready");
    return FG_OK;
  }

  fg_status stop(uint32_t /*timeout_ms*/) override {
    {
      std::lock_guard lk(mu_);
      if (!running_) return FG_OK;
      running_ = false;
    }
    cv_.notify_all();
    if (worker_.joinable()) worker_.join();
    std::string summary;
    bool unknown = false;
    {
      std::lock_guard lk(ack_mu_);
      summary = "loopback: stopped; acks: delivered=" + std::to_string(acks_[FG_OUTCOME_DELIVERED]) +
                " dead_lettered=" + std::to_string(acks_[FG_OUTCOME_DEAD_LETTERED]) +
                " refused=" + std::to_string(acks_[FG_OUTCOME_REFUSED]) +
                " filtered=" + std::to_string(acks_[FG_OUTCOME_FILTERED]) + " unknown=" + std::to_string(acks_unknown_) +
                ", tokens not acked yet: " + std::to_string(tokens_.size());
      unknown = acks_unknown_ != 0;
    }
    host_.log(unknown ? FG_LOG_WARN : FG_LOG_INFO, summary);
    host_.onState(FG_STATE_STOPPED, "");
    return FG_OK;
  }

  fg_status publish(const fg_message& m, uint64_t delivery_id) override {
    std::lock_guard lk(mu_);
    if (!running_) return FG_ERR_STATE;
    if (queue_.size() >= capacity_) return FG_RETRY;
    queue_.push_back(Item{std::string(fingate::sdk::view(m.topic)), std::string(fingate::sdk::view(m.payload)),
                          m.session, delivery_id});
    cv_.notify_one();
    return FG_OK;
  }

  fg_status subscribe(std::string_view filter, uint64_t sub_id) override {
    if (!fingate::isValidFilter(filter)) return FG_ERR_INVALID_ARG;
    const bool refuse = subscribe_refuse_ && fingate::topicMatches(*subscribe_refuse_, filter);
    if (subscribe_delay_.count() == 0) {
      settle(std::string(filter), sub_id, refuse);
      return FG_OK;
    }
    std::lock_guard lk(mu_);
    Timed t;
    t.settle_sub = true;
    t.filter = std::string(filter);
    t.id = sub_id;
    t.refuse = refuse;
    timed_.emplace(Clock::now() + subscribe_delay_, std::move(t));
    cv_.notify_one();
    return FG_OK;
  }

  fg_status unsubscribe(uint64_t sub_id) override {
    std::lock_guard lk(mu_);
    std::erase_if(subs_, [&](const Sub& s) { return s.id == sub_id; });
    std::erase_if(timed_, [&](const auto& kv) { return kv.second.settle_sub && kv.second.id == sub_id; });
    return FG_OK;
  }

  void ack(uint64_t token, fg_outcome outcome) override {
    // Never calls back into the host (the ABI forbids it here): a line in the file and a count.
    std::lock_guard lk(ack_mu_);
    const char* name = outcomeName(outcome);
    std::string line = std::to_string(token) + " ";
    auto it = tokens_.find(token);
    if (it == tokens_.end()) {
      ++acks_unknown_;
      line += std::string("- ") + (name ? name : ("outcome-" + std::to_string(outcome)).c_str()) + " UNKNOWN_TOKEN\n";
    } else {
      line += it->second + " " + (name ? name : ("outcome-" + std::to_string(outcome)).c_str()) + "\n";
      tokens_.erase(it);
      if (name) ++acks_[outcome];
      else ++acks_unknown_;
    }
    if (ack_file_) {
      std::fwrite(line.data(), 1, line.size(), ack_file_);
      std::fflush(ack_file_);
    }
  }

 private:
  struct Item {
    std::string topic, payload;
    uint64_t session;
    uint64_t delivery_id;
  };
  struct Sub {
    std::string filter;
    uint64_t id;
  };
  // Work the worker does at a given time: a delayed delivery report or subscription settlement.
  struct Timed {
    bool settle_sub = false;
    uint64_t id = 0;  // delivery id or sub id
    fg_delivery status = FG_DELIVERY_OK;
    std::string filter;
    bool refuse = false;
  };

  // Confirms (activates) or refuses a subscription and reports it.
  void settle(const std::string& filter, uint64_t sub_id, bool refuse) {
    if (refuse) {
      host_.subscriptionSettled(sub_id, FG_ERR_STATE, "refused by loopback config");
      return;
    }
    {
      std::lock_guard lk(mu_);
      std::erase_if(subs_, [&](const Sub& s) { return s.id == sub_id; });
      subs_.push_back({filter, sub_id});
    }
    host_.subscriptionSettled(sub_id, FG_OK);
  }

  void fire(const Timed& t) {
    if (t.settle_sub) settle(t.filter, t.id, t.refuse);
    else host_.onDelivery(t.id, t.status);
  }

  // Called with mu_ held; returns with it held.
  void deliverOutcome(std::unique_lock<std::mutex>& lk, const Item& it) {
    if (!it.delivery_id) return;
    if (!fingate::topicMatches(deliver_topic_, it.topic)) {
      lk.unlock();
      host_.onDelivery(it.delivery_id, FG_DELIVERY_OK);
      lk.lock();
      return;
    }
    fg_delivery status = FG_DELIVERY_OK;
    switch (deliver_) {
      case Deliver::None: return;
      case Deliver::Ok: status = FG_DELIVERY_OK; break;
      case Deliver::Fail: status = FG_DELIVERY_FAILED; break;
      case Deliver::NoReceiver: status = FG_DELIVERY_NO_RECEIVER; break;
    }
    if (deliver_delay_.count() > 0) {
      Timed t;
      t.id = it.delivery_id;
      t.status = status;
      timed_.emplace(Clock::now() + deliver_delay_, std::move(t));
      return;
    }
    lk.unlock();
    host_.onDelivery(it.delivery_id, status);
    lk.lock();
  }

  // Hands one echo copy to the host under a fresh token, retrying while it answers FG_RETRY.
  void echoOne(uint64_t sub_id, const Item& it) {
    const uint64_t token = next_token_++;
    {
      std::lock_guard lk(ack_mu_);
      tokens_.emplace(token, it.topic);  // before the call: the ack may come from another thread at once
    }
    const fg_message m{fingate::sdk::str(it.topic), fingate::sdk::str(it.payload), nullptr, 0, 0, 0};
    bool tracked = false;
    fg_status st;
    while ((st = host_.onMessageTracked(sub_id, m, token, &tracked)) == FG_RETRY) {
      std::unique_lock wl(mu_);
      if (!running_) break;
      cv_.wait_for(wl, std::chrono::milliseconds(1));
    }
    if (st == FG_OK && tracked) return;  // the host acks it later
    if (st == FG_OK) {
      ack(token, FG_OUTCOME_DELIVERED);  // a 1.0 host took it: nothing more will come
      return;
    }
    std::lock_guard lk(ack_mu_);  // not taken: the host will never ack this token
    tokens_.erase(token);
  }

  void run() {
    std::unique_lock lk(mu_);
    while (true) {
      while (!timed_.empty() && (timed_.begin()->first <= Clock::now() || !running_)) {
        Timed t = std::move(timed_.begin()->second);
        timed_.erase(timed_.begin());
        lk.unlock();
        fire(t);
        lk.lock();
      }
      if (!queue_.empty()) {
        Item it = std::move(queue_.front());
        queue_.pop_front();
        std::vector<uint64_t> targets;
        if (echo_)
          for (auto& s : subs_)
            if (fingate::topicMatches(s.filter, it.topic)) targets.push_back(s.id);
        lk.unlock();
        for (uint64_t id : targets) echoOne(id, it);
        lk.lock();
        deliverOutcome(lk, it);
        continue;
      }
      if (!running_) {
        if (timed_.empty()) return;  // stopped and drained
        continue;                    // stop reports what was due later at once
      }
      if (timed_.empty()) {
        cv_.wait(lk);
      } else {
        // A copy: wait_until reads its deadline again after waking, and an unsubscribe may
        // have erased the map node meanwhile (found by ThreadSanitizer: use after free).
        const Clock::time_point due = timed_.begin()->first;
        cv_.wait_until(lk, due);
      }
    }
  }

  // configuration
  bool echo_ = true;
  size_t capacity_ = 10000;
  std::string ack_log_;
  Deliver deliver_ = Deliver::Ok;
  std::chrono::milliseconds deliver_delay_{0};
  std::string deliver_topic_ = "#";
  std::chrono::milliseconds subscribe_delay_{0};
  std::optional<std::string> subscribe_refuse_;
  bool no_local_ = false;

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::multimap<Clock::time_point, Timed> timed_;
  std::vector<Sub> subs_;
  std::thread worker_;
  bool running_ = false;
  bool started_ = false;

  // outcome tokens (ack_mu_)
  std::mutex ack_mu_;
  std::atomic<uint64_t> next_token_{1};
  std::unordered_map<uint64_t, std::string> tokens_;  // token -> topic, handed in and not acked
  uint64_t acks_[4] = {0, 0, 0, 0};
  uint64_t acks_unknown_ = 0;
  std::FILE* ack_file_ = nullptr;
};

}  // namespace

FG_DEFINE_PLUGIN(Loopback, "loopback", "0.2.0", FG_CAP_DELIVERY | FG_CAP_SUBSCRIBE_ACK, "mode", "capacity", "ack_log",
                 "deliver", "deliver_delay_ms", "deliver_topic", "subscribe_delay_ms", "subscribe_refuse", "no_local")
