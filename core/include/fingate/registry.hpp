// The fin registry: which fin (and which of its capabilities) lives behind which endpoint
// and session. Learned from register messages, persisted in the state directory.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

namespace fingate {

struct FinBinding {
  std::string fin_id;
  std::string endpoint;  // the fins-side endpoint name
  uint64_t session = 0;  // the client session on session transports; 0 = none / restored
  std::vector<std::string> capabilities;
  bool acked = false;          // the orchestrator acked the register
  int64_t registered_at = 0;   // Unix seconds
  std::string register_message_id;
  std::string register_payload;  // the register's bytes, as received (for replay)
  bool restored = false;         // loaded from the state file, no live session yet
};

class Registry {
 public:
  // Owner of a topic (fin id or capability id), if bound.
  std::optional<FinBinding> lookup(const std::string& topic) const;
  // Every fin id / capability id of a binding are its topics.
  static std::vector<std::string> topicsOf(const FinBinding& b);

  // Adds or replaces the binding of b.fin_id; returns the topics that the previous binding had
  // and the new one has not (to unsubscribe). Ids of other fins are not touched (the caller
  // checked conflicts with ownerConflict()).
  std::vector<std::string> bind(const FinBinding& b);
  // Which capability/fin id of b is already bound to another live owner: returns the id, or "".
  std::string ownerConflict(const FinBinding& b) const;
  // Register ack/nack from the orchestrator: commit (acked = true) or remove. Returns the fin id
  // it applied to, or "" when no provisional binding had that message id.
  std::string commit(const std::string& fin_id, const std::string& register_message_id);
  std::optional<FinBinding> undo(const std::string& fin_id, const std::string& register_message_id);

  // Removals; each returns the bindings it removed (whole fins) or changed.
  std::vector<FinBinding> removeFin(const std::string& fin_id);
  // Removes one capability; the fin stays while it has capabilities. Returns the fin after the change.
  std::optional<FinBinding> removeCapability(const std::string& capability_id, bool* fin_removed);
  std::vector<FinBinding> removeEndpoint(const std::string& endpoint);
  std::vector<FinBinding> removeSession(const std::string& endpoint, uint64_t session);
  std::vector<FinBinding> removeAll();

  std::vector<FinBinding> snapshot() const;
  size_t size() const;

  // Persistence: the state file (JSON). save() writes atomically (temp file, fsync, rename).
  // An empty path disables persistence.
  void setStateFile(std::string path) { state_file_ = std::move(path); }
  const std::string& stateFile() const { return state_file_; }
  // Loads the state file (missing file = empty); throws std::runtime_error on a corrupt file.
  void load();
  void save() const;  // logs (does not throw) on I/O errors

 private:
  // Removes (and returns) every binding pred selects; saves when any went.
  std::vector<FinBinding> removeIf(const std::function<bool(const FinBinding&)>& pred);
  void saveLocked() const;
  std::vector<std::string> indexAdd(const FinBinding& b);
  void indexRemove(const FinBinding& b);
  mutable std::mutex mu_;
  std::map<std::string, FinBinding> fins_;        // fin_id -> binding
  std::map<std::string, std::string> by_topic_;   // fin id / capability id -> fin_id
  std::string state_file_;
};

}  // namespace fingate
