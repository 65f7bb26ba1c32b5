// loopback: the in-process reference plugin and test fixture.
//
// Every published message is handed back, from the plugin's own thread, to each
// subscription whose filter matches its topic (mode: echo, the default), or only counted
// (mode: sink). Its queue is bounded (`capacity`, default 10000): publish answers FG_RETRY
// when full, and on_message's FG_RETRY makes it wait and try the same message again, so
// nothing is dropped. Reports UP on start and every confirmed subscription.
#include <fingate/plugin_sdk.hpp>
#include <fingate/topic.hpp>

#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <vector>

namespace {

using fingate::sdk::Config;
using fingate::sdk::Host;

class Loopback final : public fingate::sdk::Plugin {
 public:
  Loopback(Host host, const Config& cfg) : Plugin(host) {
    std::string mode = cfg.get("mode", "echo");
    if (mode != "echo" && mode != "sink") throw fingate::sdk::ConfigError("mode", "expected echo or sink, got '" + mode + "'");
    echo_ = mode == "echo";
    capacity_ = static_cast<size_t>(cfg.getInt("capacity", 10000, 1, 100000000));
  }
  ~Loopback() override { stop(1000); }

  fg_status start() override {
    std::lock_guard lk(mu_);
    if (running_ || started_) return FG_ERR_STATE;
    running_ = started_ = true;
    worker_ = std::thread([this] { run(); });
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
    {
      std::lock_guard lk(mu_);
      subs_.push_back({std::string(filter), sub_id});
    }
    host_.onState(FG_STATE_SUBSCRIBED, std::to_string(sub_id));
    return FG_OK;
  }

  fg_status unsubscribe(uint64_t sub_id) override {
    std::lock_guard lk(mu_);
    std::erase_if(subs_, [&](const Sub& s) { return s.id == sub_id; });
    return FG_OK;
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

  void run() {
    std::unique_lock lk(mu_);
    while (true) {
      cv_.wait(lk, [&] { return !running_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopped and drained
      Item it = std::move(queue_.front());
      queue_.pop_front();
      std::vector<uint64_t> targets;
      if (echo_)
        for (auto& s : subs_)
          if (fingate::topicMatches(s.filter, it.topic)) targets.push_back(s.id);
      lk.unlock();
      for (uint64_t id : targets) {
        // Back-pressure: retry the same message until the host takes it (or we stop).
        while (host_.onMessage(id, it.topic, it.payload) == FG_RETRY) {
          std::unique_lock wl(mu_);
          if (!running_) break;
          cv_.wait_for(wl, std::chrono::milliseconds(1));
        }
      }
      host_.onDelivery(it.delivery_id, FG_DELIVERY_OK);
      lk.lock();
    }
  }

  bool echo_ = true;
  size_t capacity_ = 10000;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<Item> queue_;
  std::vector<Sub> subs_;
  std::thread worker_;
  bool running_ = false;
  bool started_ = false;
};

}  // namespace

FG_DEFINE_PLUGIN(Loopback, "loopback", "0.1.0", FG_CAP_DELIVERY | FG_CAP_SUBSCRIBE_ACK, "mode", "capacity")
