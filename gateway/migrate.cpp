// `fingate migrate` (docs/cli.md, "fingate migrate"): a client of the gateway's admin API
// (/v1/migration...) through adminRequest, and for `verify` an independent observer of both sides
// of the migration: the plugins of `from` and `to`, loaded from the config like `fingate sub -c
// FILE --endpoint NAME` (cli_host.hpp), with identity keys of their own so the observer never
// takes the gateway's place. The comparison is verify_matcher.hpp; plan/status are migrate_plan.hpp.
#include "migrate.hpp"

#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <fingate/admin_client.hpp>
#include <fingate/json.hpp>
#include <fingate/topic.hpp>
#include <functional>
#include <mutex>
#include <optional>
#include <random>
#include <set>

#include "cli_host.hpp"
#include "migrate_plan.hpp"
#include "verify_matcher.hpp"

namespace fingate::cli {

namespace {

using Step = MigrateArgs::Step;

constexpr int kAdminTimeoutMs = 10000;
constexpr size_t kMaxReportBytes = 1u << 20;         // what POST /v1/migration/verify takes
constexpr size_t kMaxObservations = 500000;          // messages verify holds (both sides together)
constexpr auto kWatchInterval = Ms(500);             // mirror --watch: GET /v1/migration this often
constexpr auto kTtyRedraw = Ms(100);                 // a terminal's progress line: at most this often
constexpr auto kLogEvery = std::chrono::seconds(2);  // otherwise one plain line this often
constexpr const char* kExitCodes =
    "0 ok, 1 cannot proceed (gateway unreachable, refused, differences found), 2 usage or config error.";

int64_t wallMs() { return std::chrono::duration_cast<Ms>(std::chrono::system_clock::now().time_since_epoch()).count(); }

std::string randomHex(size_t chars) {
  std::random_device rd;
  static const char* d = "0123456789abcdef";
  std::string out;
  while (out.size() < chars) {
    uint32_t v = rd();
    for (int i = 0; i < 8 && out.size() < chars; ++i, v >>= 4) out += d[v & 15];
  }
  return out;
}

const char* stepName(Step s) {
  switch (s) {
    case Step::Plan:
      return "plan";
    case Step::Mirror:
      return "mirror";
    case Step::Verify:
      return "verify";
    case Step::Cutover:
      return "cutover";
    case Step::Rollback:
      return "rollback";
    case Step::Status:
      return "status";
    default:
      return "migrate";
  }
}

// Results go to stdout, whole, with a final newline.
void out(const std::string& text) {
  std::fwrite(text.data(), 1, text.size(), stdout);
  if (text.empty() || text.back() != '\n') std::fputc('\n', stdout);
  std::fflush(stdout);
}

// ---- the admin API ---------------------------------------------------------------------

struct Admin {
  std::string host;
  int port = 0;
  std::string token;
  std::string where;  // "127.0.0.1:9400", for messages
};

// "host:port" or "[v6]:port" -> host (without brackets) and port 1..65535 (0 allowed: the caller
// says why it cannot be used).
bool splitAddress(const std::string& v, std::string& host, int& port) {
  std::string p;
  if (!v.empty() && v.front() == '[') {
    const auto close = v.find(']');
    if (close == std::string::npos || close + 1 >= v.size() || v[close + 1] != ':') return false;
    host = v.substr(1, close - 1);
    p = v.substr(close + 2);
  } else {
    const auto colon = v.rfind(':');
    if (colon == std::string::npos || v.find(':') != colon) return false;
    host = v.substr(0, colon);
    p = v.substr(colon + 1);
  }
  if (p.empty() || p.size() > 5 || p.find_first_not_of("0123456789") != std::string::npos) return false;
  port = std::stoi(p);
  return port <= 65535;
}

// --admin, else the config's admin.listen (a wildcard host: this machine); --token, else admin.token.
Admin adminOf(const MigrateArgs& a, const Config* cfg) {
  Admin ad;
  std::string listen = a.admin;
  std::string origin = "--admin";
  if (listen.empty()) {
    if (!cfg) fail(kExitUsage, "no gateway: give -c FILE (the gateway's config) or --admin HOST:PORT");
    if (cfg->admin.listen.empty())
      fail(kExitUsage, cfg->file + ": admin.listen is empty, the gateway has no admin API: give --admin HOST:PORT");
    listen = cfg->admin.listen;
    origin = cfg->file + ": admin.listen";
  }
  if (!splitAddress(listen, ad.host, ad.port))
    fail(kExitUsage, origin + " '" + listen + "': expected HOST:PORT (e.g. 127.0.0.1:9400, [::1]:9400)");
  if (ad.port == 0)
    fail(kExitUsage, origin + " has port 0 (a free port picked at start): give --admin HOST:PORT with the real port");
  if (ad.host.empty() || ad.host == "0.0.0.0" || ad.host == "*") ad.host = "127.0.0.1";
  if (ad.host == "::") ad.host = "::1";
  ad.where = (ad.host.find(':') != std::string::npos ? "[" + ad.host + "]" : ad.host) + ":" + std::to_string(ad.port);
  ad.token = !a.token.empty() ? a.token : cfg ? cfg->admin.token : "";
  return ad;
}

struct Answer {
  int status = 0;
  std::string body;
  std::optional<Json> json;  // when the body is JSON
  // The gateway's reason: {"error":"..."}, else the body's first line.
  std::string error() const {
    if (json && !json->str("error").empty()) return json->str("error");
    std::string line = body.substr(0, body.find('\n'));
    return line.empty() ? "HTTP " + std::to_string(status) : line;
  }
};

// One request. No answer, 401 and 403 end the command (exit 1); other statuses are the caller's.
Answer call(const Admin& ad, const std::string& method, const std::string& path, const std::string& body = "") {
  const AdminResponse res = adminRequest(ad.host, ad.port, method, path, ad.token, body, kAdminTimeoutMs);
  if (res.status == 0) fail(kExitFailure, "gateway unreachable at " + ad.where + ": " + res.error);
  Answer a;
  a.status = res.status;
  a.body = res.body;
  std::string err;
  a.json = parseJson(res.body, err);
  if (a.status == 401)
    fail(kExitFailure, "the admin API at " + ad.where + " refused the token (" + a.error() +
                           "): give --token TOKEN, or the gateway's admin.token in the config");
  if (a.status == 403) fail(kExitFailure, "the admin API at " + ad.where + " refused the request: " + a.error());
  return a;
}

[[noreturn]] void unexpected(const Admin& ad, const std::string& what, const Answer& a) {
  fail(kExitFailure, what + " at " + ad.where + ": HTTP " + std::to_string(a.status) + ": " + a.error());
}

// GET /v1/migration; a gateway without a migration is a config matter (exit 2).
MigrationState migration(const Admin& ad, std::string* raw = nullptr) {
  const Answer a = call(ad, "GET", "/v1/migration");
  if (a.status == 404) {
    if (a.json && !a.json->str("error").empty())
      fail(kExitUsage, "the gateway at " + ad.where + " says: " + a.json->str("error"));
    fail(kExitFailure, "the gateway at " + ad.where +
                           " has no /v1/migration (HTTP 404): is it a fingate that knows migrations, at that address?");
  }
  if (a.status != 200) unexpected(ad, "GET /v1/migration", a);
  MigrationState m;
  std::string err;
  if (!a.json || !readMigrationState(*a.json, m, err))
    fail(kExitFailure, "GET /v1/migration at " + ad.where + ": an answer the CLI cannot read (" +
                           (a.json ? err : std::string("not JSON")) + ")");
  if (raw) *raw = a.body;
  return m;
}

Json fins(const Admin& ad) {
  const Answer a = call(ad, "GET", "/v1/fins");
  if (a.status != 200) unexpected(ad, "GET /v1/fins", a);
  if (!a.json || !a.json->get("fins")) fail(kExitFailure, "GET /v1/fins at " + ad.where + ": not the expected JSON");
  return *a.json;
}

// ---- progress --------------------------------------------------------------------------

// A long step's progress on stderr: on a terminal one line drawn again in place (a bar, the
// counts, the time left); otherwise a plain line every 2 s.
class Progress {
 public:
  explicit Progress(std::string label) : label_(std::move(label)), tty_(::isatty(2) == 1) {}
  ~Progress() { done(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(double fraction, const std::string& counts, double left_s) {
    const auto now = Clock::now();
    fraction = std::clamp(fraction, 0.0, 1.0);
    const std::string left = numberText(std::ceil(std::max(0.0, left_s))) + " s left";
    if (tty_) {
      if (drawn_ && now - last_ < kTtyRedraw) return;
      constexpr int kBar = 24;
      const int filled = static_cast<int>(fraction * kBar);
      drawProgressLine(label_ + " [" + std::string(filled, '#') + std::string(kBar - filled, '.') + "] " + counts +
                       ", " + left);
    } else {
      if (drawn_ && now - last_ < kLogEvery) return;
      errLine(label_ + ": " + numberText(std::floor(fraction * 100)) + "%, " + counts + ", " + left);
    }
    drawn_ = true;
    last_ = now;
  }
  void done() {
    if (tty_) clearProgressLine();
  }

 private:
  const std::string label_;
  const bool tty_;
  bool drawn_ = false;
  Clock::time_point last_;
};

// SIGINT/SIGTERM during a step that waits.
class Interrupt {
 public:
  Interrupt() : signals_([this] { raise(); }) {}
  // Also run on a signal (at once when one came already); nullptr: nothing more.
  void onRaise(std::function<void()> fn) {
    bool hit;
    {
      std::lock_guard lk(mu_);
      on_raise_ = fn;
      hit = hit_;
    }
    if (hit && fn) fn();
  }
  // Sleeps until `until` or a signal; true = interrupted.
  bool sleepUntil(Clock::time_point until) {
    std::unique_lock lk(mu_);
    return cv_.wait_until(lk, until, [&] { return hit_; });
  }

 private:
  void raise() {
    std::function<void()> fn;
    {
      std::lock_guard lk(mu_);
      hit_ = true;
      fn = on_raise_;
    }
    cv_.notify_all();
    if (fn) fn();
  }
  std::mutex mu_;
  std::condition_variable cv_;
  bool hit_ = false;
  std::function<void()> on_raise_;
  Signals signals_;  // last: its thread may call raise() once constructed
};

// ---- plan / status / mirror / cutover / rollback ---------------------------------------

int plan(const MigrateArgs& a, const Admin& ad) {
  const MigrationState m = migration(ad);
  const Plan p = makePlan(m, fins(ad));
  out(a.json ? planJson(p) : planText(p));
  return kExitOk;
}

int status(const MigrateArgs& a, const Admin& ad) {
  std::string raw;
  const MigrationState m = migration(ad, &raw);
  out(a.json ? raw : statusText(m));
  return kExitOk;
}

std::string rate(uint64_t now, uint64_t before, double seconds) {
  const double r = seconds > 0 && now >= before ? double(now - before) / seconds : 0;
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f/s", r);
  return buf;
}

int mirror(const MigrateArgs& a, const Admin& ad) {
  const MigrationState before = migration(ad);
  const std::string enabled = a.off ? "false" : "true";
  const Answer res = call(ad, "POST", "/v1/migration/mirror?enabled=" + enabled);
  if (res.status != 200) unexpected(ad, "POST /v1/migration/mirror", res);
  const bool on = res.json ? res.json->flag("mirror", !a.off) : !a.off;
  out(on ? "mirror on: fin messages the gateway accepts on " + before.from + " or " + before.to +
               " are published on the other side too, and what it sends to the active side (" + before.active +
               ") also goes to " + before.passive
         : "mirror off: nothing is copied between " + before.from + " and " + before.to);
  if (!(a.watch_s > 0)) return kExitOk;

  Interrupt interrupt;
  Progress progress("mirror");
  const auto t0 = Clock::now();
  const auto end = t0 + seconds(a.watch_s);
  const MigrationState first = migration(ad);
  MigrationState prev = first;
  auto prev_at = t0;
  MigrationState cur = first;
  auto next = t0;
  while (Clock::now() < end) {
    next = std::min(next + kWatchInterval, end);
    if (interrupt.sleepUntil(next)) break;
    cur = migration(ad);
    const auto now = Clock::now();
    const double dt = std::chrono::duration<double>(now - prev_at).count();
    const double left = std::chrono::duration<double>(end - now).count();
    progress.update(1.0 - left / a.watch_s,
                    std::string(cur.mirror ? "on" : "OFF") + ", copies to " + cur.from + " " +
                        std::to_string(cur.mirrored_from) + " (" + rate(cur.mirrored_from, prev.mirrored_from, dt) +
                        "), to " + cur.to + " " + std::to_string(cur.mirrored_to) + " (" +
                        rate(cur.mirrored_to, prev.mirrored_to, dt) + "), dead-lettered " +
                        std::to_string(cur.mirror_failed),
                    left);
    prev = cur;
    prev_at = now;
  }
  progress.done();
  const double watched = std::chrono::duration<double>(Clock::now() - t0).count();
  auto line = [&](const std::string& side, uint64_t now_n, uint64_t first_n) {
    return "copies published to " + side + ": " + std::to_string(now_n) + " (+" +
           std::to_string(now_n >= first_n ? now_n - first_n : 0) + ", " + rate(now_n, first_n, watched) + ")\n";
  };
  std::string summary =
      "watched " + numberText(std::round(watched * 10) / 10) + " s; mirror " + (cur.mirror ? "on" : "off") + "\n";
  summary += line(cur.from, cur.mirrored_from, first.mirrored_from);
  summary += line(cur.to, cur.mirrored_to, first.mirrored_to);
  summary += "dead-lettered copies: " + std::to_string(cur.mirror_failed) + " (+" +
             std::to_string(cur.mirror_failed >= first.mirror_failed ? cur.mirror_failed - first.mirror_failed : 0) +
             ")";
  out(summary);
  if (cur.mirror_failed > first.mirror_failed)
    errLine("warning: " + std::to_string(cur.mirror_failed - first.mirror_failed) +
            " mirror copies were dead-lettered while watching (see /v1/dead-letters); a cutover needs none after "
            "the verify report");
  return kExitOk;
}

int switchSides(const MigrateArgs& a, const Admin& ad, bool cutover) {
  const MigrationState m = migration(ad);
  const std::string what = cutover ? "cutover" : "rollback";
  const Answer res = call(ad, "POST", "/v1/migration/" + what);
  if (res.status == 409) {
    if (a.json) out(res.body);
    const std::string why = res.error();
    fail(kExitFailure, why.rfind(what, 0) == 0 ? why : what + " refused: " + why);
  }
  if (res.status != 200) unexpected(ad, "POST /v1/migration/" + what, res);
  if (a.json) {
    out(res.body);
    return kExitOk;
  }
  const std::string active = res.json ? res.json->str("active", cutover ? m.to : m.from) : (cutover ? m.to : m.from);
  const double moved = res.json ? res.json->num("moved") : 0;
  const std::string left = active == m.to ? m.from : m.to;
  out(what + " done: " + active + " is active; " + plural(static_cast<uint64_t>(moved), "binding", "bindings") +
      " moved from " + left + " to " + active + (cutover ? " (fingate migrate rollback switches back)" : ""));
  return kExitOk;
}

// ---- verify ----------------------------------------------------------------------------

// What both observers saw, from the plugins' threads.
class Observer {
 public:
  explicit Observer(const std::vector<std::string>& filters) : filters_(filters) {}

  void setAcker(int side, Acker* acker) { ackers_[side] = acker; }

  fg_status onMessage(int side, uint64_t sub_id, const fg_message& msg, uint64_t token) {
    const int64_t arrival = wallMs();
    const std::string_view topic(msg.topic.data ? msg.topic.data : "", msg.topic.len);
    const std::string_view payload(msg.payload.data ? msg.payload.data : "", msg.payload.len);
    const bool ours = (sub_id >= 1 && sub_id <= filters_.size()) ||
                      std::any_of(filters_.begin(), filters_.end(), [&](auto& f) { return topicMatches(f, topic); });
    uint64_t seq;
    {
      std::lock_guard lk(mu_);
      if (closing_) return FG_RETRY;  // not taken
      if (!ours || !begun_) {         // not ours, or before the observation: consumed, not counted
        if (token) ackers_[side]->push(token, ours ? FG_OUTCOME_DELIVERED : FG_OUTCOME_FILTERED);
        return FG_OK;
      }
      seq = ++seq_;
    }
    Observed o = observe(side, topic, payload, msg.timestamp_ms, arrival, seq);  // hashing outside the lock
    std::lock_guard lk(mu_);
    if (closing_) return FG_RETRY;
    if (seen_.size() < kMaxObservations)
      seen_.push_back(std::move(o));
    else
      overflow_ = true;
    ++count_[side];
    topics_.emplace(topic);
    if (token) ackers_[side]->push(token, FG_OUTCOME_DELIVERED);
    return FG_OK;
  }

  void begin() {
    std::lock_guard lk(mu_);
    begun_ = true;
  }
  // Nothing more is taken; returns what was seen.
  std::vector<Observed> close(bool& overflow) {
    std::lock_guard lk(mu_);
    closing_ = true;
    overflow = overflow_;
    return std::move(seen_);
  }
  std::string counts(const std::array<std::string, 2>& names) {
    std::lock_guard lk(mu_);
    return "seen on " + names[0] + " " + std::to_string(count_[0]) + ", on " + names[1] + " " +
           std::to_string(count_[1]) + ", " + plural(topics_.size(), "topic", "topics");
  }

 private:
  const std::vector<std::string>& filters_;
  std::array<Acker*, 2> ackers_{};
  std::mutex mu_;
  bool begun_ = false, closing_ = false, overflow_ = false;
  uint64_t seq_ = 0;
  std::array<uint64_t, 2> count_{};
  std::set<std::string, std::less<>> topics_;
  std::vector<Observed> seen_;
};

// One side's plugin instance, as an observer.
struct Side {
  int index = 0;
  std::string name;
  EndpointArgs ep;
  Resolved r;
  std::shared_ptr<PluginLibrary> lib;
  std::unique_ptr<CliHost> host;
  std::unique_ptr<PluginInstance> inst;  // after host: destroyed before it
  std::unique_ptr<Acker> acker;          // after inst: finished before the plugin stops
};

// Keys that would make the observer the gateway (its client id, its Kafka member, its place in a
// shared subscription) go; a consumer group of its own comes in.
constexpr std::string_view kIdentityKeys[] = {"client_id", "instance_id", "shared_group", "rdkafka.group.instance.id"};

void observerIdentity(Resolved& r, const PluginLibrary& lib) {
  std::erase_if(r.kv, [](auto& kv) {
    return std::find(std::begin(kIdentityKeys), std::end(kIdentityKeys), kv.first) != std::end(kIdentityKeys);
  });
  if (lib.acceptsKey("group")) {
    std::erase_if(r.kv, [](auto& kv) { return kv.first == "group"; });
    r.kv.emplace_back("group", "fingate-verify-" + randomHex(12));
  }
}

// Runs `body` for one side: a failure names the side.
template <class F>
auto onSide(const Side& s, F&& body) {
  try {
    return body();
  } catch (const Failure& f) {
    fail(f.code, s.name + ": " + f.message);
  }
}

void checkVerifyArgs(const MigrateArgs& a) {
  if (!(a.window_s > 0) || !std::isfinite(a.window_s)) fail(kExitUsage, "--window must be more than 0 seconds");
  if (!(a.grace_s >= 0) || !std::isfinite(a.grace_s)) fail(kExitUsage, "--grace must be 0 or more seconds");
  if (!(a.connect_timeout_s > 0)) fail(kExitUsage, "--connect-timeout must be more than 0 seconds");
  for (auto& t : a.topics)
    if (!isValidFilter(t))
      fail(kExitUsage, "-t '" + t + "': not a valid topic filter ('+' and '#' must be whole levels, '#' the last)");
}

// soarca, every id bound on either side of the pair, then -t; each once.
std::vector<std::string> observedTopics(const MigrateArgs& a, const MigrationState& m, const Json& bound) {
  std::vector<std::string> topics{"soarca"};
  std::set<std::string> have{"soarca"};
  auto add = [&](const std::string& t) {
    if (!t.empty() && have.insert(t).second) topics.push_back(t);
  };
  if (const Json* list = bound.get("fins"); list && list->type == Json::Type::Array)
    for (const Json& b : list->array) {
      const std::string ep = b.str("endpoint");
      if (ep != m.from && ep != m.to) continue;
      add(b.str("fin_id"));
      if (const Json* caps = b.get("capabilities"); caps && caps->type == Json::Type::Array)
        for (const Json& c : caps->array)
          if (c.type == Json::Type::String) add(c.string);
    }
  for (auto& t : a.topics) add(t);
  return topics;
}

// Observes both sides; returns what was seen and when the observation began.
std::vector<Observed> observeBoth(const MigrateArgs& a, const Config& cfg, const MigrationState& m,
                                  const std::vector<std::string>& topics, Interrupt& interrupt, int64_t& started_at) {
  std::array<Side, 2> sides;
  Observer observer(topics);
  for (int i = 0; i < 2; ++i) {
    Side& s = sides[i];
    s.index = i;
    s.name = i == 0 ? m.from : m.to;
    s.ep.config = cfg.file;
    s.ep.endpoint = s.name;
    s.ep.connect_timeout_s = a.connect_timeout_s;
    s.ep.debug = a.debug;
    onSide(s, [&] {
      s.r = resolveConfigEndpoint(cfg, s.name, "");
      s.lib = loadPlugin(s.r, s.ep);
      if (s.lib->capabilities() & FG_CAP_SESSIONS)
        fail(kExitUsage, s.r.label +
                             " is a session transport (clients connect to it): a migration moves fins "
                             "between broker endpoints, and verify observes brokers only");
      observerIdentity(s.r, *s.lib);
      return 0;
    });
    s.host = std::make_unique<CliHost>(a.debug, s.name + ": ");
    s.host->setMessageHandler([&observer, i](uint64_t sub_id, const fg_message& msg, uint64_t token) {
      return observer.onMessage(i, sub_id, msg, token);
    });
  }
  interrupt.onRaise([&sides] {
    for (auto& s : sides) s.host->interrupt();
  });
  struct Stopper {  // nothing more taken, every taken message acked, then the plugins stop
    Interrupt& interrupt;
    Observer& observer;
    std::array<Side, 2>& sides;
    ~Stopper() {
      interrupt.onRaise(nullptr);
      bool ignored;
      observer.close(ignored);
      for (auto& s : sides) {
        if (s.acker) s.acker->finish();
        if (s.inst) s.inst->stop(kStopTimeoutMs);
      }
    }
  } stopper{interrupt, observer, sides};
  for (Side& s : sides)
    onSide(s, [&] {
      s.inst = createInstance(s.r, s.lib, *s.host);
      s.acker = std::make_unique<Acker>(*s.inst);
      observer.setAcker(s.index, s.acker.get());
      subscribeAll(*s.inst, topics);
      startInstance(*s.inst, *s.host, s.r);
      return 0;
    });
  for (Side& s : sides)
    if (!onSide(s, [&] { return waitSubscribed(*s.host, *s.inst, s.ep, s.r, topics); }))
      fail(kExitFailure, "interrupted before the observation began: no report was posted");

  const double total_s = 2 * a.grace_s + a.window_s;
  errLine("verify: " + m.from + " and " + m.to + " up, " + plural(topics.size(), "topic", "topics") +
          " subscribed on each; observing for " + numberText(total_s) + " s (" + numberText(a.grace_s) + " s grace, " +
          numberText(a.window_s) + " s window, " + numberText(a.grace_s) + " s grace)");
  started_at = wallMs();
  observer.begin();
  const auto t0 = Clock::now();
  const auto end = t0 + seconds(total_s);
  Progress progress("verify");
  const std::array<std::string, 2> names{m.from, m.to};
  while (true) {
    const auto now = Clock::now();
    const double elapsed = std::chrono::duration<double>(now - t0).count();
    progress.update(elapsed / total_s, observer.counts(names), total_s - elapsed);
    if (now >= end) break;
    if (interrupt.sleepUntil(std::min(end, now + Ms(200))))
      fail(kExitFailure, "interrupted during the observation: no report was posted");
    for (Side& s : sides) {
      std::lock_guard lk(s.host->mu);
      if (auto why = subscriptionRefusal(*s.host, topics)) fail(kExitFailure, s.name + ": " + *why);
    }
  }
  progress.done();
  bool overflow = false;
  std::vector<Observed> seen = observer.close(overflow);
  if (overflow)
    fail(kExitFailure, "more than " + std::to_string(kMaxObservations) +
                           " messages during the observation, more than verify holds: use a shorter --window");
  return seen;
}

int verify(const MigrateArgs& a, const Config& cfg, const Admin& ad) {
  checkVerifyArgs(a);
  const MigrationState m = migration(ad);
  for (const std::string& name : {m.from, m.to})
    if (std::none_of(cfg.endpoints.begin(), cfg.endpoints.end(), [&](auto& e) { return e.name == name; }))
      fail(kExitUsage, "the gateway at " + ad.where + " migrates '" + m.from + "' -> '" + m.to + "', but " + cfg.file +
                           " has no endpoint '" + name + "': give the gateway's own config with -c");
  if (!m.mirror)
    errLine(
        "warning: the mirror is off: each side only sees its own traffic, so differences are expected "
        "(fingate migrate mirror)");
  const std::vector<std::string> topics = observedTopics(a, m, fins(ad));

  Interrupt interrupt;  // before any plugin starts: its threads inherit the blocked signals
  int64_t started_at = 0;
  const std::vector<Observed> seen = observeBoth(a, cfg, m, topics, interrupt, started_at);

  VerifyParams p;
  p.names = {m.from, m.to};
  p.active = m.active;
  p.started_at_ms = started_at;
  p.grace_s = a.grace_s;
  p.window_s = a.window_s;
  p.allow_idle = a.allow_idle;
  for (const std::string& t : topics)
    if (!hasWildcard(t)) p.topics.push_back(t);  // a -t filter is not a topic of its own
  const VerifyReport report = matchObservations(seen, p);
  std::string body = reportJson(report);
  out(a.json ? body : reportTable(report));

  if (body.size() > kMaxReportBytes) {
    body = reportJson(report, /*only_differing*/ true);
    errLine("warning: the report is over 1 MiB: the gateway keeps it without the matching topics");
  }
  const std::string path = "/v1/migration/verify?parity=" + std::string(report.parity ? "true" : "false") +
                           "&messages=" + std::to_string(report.compared) +
                           "&topics=" + std::to_string(report.topics.size());
  const Answer res = call(ad, "POST", path, body);
  if (res.status != 200)
    fail(kExitFailure, "the gateway at " + ad.where + " did not store the report (HTTP " + std::to_string(res.status) +
                           ": " + res.error() + "): a cutover needs it; run verify again");
  if (!report.parity && report.differing_topics.empty()) fail(kExitFailure, "no parity: " + report.reason);
  if (!report.parity)
    fail(kExitFailure, "no parity: " + report.reason +
                           "; the cutover stays refused (see the first differences, fix their cause, verify again)");
  return kExitOk;
}

// ---- the command line ------------------------------------------------------------------

void addCommon(CLI::App& cmd, MigrateArgs& a) {
  cmd.add_option("-c,--config", a.config, "The gateway's config file (admin address and token; verify: the endpoints)");
  cmd.add_option("--admin", a.admin, "The admin API as HOST:PORT (default: the config's admin.listen)");
  cmd.add_option("--token", a.token, "The admin token (default: the config's admin.token, ${ENV} expanded)");
}

// Words of text on lines of at most `width` characters (help footers).
std::string wrap(const std::string& text, size_t width = 100) {
  std::string out, line;
  size_t at = 0;
  while (at < text.size()) {
    size_t sp = text.find(' ', at);
    if (sp == std::string::npos) sp = text.size();
    const std::string word = text.substr(at, sp - at);
    if (!line.empty() && line.size() + 1 + word.size() > width) {
      out += line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
    at = sp + 1;
  }
  return out + line;
}

CLI::App* addStep(CLI::App& parent, MigrateArgs& a, Step step, const std::string& help, const std::string& more) {
  auto* cmd = parent.add_subcommand(stepName(step), help);
  cmd->callback([&a, step] { a.step = step; });
  addCommon(*cmd, a);
  cmd->footer(wrap(more) +
              "\nThe gateway: -c FILE (its admin.listen and admin.token) or --admin HOST:PORT [--token TOKEN].\n" +
              "Exit codes: " + kExitCodes + "\nDetails: docs/cli.md, \"fingate migrate\".");
  return cmd;
}

}  // namespace

CLI::App* addMigrateCommand(CLI::App& app, MigrateArgs& a) {
  auto* cmd = app.add_subcommand("migrate", "Move fins from one broker endpoint to another while the gateway runs");
  cmd->require_subcommand(1);
  cmd->footer(
      "The config's migration: block names the two endpoints (from, to). The steps, in order:\n"
      "  plan                  what moves at cutover, what stays and why, what blocks the migration\n"
      "  mirror [--watch S]    copy fin traffic between the two sides (--off: stop)\n"
      "  verify                observe both sides, compare, post the report (parity allows the cutover)\n"
      "  cutover               make `to` active: its bindings and SOARCA's commands move there\n"
      "  rollback              make `from` active again\n"
      "  status                the migration's state at any time\n"
      "Every step: -c FILE (the gateway's config: admin.listen, admin.token) or --admin HOST:PORT [--token TOKEN].\n"
      "Exit codes: " +
      std::string(kExitCodes) + "\nDetails: docs/cli.md, \"fingate migrate\".");

  auto* plan = addStep(*cmd, a, Step::Plan, "What moves at cutover, what stays (and why), what blocks the migration",
                       "Reads GET /v1/migration and GET /v1/fins: a binding on the active side moves (not acked yet: "
                       "moves, with a note); one outside the pair, a session binding, a remote binding of another "
                       "instance, or a restored unclaimed one stays.");
  plan->add_flag("--json", a.json, "JSON: {from, to, active, mirror, move:[...], stay:[...], problems:[...]}");

  auto* mirror = addStep(*cmd, a, Step::Mirror, "Copy fin traffic between the two sides (or stop: --off)",
                         "Every fin message the gateway accepts on one side is published on the other too, and its "
                         "messages for the active side go to the passive one as well. A cutover needs the mirror on.");
  mirror->add_flag("--off", a.off, "Turn the mirror off");
  mirror->add_option("--watch", a.watch_s, "Then show the copies per side per second for this many seconds")
      ->check(CLI::NonNegativeNumber);

  auto* verify = addStep(*cmd, a, Step::Verify, "Observe both sides, compare what each saw, post the report",
                         "An independent subscriber on both brokers (the endpoints' plugins and keys from -c FILE, "
                         "with a client id and consumer group of its own): soarca and every id bound on either side. "
                         "It observes grace + window + grace; messages are matched per topic and payload (sha256); a "
                         "message in the window seen on one side only is a difference. The report is printed and "
                         "posted to the gateway: parity allows the cutover.");
  verify->add_option("--window", a.window_s, "Seconds of traffic compared (default 10)");
  verify->add_option("--grace", a.grace_s, "Seconds before and after the window, for copies in flight (default 2)");
  verify->add_flag("--json", a.json, "Print the report as JSON (the body posted to the gateway)");
  verify->add_flag("--allow-idle", a.allow_idle, "Parity even when no message was seen in the window");
  verify->add_option("-t,--topic", a.topics, "Observe this topic filter too (repeatable)");
  verify->add_option("--connect-timeout", a.connect_timeout_s,
                     "Seconds each side may take to come up, subscriptions confirmed (default 10)");
  verify->add_flag("-d,--debug", a.debug, "Each side's states, events and plugin log lines on stderr");

  auto* cutover = addStep(*cmd, a, Step::Cutover, "Make `to` the active side",
                          "Every binding of `from` moves to `to`, and SOARCA's commands go there. Refused (exit 1, "
                          "with the reason) unless `from` is active, the mirror is on, and the latest verify report "
                          "says parity, came after the last switch, is younger than verify_max_age_s, and no mirror "
                          "copy failed since.");
  cutover->add_flag("--json", a.json, "Print the gateway's answer as JSON");
  auto* rollback = addStep(*cmd, a, Step::Rollback, "Make `from` the active side again",
                           "Every binding of `to` moves back to `from`. Refused (exit 1) when `from` is active.");
  rollback->add_flag("--json", a.json, "Print the gateway's answer as JSON");
  auto* status = addStep(*cmd, a, Step::Status, "The migration's state",
                         "Active side, the mirror and its copies per side, bindings per side, the last verify report, "
                         "and whether a cutover is allowed now (or why not).");
  status->add_flag("--json", a.json, "Print GET /v1/migration as it is");
  return cmd;
}

int migrate(const MigrateArgs& a) {
  return guarded([&] {
    if (a.step == Step::None) fail(kExitUsage, "give a step: plan, mirror, verify, cutover, rollback or status");
    if (a.step == Step::Verify && a.config.empty())
      fail(kExitUsage, "verify needs -c FILE: the gateway's config, for the plugins and keys of both sides");
    std::optional<Config> cfg;
    if (!a.config.empty()) cfg = loadConfigOrFail(a.config);
    const Admin ad = adminOf(a, cfg ? &*cfg : nullptr);
    switch (a.step) {
      case Step::Plan:
        return plan(a, ad);
      case Step::Mirror:
        return mirror(a, ad);
      case Step::Verify:
        return verify(a, *cfg, ad);
      case Step::Cutover:
        return switchSides(a, ad, true);
      case Step::Rollback:
        return switchSides(a, ad, false);
      case Step::Status:
        return status(a, ad);
      default:
        return kExitUsage;
    }
  });
}

}  // namespace fingate::cli
