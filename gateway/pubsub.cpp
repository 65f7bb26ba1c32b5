// `fingate pub` / `fingate sub` (docs/cli.md). One plugin instance, driven through the C ABI
// exactly as the gateway drives an endpoint (the host, its states and waits: cli_host.hpp):
//  - pub: a publish counts only when the transport confirms it (FG_CAP_DELIVERY: on_delivery
//    OK); FAILED and NO_RECEIVER are errors, NO_RECEIVER is first retried until --timeout (a
//    server-side endpoint waits for a subscriber); FG_RETRY from publish() is back-pressure:
//    the same message again after a back-off;
//  - sub: subscriptions are made before start() (the plugin restores them on connect, so UP means
//    they are in place), confirmed by FG_EVENT_SUBSCRIPTION when the plugin has
//    FG_CAP_SUBSCRIBE_ACK; every inbound token is acked DELIVERED after its line was written and
//    flushed (from a thread of our own: never inside on_message).
#include "pubsub.hpp"

#include <poll.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <deque>
#include <fingate/fin_codec.hpp>
#include <fingate/topic.hpp>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <sstream>
#include <utility>

#include "cli_host.hpp"

namespace fingate::cli {

namespace {

constexpr size_t kWindow = 256;             // publishes awaiting confirmation at once (after the first)
constexpr auto kNoReceiverRetry = Ms(200);  // NO_RECEIVER: publish again this often (or on a new session)
constexpr auto kBusyBackoffMax = Ms(50);    // FG_RETRY / FG_ERR_UNAVAILABLE: longest back-off

// ---- pub -------------------------------------------------------------------------------

// Where the messages come from.
class Source {
 public:
  enum class Next { Got, End, NotYet };
  explicit Source(const PubArgs& a) : a_(a) {
    if (a.lines) return;
    if (a.has_message)
      one_ = a.message;
    else if (a.null_message)
      one_ = "";
    else if (!a.file.empty())
      one_ = readWhole(a.file);
    else if (a.stdin_whole)
      one_ = readStdin();
  }
  Next next(std::string& out, CliHost& host) {
    if (!a_.lines) {
      if (given_ >= a_.count) return Next::End;
      ++given_;
      out = one_;
      return Next::Got;
    }
    while (true) {
      auto nl = buf_.find('\n');
      if (nl != std::string::npos) {
        out = buf_.substr(0, nl);
        buf_.erase(0, nl + 1);
        if (out.empty()) continue;  // blank lines are not sent (as mosquitto_pub -l)
        return Next::Got;
      }
      if (eof_) {
        if (buf_.empty()) return Next::End;
        out.swap(buf_);
        buf_.clear();
        return Next::Got;
      }
      {
        std::lock_guard lk(host.mu);
        if (host.interrupted) return Next::End;
      }
      pollfd p{0, POLLIN, 0};
      const int n = ::poll(&p, 1, 100);
      if (n == 0) return Next::NotYet;
      if (n < 0) {
        if (errno == EINTR) return Next::NotYet;
        fail(kExitFailure, std::string("cannot read stdin: ") + std::strerror(errno));
      }
      char chunk[65536];
      const ssize_t got = ::read(0, chunk, sizeof chunk);
      if (got < 0) {
        if (errno == EINTR || errno == EAGAIN) return Next::NotYet;
        fail(kExitFailure, std::string("cannot read stdin: ") + std::strerror(errno));
      }
      if (got == 0)
        eof_ = true;
      else
        buf_.append(chunk, static_cast<size_t>(got));
    }
  }

 private:
  static std::string readWhole(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) fail(kExitUsage, "-f " + path + ": cannot read: " + std::strerror(errno));
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  static std::string readStdin() {
    std::string all;
    char chunk[65536];
    while (true) {
      const ssize_t got = ::read(0, chunk, sizeof chunk);
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) fail(kExitFailure, std::string("cannot read stdin: ") + std::strerror(errno));
      if (got == 0) return all;
      all.append(chunk, static_cast<size_t>(got));
    }
  }
  const PubArgs& a_;
  std::string one_;
  uint64_t given_ = 0;
  std::string buf_;
  bool eof_ = false;
};

class Publisher {
 public:
  Publisher(const PubArgs& a, PluginInstance& inst, CliHost& host)
      : a_(a), inst_(inst), host_(host), tracked_(inst.library().capabilities() & FG_CAP_DELIVERY) {}

  // Returns the exit code (failures throw).
  int run(Source& src) {
    const auto interval = a_.rate > 0 ? seconds(1.0 / a_.rate) : Clock::duration::zero();
    auto next_slot = Clock::now();
    bool source_done = false;
    while (true) {
      handleEvents();
      if (interrupted()) source_done = true;
      resendDue();
      checkDeadlines();
      const size_t window = confirmed_ > 0 ? kWindow : 1;  // one at a time until something got through
      bool polled = false;
      if (!source_done && inflight_.size() + retry_.size() < window && Clock::now() >= next_slot) {
        std::string payload;
        switch (src.next(payload, host_)) {
          case Source::Next::Got:
            issue(Pending{++issued_, std::move(payload), Clock::now() + seconds(a_.timeout_s), {}});
            next_slot = std::max(next_slot + interval, Clock::now());  // no burst after a stall
            continue;
          case Source::Next::End:
            source_done = true;
            break;
          case Source::Next::NotYet:
            polled = true;
            break;
        }
      }
      if (source_done && inflight_.empty() && retry_.empty()) break;
      if (!polled) waitSomething(source_done ? Clock::time_point::max() : next_slot);
    }
    if (host_.debug())
      errLine("debug: " + std::to_string(confirmed_) + " message(s) published on '" + a_.topic + "'" +
              (tracked_ ? ", each confirmed by the transport" : ""));
    return kExitOk;
  }

 private:
  struct Pending {
    uint64_t index;  // 1-based, in publish order
    std::string payload;
    Clock::time_point deadline;
    Clock::time_point retry_at;
  };

  bool interrupted() {
    std::lock_guard lk(host_.mu);
    return host_.interrupted;
  }

  std::string which(const Pending& p) const { return "message " + std::to_string(p.index) + " on '" + a_.topic + "'"; }

  // Hands one message to the plugin; FG_RETRY/UNAVAILABLE are retried with a back-off until its
  // deadline.
  void issue(Pending p) {
    const uint64_t id = tracked_ ? ++next_delivery_id_ : 0;
    fg_message m{};
    m.topic = fg_str{a_.topic.data(), a_.topic.size()};
    m.payload = fg_str{p.payload.data(), p.payload.size()};
    auto backoff = Ms(1);
    while (true) {
      const fg_status st = inst_.publish(m, id);
      if (st == FG_OK) break;
      if (st == FG_RETRY || st == FG_ERR_UNAVAILABLE) {
        if (Clock::now() >= p.deadline)
          fail(st == FG_RETRY ? kExitTimeout : kExitFailure,
               which(p) + ": the endpoint did not take it within " + secondsText(a_.timeout_s) + " (" +
                   (st == FG_RETRY ? "busy: FG_RETRY" : "unavailable") + ")");
        std::unique_lock lk(host_.mu);
        host_.cv.wait_for(lk, backoff);
        backoff = std::min<Ms>(backoff * 2, std::chrono::duration_cast<Ms>(kBusyBackoffMax));
        continue;
      }
      if (st == FG_ERR_INVALID_ARG)
        fail(kExitUsage, which(p) + ": refused by the plugin as invalid (a topic or payload it cannot carry)");
      fail(kExitFailure, which(p) + ": publish failed: " + statusName(st));
    }
    if (!tracked_) {  // no delivery reports from this plugin: taken is all it can say
      ++confirmed_;
      return;
    }
    inflight_.emplace(id, std::move(p));
  }

  void handleEvents() {
    std::deque<std::pair<uint64_t, fg_delivery>> got;
    {
      std::lock_guard lk(host_.mu);
      got.swap(host_.deliveries);
    }
    for (auto& [id, status] : got) {
      auto it = inflight_.find(id);
      if (it == inflight_.end()) continue;
      Pending p = std::move(it->second);
      inflight_.erase(it);
      if (status == FG_DELIVERY_OK) {
        ++confirmed_;
        if (host_.debug()) errLine("debug: " + which(p) + " delivered");
      } else if (status == FG_DELIVERY_NO_RECEIVER) {
        if (Clock::now() >= p.deadline) noReceiver(p);
        if (host_.debug()) errLine("debug: " + which(p) + ": no receiver yet; publishing again until --timeout");
        p.retry_at = Clock::now() + kNoReceiverRetry;
        std::lock_guard lk(host_.mu);
        p_hints_ = host_.hints;
        retry_.push_back(std::move(p));
      } else {
        fail(kExitFailure, which(p) + ": delivery failed (the transport reported FAILED)");
      }
    }
  }

  [[noreturn]] void noReceiver(const Pending& p) {
    fail(kExitFailure, which(p) + ": no receiver: nobody took it within " + secondsText(a_.timeout_s) +
                           " (a publish nobody received is a dead letter, not a success)");
  }

  // NO_RECEIVER messages go out again in order: after kNoReceiverRetry, or at once when a client
  // opened a session or subscribed.
  void resendDue() {
    if (retry_.empty()) return;
    uint64_t hints;
    {
      std::lock_guard lk(host_.mu);
      hints = host_.hints;
    }
    const auto now = Clock::now();
    while (!retry_.empty()) {
      if (now >= retry_.front().deadline) noReceiver(retry_.front());
      if (retry_.front().retry_at > now && hints == p_hints_) break;
      Pending p = std::move(retry_.front());
      retry_.pop_front();
      issue(std::move(p));
    }
  }

  void checkDeadlines() {
    const auto now = Clock::now();
    for (auto& [id, p] : inflight_)
      if (now >= p.deadline)
        fail(kExitTimeout,
             which(p) + ": no delivery confirmation within " + secondsText(a_.timeout_s) + " (--timeout)");
  }

  void waitSomething(Clock::time_point until) {
    for (auto& [id, p] : inflight_) until = std::min(until, p.deadline);
    for (auto& p : retry_) until = std::min({until, p.retry_at, p.deadline});
    std::unique_lock lk(host_.mu);
    host_.cv.wait_until(lk, std::min(until, Clock::now() + Ms(500)), [&] {
      return !host_.deliveries.empty() || host_.interrupted || (!retry_.empty() && host_.hints != p_hints_);
    });
  }

  const PubArgs& a_;
  PluginInstance& inst_;
  CliHost& host_;
  const bool tracked_;
  uint64_t next_delivery_id_ = 0, issued_ = 0, confirmed_ = 0;
  uint64_t p_hints_ = 0;
  std::map<uint64_t, Pending> inflight_;  // delivery id -> message
  std::deque<Pending> retry_;             // NO_RECEIVER, to publish again
};

void checkPubArgs(const PubArgs& a) {
  checkEndpointArgs(a.ep);
  if (a.topic.empty()) fail(kExitUsage, "no topic: give -t TOPIC");
  if (hasWildcard(a.topic)) fail(kExitUsage, "-t '" + a.topic + "': a publish topic cannot have wildcards (+ or #)");
  const int sources =
      int(a.has_message) + int(!a.file.empty()) + int(a.lines) + int(a.stdin_whole) + int(a.null_message);
  if (sources == 0)
    fail(kExitUsage, "no message: give -m MESSAGE, -f FILE, -l (stdin lines), -s (stdin) or -n (empty)");
  if (sources > 1) fail(kExitUsage, "give only one of -m, -f, -l, -s, -n");
  if (a.count == 0) fail(kExitUsage, "--count must be at least 1");
  if (a.lines && a.count != 1) fail(kExitUsage, "--count repeats one message; it cannot be used with -l");
  if (a.rate < 0 || !std::isfinite(a.rate))
    fail(kExitUsage, "--rate must be 0 (no limit) or a positive number of messages/s");
  if (!(a.timeout_s > 0)) fail(kExitUsage, "--timeout must be more than 0 seconds");
}

// ---- sub -------------------------------------------------------------------------------

std::string base64(std::string_view in) {
  static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  std::string out;
  out.reserve((in.size() + 2) / 3 * 4);
  size_t i = 0;
  for (; i + 2 < in.size(); i += 3) {
    const uint32_t v = uint32_t(static_cast<unsigned char>(in[i])) << 16 |
                       uint32_t(static_cast<unsigned char>(in[i + 1])) << 8 | static_cast<unsigned char>(in[i + 2]);
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += t[(v >> 6) & 63];
    out += t[v & 63];
  }
  if (i < in.size()) {
    uint32_t v = uint32_t(static_cast<unsigned char>(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(static_cast<unsigned char>(in[i + 1])) << 8;
    out += t[v >> 18];
    out += t[(v >> 12) & 63];
    out += i + 1 < in.size() ? t[(v >> 6) & 63] : '=';
    out += '=';
  }
  return out;
}

// Prints inbound messages (from plugin threads) and acks their tokens.
class Printer {
 public:
  Printer(const SubArgs& a, CliHost& host) : a_(a), host_(host) {}
  void setAcker(Acker* acker) { acker_ = acker; }
  bool ours(uint64_t sub_id) const { return sub_id >= 1 && sub_id <= a_.topics.size(); }

  fg_status onMessage(uint64_t sub_id, const fg_message& msg, uint64_t token) {
    const std::string_view topic(msg.topic.data ? msg.topic.data : "", msg.topic.len);
    const std::string_view payload(msg.payload.data ? msg.payload.data : "", msg.payload.len);
    // Session transports hand in every client publish with sub id 0: only our topics are printed.
    if (!ours(sub_id) &&
        !std::any_of(a_.topics.begin(), a_.topics.end(), [&](auto& f) { return topicMatches(f, topic); })) {
      std::lock_guard lk(mu_);
      if (closing_) return FG_RETRY;
      if (token) acker_->push(token, FG_OUTCOME_FILTERED);  // consumed on purpose
      return FG_OK;
    }
    {
      std::lock_guard lk(mu_);
      if (closing_) return FG_RETRY;  // not taken: the plugin keeps it (Kafka: not committed)
      line_.clear();
      if (a_.json) {
        line_ += "{\"topic\":\"";
        fin::appendJsonEscaped(line_, topic);
        if (isValidUtf8(payload)) {
          line_ += "\",\"payload\":\"";
          fin::appendJsonEscaped(line_, payload);
        } else {
          line_ += "\",\"payload_base64\":\"";
          line_ += base64(payload);
        }
        line_ += "\"}\n";
      } else {
        if (a_.verbose) {
          line_.append(topic);
          line_ += ' ';
        }
        line_.append(payload);
        line_ += '\n';
      }
      if (std::fwrite(line_.data(), 1, line_.size(), stdout) != line_.size() || std::fflush(stdout) != 0) {
        write_error_ = std::strerror(errno);
        closing_ = true;
        notify();
        return FG_RETRY;  // not printed: not delivered
      }
      ++printed_;
      if (a_.count && printed_ >= a_.count) closing_ = true;
      // Queued under the same lock as the count: whoever sees the count (the main thread
      // finishing at -C) finds the ack queued, and the acker drains it before the plugin stops.
      if (token) acker_->push(token, FG_OUTCOME_DELIVERED);
    }
    notify();
    return FG_OK;
  }

  // From now on nothing more is taken.
  void close() {
    std::lock_guard lk(mu_);
    closing_ = true;
  }
  uint64_t printed() {
    std::lock_guard lk(mu_);
    return printed_;
  }
  std::string writeError() {
    std::lock_guard lk(mu_);
    return write_error_;
  }

 private:
  void notify() {
    { std::lock_guard lk(host_.mu); }
    host_.cv.notify_all();
  }
  const SubArgs& a_;
  CliHost& host_;
  Acker* acker_ = nullptr;
  std::mutex mu_;  // one line at a time, in order
  std::string line_;
  bool closing_ = false;
  uint64_t printed_ = 0;
  std::string write_error_;
};

void checkSubArgs(const SubArgs& a) {
  checkEndpointArgs(a.ep);
  if (a.topics.empty()) fail(kExitUsage, "no topic: give -t TOPIC (repeatable)");
  for (auto& t : a.topics)
    if (!isValidFilter(t))
      fail(kExitUsage, "-t '" + t + "': not a valid topic filter ('+' and '#' must be whole levels, '#' the last)");
  if (a.verbose && a.json) fail(kExitUsage, "give -v or --json, not both");
  if (a.timeout_s < 0 || !std::isfinite(a.timeout_s)) fail(kExitUsage, "--timeout must be 0 (none) or more seconds");
}

void addEndpointOptions(CLI::App& cmd, EndpointArgs& a) {
  cmd.add_option("-c,--config", a.config, "Config file whose endpoint to use (with --endpoint)");
  cmd.add_option("--endpoint", a.endpoint, "Endpoint name in the config file");
  cmd.add_option("--plugin", a.plugin, "Plugin name (tcp, mqtt, ...), instead of -c");
  cmd.add_option("--set", a.sets, "Plugin key=value (repeatable; with -c adds or overrides a key)");
  cmd.add_option("--plugins-dir", a.plugins_dir,
                 "Plugin directory (default: the config's plugins_dir, else ../plugins next to the binary)");
  cmd.add_option("--connect-timeout", a.connect_timeout_s, "Seconds to wait for the endpoint to come up (default 10)");
  cmd.add_flag("-d,--debug", a.debug, "Endpoint states, events and plugin log lines on stderr");
}

}  // namespace

CLI::App* addPubCommand(CLI::App& app, PubArgs& a) {
  auto* cmd = app.add_subcommand("pub", "Publish messages on a topic through any plugin (like mosquitto_pub)");
  addEndpointOptions(*cmd, a.ep);
  cmd->add_option("-t,--topic", a.topic, "Topic to publish on");
  cmd->add_option_function<std::string>(
      "-m,--message",
      [&a](const std::string& m) {
        a.message = m;
        a.has_message = true;
      },
      "Message payload");
  cmd->add_option("-f,--file", a.file, "Send the whole file as one message");
  cmd->add_flag("-l,--stdin-line", a.lines, "Send stdin, one message per line (blank lines skipped)");
  cmd->add_flag("-s,--stdin-file", a.stdin_whole, "Send the whole of stdin as one message");
  cmd->add_flag("-n,--null-message", a.null_message, "Send one empty message");
  cmd->add_option("--count", a.count, "Publish the message this many times (default 1)");
  cmd->add_option("--rate", a.rate, "Messages per second (default: no limit)");
  cmd->add_option("--timeout", a.timeout_s,
                  "Seconds each message may take to be confirmed, or to find a receiver (default 10)");
  return cmd;
}

CLI::App* addSubCommand(CLI::App& app, SubArgs& a) {
  auto* cmd =
      app.add_subcommand("sub", "Subscribe to topics through any plugin and print messages (like mosquitto_sub)");
  addEndpointOptions(*cmd, a.ep);
  cmd->add_option("-t,--topic", a.topics, "Topic filter (repeatable; + and # wildcards)");
  cmd->add_flag("-v,--verbose", a.verbose, "Print 'topic payload' lines");
  cmd->add_flag("--json", a.json, "Print JSON lines {\"topic\":...,\"payload\":...} (payload_base64 when not UTF-8)");
  cmd->add_option("-C,--count", a.count, "Exit after this many messages");
  cmd->add_option("-W,--timeout", a.timeout_s, "Exit with code 27 when this many seconds pass before -C messages");
  return cmd;
}

int pub(const PubArgs& a) {
  return guarded([&] {
    checkPubArgs(a);
    Resolved r = resolveEndpoint(a.ep);
    auto lib = loadPlugin(r, a.ep);
    CliHost host(a.ep.debug);
    Signals signals([&host] { host.interrupt(); });
    Source src(a);  // reads -f / -s before anything connects
    auto inst = createInstance(r, lib, host);
    struct Stopper {
      PluginInstance& inst;
      ~Stopper() { inst.stop(kStopTimeoutMs); }
    } stopper{*inst};
    startInstance(*inst, host, r);
    if (!waitUp(host, a.ep, r, [] { return true; })) return kExitOk;  // interrupted before anything was sent
    Publisher pub(a, *inst, host);
    return pub.run(src);
  });
}

int sub(const SubArgs& a) {
  return guarded([&] {
    checkSubArgs(a);
    Resolved r = resolveEndpoint(a.ep);
    auto lib = loadPlugin(r, a.ep);
    CliHost host(a.ep.debug);
    Printer printer(a, host);
    host.setMessageHandler([&printer](uint64_t sub_id, const fg_message& m, uint64_t token) {
      return printer.onMessage(sub_id, m, token);
    });
    Signals signals([&host] { host.interrupt(); });
    auto inst = createInstance(r, lib, host);
    Acker acker(*inst);
    printer.setAcker(&acker);
    struct Stopper {  // nothing more printed, every printed message acked, then the plugin stops
      Printer& printer;
      Acker& acker;
      PluginInstance& inst;
      ~Stopper() {
        printer.close();
        acker.finish();
        inst.stop(kStopTimeoutMs);
      }
    } stopper{printer, acker, *inst};

    subscribeAll(*inst, a.topics);
    startInstance(*inst, host, r);
    if (!waitSubscribed(host, *inst, a.ep, r, a.topics)) return kExitOk;
    if (host.debug())
      for (auto& t : a.topics) errLine("debug: subscribed to '" + t + "'");

    const auto deadline = a.timeout_s > 0 ? Clock::now() + seconds(a.timeout_s) : Clock::time_point::max();
    std::unique_lock lk(host.mu);
    while (true) {
      if (auto why = subscriptionRefusal(host, a.topics)) fail(kExitFailure, *why);  // e.g. after a reconnect
      if (host.interrupted) return kExitOk;
      lk.unlock();
      const uint64_t n = printer.printed();
      const std::string werr = printer.writeError();
      lk.lock();
      if (!werr.empty()) fail(kExitFailure, "cannot write to stdout: " + werr);
      if (a.count && n >= a.count) return kExitOk;
      if (Clock::now() >= deadline)
        fail(kExitTimeout, "timed out after " + secondsText(a.timeout_s) + " with " + std::to_string(n) +
                               (a.count ? " of " + std::to_string(a.count) : std::string()) + " message(s)");
      host.cv.wait_until(lk, std::min(deadline, Clock::now() + Ms(500)));
    }
  });
}

}  // namespace fingate::cli
