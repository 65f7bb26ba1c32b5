#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fingate/fin_codec.hpp>
#include <fingate/registry.hpp>
#include <stdexcept>

namespace fingate {

std::vector<std::string> Registry::topicsOf(const FinBinding& b) {
  std::vector<std::string> t;
  t.reserve(b.capabilities.size() + 1);
  t.push_back(b.fin_id);
  for (auto& c : b.capabilities)
    if (std::find(t.begin(), t.end(), c) == t.end()) t.push_back(c);
  return t;
}

Registry::Registry() = default;

Registry::~Registry() {
  {
    std::lock_guard lk(mu_);
    stop_writer_ = true;
  }
  writer_cv_.notify_all();
  if (writer_.joinable()) writer_.join();
}

void Registry::setLimits(RegistryLimits l) {
  std::lock_guard lk(mu_);
  limits_ = l;
}

BindingPtr Registry::lookup(const std::string& topic) const {
  std::lock_guard lk(mu_);
  auto it = by_topic_.find(topic);
  if (it == by_topic_.end()) return nullptr;
  auto f = fins_.find(it->second);
  if (f == fins_.end()) return nullptr;
  return f->second;
}

std::string Registry::conflictLocked(const FinBinding& b) const {
  for (auto& t : topicsOf(b)) {
    auto it = by_topic_.find(t);
    if (it == by_topic_.end()) continue;
    const FinBinding& other = *fins_.at(it->second);
    // A restored binding (no live session yet) is claimed by a register of the same fin.
    if (other.restored) {
      if (other.fin_id != b.fin_id) return t;
      continue;
    }
    if (other.endpoint != b.endpoint || other.session != b.session) return t;
  }
  return "";
}

std::vector<std::string> Registry::indexAdd(const FinBinding& b) {
  // Take each topic over from whichever fin held it before.
  std::vector<std::string> dropped;
  for (auto& t : topicsOf(b)) {
    auto it = by_topic_.find(t);
    if (it != by_topic_.end() && it->second != b.fin_id) {
      auto f = fins_.find(it->second);
      if (f != fins_.end()) {
        if (f->second->fin_id == t) {
          // the other fin's own id is taken: it goes entirely
          Ptr old = f->second;
          indexRemove(*old);
          account(*old, -1);
          fins_.erase(f);
          for (auto& ot : topicsOf(*old))
            if (ot != t) dropped.push_back(ot);
        } else {
          auto copy = std::make_shared<FinBinding>(*f->second);
          std::erase(copy->capabilities, t);
          f->second = std::move(copy);
        }
      }
    }
    by_topic_[t] = b.fin_id;
  }
  return dropped;
}

void Registry::indexRemove(const FinBinding& b) {
  for (auto& t : topicsOf(b)) {
    auto it = by_topic_.find(t);
    if (it != by_topic_.end() && it->second == b.fin_id) by_topic_.erase(it);
  }
}

void Registry::account(const FinBinding& b, int delta) {
  auto bump = [delta](auto& map, const auto& key) {
    auto& n = map[key];
    n = delta > 0 ? n + 1 : (n ? n - 1 : 0);
    if (n == 0) map.erase(key);
  };
  bump(per_endpoint_, b.endpoint);
  if (b.session != 0 && !b.restored) bump(per_session_, std::make_pair(b.endpoint, b.session));
}

std::string Registry::limitLocked(const FinBinding& b, std::string& code) const {
  if (fins_.count(b.fin_id)) return "";  // a new binding of a known fin adds nothing
  // A new fin: what this session / endpoint already holds (kept counted, not scanned).
  auto ep = per_endpoint_.find(b.endpoint);
  size_t per_endpoint = ep == per_endpoint_.end() ? 0 : ep->second;
  size_t per_session = 0;
  if (b.session != 0) {
    auto ss = per_session_.find({b.endpoint, b.session});
    per_session = ss == per_session_.end() ? 0 : ss->second;
  }
  code = "limit_fins_per_session";
  if (b.session != 0 && per_session >= limits_.fins_per_session)
    return "this session already has " + std::to_string(per_session) + " fin(s) (limits.fins_per_session)";
  code = "limit_fins_per_endpoint";
  if (per_endpoint >= limits_.fins_per_endpoint)
    return "endpoint " + b.endpoint + " already has " + std::to_string(per_endpoint) +
           " fin(s) (limits.fins_per_endpoint)";
  return "";
}

void Registry::replaceLocked(const FinBinding& b, BindResult& r) {
  auto it = fins_.find(b.fin_id);
  if (it != fins_.end()) {
    r.prev = it->second;
    auto now = topicsOf(b);
    for (auto& t : topicsOf(*it->second))
      if (std::find(now.begin(), now.end(), t) == now.end()) r.gone.push_back(t);
    indexRemove(*it->second);
    account(*it->second, -1);
  }
  auto dropped = indexAdd(b);
  fins_[b.fin_id] = std::make_shared<FinBinding>(b);
  account(b, +1);
  r.gone.insert(r.gone.end(), dropped.begin(), dropped.end());
  changedLocked();
}

BindResult Registry::bind(const FinBinding& given) {
  std::lock_guard lk(mu_);
  FinBinding redirected;
  const bool moved = !redirect_from_.empty() && given.endpoint == redirect_from_;
  if (moved) {
    redirected = given;
    redirected.endpoint = redirect_to_;
  }
  const FinBinding& b = moved ? redirected : given;
  BindResult r;
  std::string conflict = conflictLocked(b);
  if (!conflict.empty()) {
    r.error = "capability_conflict";
    r.detail = "'" + conflict + "' is bound to another live fin session";
    return r;
  }
  std::string code;
  r.detail = limitLocked(b, code);
  if (!r.detail.empty()) {
    r.error = code;
    return r;
  }
  replaceLocked(b, r);
  return r;
}

BindResult Registry::adopt(FinBinding b) {
  b.remote = true;
  b.restored = false;
  b.session = 0;
  std::lock_guard lk(mu_);
  if (!redirect_from_.empty() && b.endpoint == redirect_from_) b.endpoint = redirect_to_;
  BindResult r;
  auto it = fins_.find(b.fin_id);
  if (it != fins_.end() && !it->second->remote && !it->second->restored) {
    r.error = "local_binding";
    r.detail =
        "this instance holds fin '" + b.fin_id.substr(0, 200) + "' itself (endpoint " + it->second->endpoint + ")";
    return r;
  }
  for (auto& t : topicsOf(b)) {
    auto o = by_topic_.find(t);
    if (o != by_topic_.end() && o->second != b.fin_id) {
      r.error = "capability_conflict";
      r.detail = "'" + t.substr(0, 200) + "' is bound to fin '" + o->second.substr(0, 200) + "'";
      return r;
    }
  }
  std::string code;
  r.detail = limitLocked(b, code);
  if (!r.detail.empty()) {
    r.error = code;
    return r;
  }
  replaceLocked(b, r);
  return r;
}

std::vector<FinBinding> Registry::dropRemote(const std::string& fin_id) {
  return removeIf([&](const FinBinding& b) { return b.fin_id == fin_id && b.remote; });
}

std::string Registry::commit(const std::string& fin_id, const std::string& register_message_id) {
  std::lock_guard lk(mu_);
  auto it = fins_.find(fin_id);
  if (it == fins_.end() || it->second->register_message_id != register_message_id) return "";
  if (!it->second->acked) {
    auto copy = std::make_shared<FinBinding>(*it->second);
    copy->acked = true;
    it->second = std::move(copy);
    changedLocked();
  }
  return fin_id;
}

std::optional<FinBinding> Registry::undo(const std::string& fin_id, const std::string& register_message_id) {
  std::lock_guard lk(mu_);
  auto it = fins_.find(fin_id);
  if (it == fins_.end() || it->second->register_message_id != register_message_id) return std::nullopt;
  FinBinding b = *it->second;
  indexRemove(b);
  account(b, -1);
  fins_.erase(it);
  changedLocked();
  return b;
}

std::vector<FinBinding> Registry::removeFin(const std::string& fin_id) {
  std::lock_guard lk(mu_);
  auto it = fins_.find(fin_id);
  if (it == fins_.end()) return {};
  FinBinding b = *it->second;
  indexRemove(b);
  account(b, -1);
  fins_.erase(it);
  changedLocked();
  return {b};
}

std::optional<FinBinding> Registry::removeCapability(const std::string& capability_id, bool* fin_removed) {
  std::lock_guard lk(mu_);
  if (fin_removed) *fin_removed = false;
  auto t = by_topic_.find(capability_id);
  if (t == by_topic_.end()) return std::nullopt;
  auto it = fins_.find(t->second);
  if (it == fins_.end() || it->first == capability_id) return std::nullopt;  // a fin id, not a capability
  auto copy = std::make_shared<FinBinding>(*it->second);
  std::erase(copy->capabilities, capability_id);
  by_topic_.erase(t);
  FinBinding after = *copy;
  if (after.capabilities.empty()) {
    indexRemove(after);
    account(after, -1);
    fins_.erase(it);
    if (fin_removed) *fin_removed = true;
  } else {
    it->second = std::move(copy);
  }
  changedLocked();
  return after;
}

std::vector<FinBinding> Registry::removeIf(const std::function<bool(const FinBinding&)>& pred) {
  std::lock_guard lk(mu_);
  std::vector<FinBinding> out;
  for (auto it = fins_.begin(); it != fins_.end();) {
    if (pred(*it->second)) {
      out.push_back(*it->second);
      indexRemove(*it->second);
      account(*it->second, -1);
      it = fins_.erase(it);
    } else {
      ++it;
    }
  }
  if (!out.empty()) changedLocked();
  return out;
}

size_t Registry::redirect(const std::string& from, const std::string& to) {
  std::lock_guard lk(mu_);
  redirect_from_ = from;
  redirect_to_ = from.empty() ? "" : to;
  if (from.empty()) return 0;
  size_t moved = 0;
  for (auto& [id, b] : fins_) {
    if (b->endpoint != from || b->remote) continue;
    account(*b, -1);
    auto copy = std::make_shared<FinBinding>(*b);
    copy->endpoint = to;
    account(*copy, +1);
    b = std::move(copy);
    ++moved;
  }
  if (moved) changedLocked();
  return moved;
}

std::vector<FinBinding> Registry::removeEndpoint(const std::string& endpoint) {
  return removeIf([&](const FinBinding& b) { return b.endpoint == endpoint; });
}

std::vector<FinBinding> Registry::removeSession(const std::string& endpoint, uint64_t session) {
  return removeIf([&](const FinBinding& b) { return b.endpoint == endpoint && b.session == session && !b.restored; });
}

std::vector<FinBinding> Registry::removeAll() {
  std::lock_guard lk(mu_);
  std::vector<FinBinding> out;
  for (auto& [id, b] : fins_) out.push_back(*b);
  fins_.clear();
  by_topic_.clear();
  per_endpoint_.clear();
  per_session_.clear();
  if (!out.empty()) changedLocked();
  return out;
}

std::vector<FinBinding> Registry::snapshot() const {
  std::lock_guard lk(mu_);
  std::vector<FinBinding> out;
  out.reserve(fins_.size());
  for (auto& [id, b] : fins_) out.push_back(*b);
  return out;
}

size_t Registry::size() const {
  std::lock_guard lk(mu_);
  return fins_.size();
}

// ---- persistence -------------------------------------------------------------------------

void Registry::setStateFile(std::string path, uint32_t delay_ms) {
  std::lock_guard lk(mu_);
  state_file_ = std::move(path);
  delay_ms_ = delay_ms;
  startWriterLocked();
}

void Registry::startWriterLocked() {
  if (writerWantedLocked() && !writer_.joinable()) writer_ = std::thread([this] { writerLoop(); });
}

void Registry::setReplicator(SharePredicate share, SharePublish publish) {
  std::lock_guard rk(replicate_mu_);  // no publish is running past this point
  std::lock_guard lk(mu_);
  share_ = std::move(share);
  publish_ = std::move(publish);
  published_.clear();
  startWriterLocked();
  if (share_) changedLocked();  // publish what is bound already
}

void Registry::replicate() {
  std::lock_guard rk(replicate_mu_);
  std::map<std::string, Ptr> now;
  SharePredicate share;
  SharePublish publish;
  {
    std::lock_guard lk(mu_);
    if (!share_ || !publish_) return;
    now = fins_;
    share = share_;
    publish = publish_;
  }
  for (auto& [id, b] : now) {
    if (b->remote || !share(*b)) continue;
    auto p = published_.find(id);
    if (p != published_.end() && p->second == b) continue;
    publish(id, b.get());
    published_[id] = b;
  }
  for (auto it = published_.begin(); it != published_.end();) {
    auto n = now.find(it->first);
    const bool still = n != now.end() && !n->second->remote && share(*n->second);
    if (still) {
      ++it;
      continue;
    }
    // Gone here (or now another instance's): a tombstone, unless another instance holds it now.
    if (n == now.end() || !n->second->remote) publish(it->first, nullptr);
    it = published_.erase(it);
  }
}

void Registry::changedLocked() {
  if (!writerWantedLocked()) return;
  ++version_;
  if (!dirty_) {
    dirty_ = true;
    writer_cv_.notify_one();
  }
}

void Registry::flush() {
  std::unique_lock lk(mu_);
  if (!writerWantedLocked() || !writer_.joinable()) return;
  uint64_t want = version_;
  writer_cv_.notify_one();
  written_cv_.wait(lk, [&] { return written_version_ >= want || stop_writer_; });
}

void Registry::writerLoop() {
  std::unique_lock lk(mu_);
  while (true) {
    writer_cv_.wait(lk, [&] { return dirty_ || stop_writer_; });
    if (!dirty_ && stop_writer_) return;
    // Coalesce: whatever changes in the next delay_ms goes into the same write.
    if (!stop_writer_ && delay_ms_)
      writer_cv_.wait_for(lk, std::chrono::milliseconds(delay_ms_), [&] { return stop_writer_; });
    dirty_ = false;
    uint64_t v = version_;
    const bool to_file = !state_file_.empty();
    std::string j = to_file ? serializeLocked() : std::string();
    lk.unlock();
    if (to_file) {
      writeFile(j);  // the registry lock is not held while the file is written and fsynced
      writes_.fetch_add(1);
    }
    replicate();
    lk.lock();
    written_version_ = v;
    written_cv_.notify_all();
  }
}

namespace {
void appendRecord(std::string& j, const FinBinding& b) {
  auto str = [&](const char* key, const std::string& v) {
    j += '"';
    j += key;
    j += "\":\"";
    fin::appendJsonEscaped(j, v);
    j += '"';
  };
  j += '{';
  str("fin_id", b.fin_id);
  j += ',';
  str("endpoint", b.endpoint);
  j += ",\"capabilities\":[";
  for (size_t i = 0; i < b.capabilities.size(); ++i) {
    if (i) j += ',';
    j += '"';
    fin::appendJsonEscaped(j, b.capabilities[i]);
    j += '"';
  }
  j += "],\"acked\":";
  j += b.acked ? "true" : "false";
  j += ",\"registered_at\":" + std::to_string(b.registered_at) + ",";
  str("register_message_id", b.register_message_id);
  j += ',';
  str("register_payload", b.register_payload);
  j += '}';
}

// One binding from a parsed record (state file entry or shared-registry record).
FinBinding fromNode(const YAML::Node& n) {
  if (!n.IsMap()) throw std::runtime_error("a binding is not a map");
  FinBinding b;
  b.fin_id = n["fin_id"].as<std::string>();
  b.endpoint = n["endpoint"].as<std::string>();
  if (n["capabilities"] && !n["capabilities"].IsSequence()) throw std::runtime_error("capabilities is not a list");
  for (const auto& c : n["capabilities"]) b.capabilities.push_back(c.as<std::string>());
  b.acked = n["acked"].as<bool>(false);
  b.registered_at = n["registered_at"].as<int64_t>(0);
  b.register_message_id = n["register_message_id"].as<std::string>("");
  b.register_payload = n["register_payload"].as<std::string>("");
  return b;
}
}  // namespace

std::string bindingRecord(const FinBinding& b) {
  std::string j;
  appendRecord(j, b);
  return j;
}

std::optional<FinBinding> bindingFromRecord(const std::string& json, std::string& error) {
  try {
    return fromNode(YAML::Load(json));
  } catch (const std::exception& e) {
    error = e.what();
    return std::nullopt;
  }
}

std::string Registry::serializeLocked() const {
  // Remote bindings are not kept: the shared registry is their source, read again at start.
  std::string j = "{\"version\":1,\"fins\":[";
  bool first = true;
  for (auto& [id, bp] : fins_) {
    if (bp->remote) continue;
    if (!first) j += ',';
    first = false;
    appendRecord(j, *bp);
  }
  j += "]}\n";
  return j;
}

void Registry::writeFile(const std::string& j) const {
  std::string tmp = state_file_ + ".tmp";
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) {
    spdlog::error("state: cannot write {}: {}", tmp, std::strerror(errno));
    return;
  }
  size_t off = 0;
  bool ok = true;
  while (off < j.size()) {
    ssize_t n = ::write(fd, j.data() + off, j.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      ok = false;
      break;
    }
    off += static_cast<size_t>(n);
  }
  if (ok && ::fsync(fd) != 0) ok = false;
  ::close(fd);
  if (!ok || std::rename(tmp.c_str(), state_file_.c_str()) != 0) {
    spdlog::error("state: cannot write {}: {}", state_file_, std::strerror(errno));
    return;
  }
  // Make the rename itself durable.
  auto dir = std::filesystem::path(state_file_).parent_path();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
}

void Registry::load(const std::function<bool(const std::string&)>& endpoint_known) {
  if (state_file_.empty() || !std::filesystem::exists(state_file_)) return;
  std::vector<FinBinding> loaded;
  std::string why;
  try {
    YAML::Node root = YAML::LoadFile(state_file_);
    if (!root.IsMap() || !root["fins"] || !root["fins"].IsSequence()) throw std::runtime_error("no 'fins' list");
    for (const auto& n : root["fins"]) {
      FinBinding b = fromNode(n);
      b.restored = true;
      b.session = 0;
      loaded.push_back(std::move(b));
    }
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (!why.empty()) {
    // Never refuse to start over a bad state file: keep it for a person to look at.
    std::string aside = state_file_ + ".corrupt-" + std::to_string(::time(nullptr));
    std::error_code ec;
    std::filesystem::rename(state_file_, aside, ec);
    spdlog::error("state: {} is not a valid state file ({}); moved aside to {}; starting with no bindings", state_file_,
                  why, ec ? "(could not move: " + ec.message() + ")" : aside);
    return;
  }
  std::lock_guard lk(mu_);
  fins_.clear();
  by_topic_.clear();
  per_endpoint_.clear();
  per_session_.clear();
  size_t dropped = 0;
  for (auto& b : loaded) {
    // The same checks as a live register: ids that could become hostile topics, endpoints
    // that are not configured, ids already restored for another fin.
    std::string bad = fin::validateId(b.fin_id);
    for (auto& c : b.capabilities)
      if (bad.empty()) {
        bad = fin::validateId(c);
        if (!bad.empty()) bad = "capability '" + c.substr(0, 64) + "': " + bad;
      }
    if (bad.empty() && endpoint_known && !endpoint_known(b.endpoint))
      bad = "endpoint '" + b.endpoint + "' is not configured";
    if (bad.empty() && fins_.count(b.fin_id)) bad = "duplicate fin id";
    if (bad.empty())
      for (auto& t : topicsOf(b))
        if (by_topic_.count(t)) bad = "id '" + t.substr(0, 64) + "' is bound twice";
    if (!bad.empty()) {
      ++dropped;
      spdlog::warn("state: dropped restored binding of fin '{}': {}", b.fin_id.substr(0, 64), bad);
      continue;
    }
    indexAdd(b);
    std::string id = b.fin_id;
    account(b, +1);
    fins_[id] = std::make_shared<FinBinding>(std::move(b));
  }
  if (dropped) changedLocked();
}

}  // namespace fingate
