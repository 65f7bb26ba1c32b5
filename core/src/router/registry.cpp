#include <fcntl.h>
#include <fingate/fin_codec.hpp>
#include <fingate/registry.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
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

std::optional<FinBinding> Registry::lookup(const std::string& topic) const {
  std::lock_guard lk(mu_);
  auto it = by_topic_.find(topic);
  if (it == by_topic_.end()) return std::nullopt;
  auto f = fins_.find(it->second);
  if (f == fins_.end()) return std::nullopt;
  return f->second;
}

std::string Registry::ownerConflict(const FinBinding& b) const {
  std::lock_guard lk(mu_);
  for (auto& t : topicsOf(b)) {
    auto it = by_topic_.find(t);
    if (it == by_topic_.end()) continue;
    const FinBinding& other = fins_.at(it->second);
    if (other.restored) continue;  // no live session holds it
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
        if (f->second.fin_id == t) {
          // the other fin's own id is taken: it goes entirely
          FinBinding old = f->second;
          indexRemove(old);
          fins_.erase(f);
          for (auto& ot : topicsOf(old))
            if (ot != t) dropped.push_back(ot);
        } else {
          std::erase(f->second.capabilities, t);
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

std::vector<std::string> Registry::bind(const FinBinding& b) {
  std::lock_guard lk(mu_);
  std::vector<std::string> gone;
  auto it = fins_.find(b.fin_id);
  if (it != fins_.end()) {
    auto now = topicsOf(b);
    for (auto& t : topicsOf(it->second))
      if (std::find(now.begin(), now.end(), t) == now.end()) gone.push_back(t);
    indexRemove(it->second);
  }
  auto dropped = indexAdd(b);
  fins_[b.fin_id] = b;
  gone.insert(gone.end(), dropped.begin(), dropped.end());
  saveLocked();
  return gone;
}

std::string Registry::commit(const std::string& fin_id, const std::string& register_message_id) {
  std::lock_guard lk(mu_);
  auto it = fins_.find(fin_id);
  if (it == fins_.end() || it->second.register_message_id != register_message_id) return "";
  if (!it->second.acked) {
    it->second.acked = true;
    saveLocked();
  }
  return fin_id;
}

std::optional<FinBinding> Registry::undo(const std::string& fin_id, const std::string& register_message_id) {
  std::lock_guard lk(mu_);
  auto it = fins_.find(fin_id);
  if (it == fins_.end() || it->second.register_message_id != register_message_id) return std::nullopt;
  FinBinding b = it->second;
  indexRemove(b);
  fins_.erase(it);
  saveLocked();
  return b;
}

std::vector<FinBinding> Registry::removeFin(const std::string& fin_id) {
  std::lock_guard lk(mu_);
  auto it = fins_.find(fin_id);
  if (it == fins_.end()) return {};
  FinBinding b = it->second;
  indexRemove(b);
  fins_.erase(it);
  saveLocked();
  return {b};
}

std::optional<FinBinding> Registry::removeCapability(const std::string& capability_id, bool* fin_removed) {
  std::lock_guard lk(mu_);
  if (fin_removed) *fin_removed = false;
  auto t = by_topic_.find(capability_id);
  if (t == by_topic_.end()) return std::nullopt;
  auto it = fins_.find(t->second);
  if (it == fins_.end() || it->first == capability_id) return std::nullopt;  // a fin id, not a capability
  std::erase(it->second.capabilities, capability_id);
  by_topic_.erase(t);
  FinBinding after = it->second;
  if (after.capabilities.empty()) {
    indexRemove(after);
    fins_.erase(it);
    if (fin_removed) *fin_removed = true;
  }
  saveLocked();
  return after;
}

std::vector<FinBinding> Registry::removeIf(const std::function<bool(const FinBinding&)>& pred) {
  std::lock_guard lk(mu_);
  std::vector<FinBinding> out;
  for (auto it = fins_.begin(); it != fins_.end();) {
    if (pred(it->second)) {
      out.push_back(it->second);
      indexRemove(it->second);
      it = fins_.erase(it);
    } else {
      ++it;
    }
  }
  if (!out.empty()) saveLocked();
  return out;
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
  for (auto& [id, b] : fins_) out.push_back(b);
  fins_.clear();
  by_topic_.clear();
  if (!out.empty()) saveLocked();
  return out;
}

std::vector<FinBinding> Registry::snapshot() const {
  std::lock_guard lk(mu_);
  std::vector<FinBinding> out;
  out.reserve(fins_.size());
  for (auto& [id, b] : fins_) out.push_back(b);
  return out;
}

size_t Registry::size() const {
  std::lock_guard lk(mu_);
  return fins_.size();
}

// ---- persistence -------------------------------------------------------------------------

void Registry::save() const {
  std::lock_guard lk(mu_);
  saveLocked();
}

void Registry::saveLocked() const {
  if (state_file_.empty()) return;
  std::string j = "{\"version\":1,\"fins\":[";
  bool first = true;
  for (auto& [id, b] : fins_) {
    if (!first) j += ',';
    first = false;
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
  j += "]}\n";
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

void Registry::load() {
  if (state_file_.empty() || !std::filesystem::exists(state_file_)) return;
  YAML::Node root;
  try {
    root = YAML::LoadFile(state_file_);
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(state_file_ + ": corrupt state file: " + e.what());
  }
  std::lock_guard lk(mu_);
  fins_.clear();
  by_topic_.clear();
  try {
    for (const auto& n : root["fins"]) {
      FinBinding b;
      b.fin_id = n["fin_id"].as<std::string>();
      b.endpoint = n["endpoint"].as<std::string>();
      for (const auto& c : n["capabilities"]) b.capabilities.push_back(c.as<std::string>());
      b.acked = n["acked"].as<bool>(false);
      b.registered_at = n["registered_at"].as<int64_t>(0);
      b.register_message_id = n["register_message_id"].as<std::string>("");
      b.register_payload = n["register_payload"].as<std::string>("");
      b.restored = true;
      b.session = 0;
      indexAdd(b);
      fins_[b.fin_id] = std::move(b);
    }
  } catch (const YAML::Exception& e) {
    throw std::runtime_error(state_file_ + ": corrupt state file: " + e.what());
  }
}

}  // namespace fingate
