// A RouterOutput for router-level tests: records what the router hands it, settles each copy as
// delivered (or, with `full`, reports it failed through the router like a full queue would),
// runs posted lane tasks inline, and lets a test settle subscriptions itself (`manual_acks`).
#pragma once

#include <fingate/router.hpp>

#include <functional>
#include <map>
#include <mutex>
#include <string>
#include <vector>

namespace fingate::test {

class RecordingOutput : public RouterOutput {
 public:
  RecordingOutput() = default;
  RecordingOutput(std::string name, std::function<void(std::string)> log) : name_(std::move(name)), log_(std::move(log)) {}

  void send(OutMessage&& m) override {
    if (log_) log_(name_ + " send " + m.topic);
    if (full && router) {
      router->deliveryFailed(name_, std::move(m), "queue_full", "test output is full");
      return;
    }
    m.settle(FG_OUTCOME_DELIVERED);
    std::lock_guard lk(mu_);
    sent.push_back(std::move(m));
  }
  fg_status subscribe(const std::string& filter, uint64_t sub_id) override {
    if (log_) log_(name_ + " sub " + filter);
    std::lock_guard lk(mu_);
    subs[sub_id] = filter;
    return FG_OK;
  }
  void unsubscribe(uint64_t sub_id) override {
    std::lock_guard lk(mu_);
    if (log_) log_(name_ + " unsub " + subs[sub_id]);
    subs.erase(sub_id);
  }
  void post(std::function<void()> fn) override {
    if (defer_posts) {
      std::lock_guard lk(mu_);
      posted.push_back(std::move(fn));
      return;
    }
    fn();
  }
  bool noLocal() const override { return no_local; }

  bool subscribed(const std::string& f) {
    std::lock_guard lk(mu_);
    for (auto& [id, s] : subs)
      if (s == f) return true;
    return false;
  }
  uint64_t subId(const std::string& f) {
    std::lock_guard lk(mu_);
    for (auto& [id, s] : subs)
      if (s == f) return id;
    return 0;
  }
  std::vector<OutMessage> take() {
    std::lock_guard lk(mu_);
    auto v = std::move(sent);
    sent.clear();
    return v;
  }
  // Runs the lane tasks posted so far (defer_posts).
  void runPosted() {
    std::vector<std::function<void()>> fns;
    {
      std::lock_guard lk(mu_);
      fns.swap(posted);
    }
    for (auto& f : fns) f();
  }

  std::vector<OutMessage> sent;
  std::map<uint64_t, std::string> subs;
  bool full = false;
  bool no_local = false;
  bool defer_posts = false;
  Router* router = nullptr;  // for `full`

 private:
  std::mutex mu_;
  std::vector<std::function<void()>> posted;
  std::string name_;
  std::function<void(std::string)> log_;
};

// The pingpong fin of the captured vectors (tests/data/vectors, the "a" series).
inline const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";
inline const std::string kCap = "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d";

// An inbound message as a plugin would hand it in.
inline Envelope env(const std::string& topic, const std::string& payload, uint64_t session = 0) {
  Envelope e;
  e.topic = topic;
  e.assignPayload(payload);
  e.session = session;
  return e;
}

// A router endpoint named `name` with `role` that sends to `out`.
inline std::shared_ptr<RouterEndpoint> routerEndpoint(const std::string& name, Role role, RouterOutput& out,
                                                      bool sessions = false) {
  auto e = std::make_shared<RouterEndpoint>();
  e->name = name;
  e->role = role;
  e->out = &out;
  e->sessions = sessions;
  return e;
}

}  // namespace fingate::test
