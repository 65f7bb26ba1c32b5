// The fin registry: which fin (and which of its capabilities) lives behind which endpoint
// and session. Learned from register messages, persisted in the state directory.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

namespace fingate {

struct FinBinding {
  std::string fin_id;
  std::string endpoint;  // the fins-side endpoint name
  uint64_t session = 0;  // the client session on session transports; 0 = none / restored
  std::vector<std::string> capabilities;
  bool acked = false;         // the orchestrator acked the register
  int64_t registered_at = 0;  // Unix seconds
  std::string register_message_id;
  std::string register_payload;  // the register's bytes, as received (for replay)
  bool restored = false;         // loaded from the state file, no live session yet
  bool remote = false;           // learned from another instance through the shared registry
};

// The shared-registry record of a binding (JSON; docs/scaling.md), and back. fromRecord
// returns nullopt with `error` set on a record it cannot read.
std::string bindingRecord(const FinBinding& b);
std::optional<FinBinding> bindingFromRecord(const std::string& json, std::string& error);

using BindingPtr = std::shared_ptr<const FinBinding>;

// Limits the registry enforces in bind() (see Limits in config.hpp).
struct RegistryLimits {
  uint32_t fins_per_session = 64;
  uint32_t fins_per_endpoint = 10000;
};

// What bind() decided. error empty = bound.
struct BindResult {
  std::string error;              // "" | "capability_conflict" | "limit_fins_per_session" | "limit_fins_per_endpoint"
  std::string detail;             // one human line for the nack / dead letter
  BindingPtr prev;                // the fin's binding before (nullptr when new)
  std::vector<std::string> gone;  // topics the previous binding had and the new one has not
};

class Registry {
 public:
  Registry();
  ~Registry();  // writes what is pending
  Registry(const Registry&) = delete;
  Registry& operator=(const Registry&) = delete;

  // Owner of a topic (fin id or capability id), if bound. Copies one pointer, nothing else.
  BindingPtr lookup(const std::string& topic) const;
  // Every fin id / capability id of a binding are its topics.
  static std::vector<std::string> topicsOf(const FinBinding& b);

  void setLimits(RegistryLimits l);
  // Check and bind in one step (under one lock, so two endpoints registering the same id at
  // once cannot both win): refuses when an id of b is bound to another live owner (a restored
  // binding can be claimed only by a register of the same fin id), or a limit is hit.
  BindResult bind(const FinBinding& b);
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

  // Shared registry (cluster.registry_endpoint). adopt() installs a binding learned from another
  // instance (b.remote set): refused (error set) when this instance holds a live binding of the
  // fin itself, when one of its ids belongs to another fin, or at a limit. dropRemote() removes
  // the fin when its binding is a remote one (a tombstone never removes a local binding).
  BindResult adopt(FinBinding b);
  std::vector<FinBinding> dropRemote(const std::string& fin_id);
  // Publishes this instance's bindings to the shared registry: from the writer thread, after
  // every coalesced change, publish(fin_id, binding) for each binding `share` selects that is new
  // or changed since it was last published, and publish(fin_id, nullptr) for each one published
  // before that is gone or no longer shared (remote bindings are never published). Empty
  // functions turn it off (and wait for a publish in progress to return).
  using SharePredicate = std::function<bool(const FinBinding&)>;
  using SharePublish = std::function<void(const std::string& fin_id, const FinBinding* b)>;
  void setReplicator(SharePredicate share, SharePublish publish);
  // Removes every binding pred selects.
  std::vector<FinBinding> removeIf(const std::function<bool(const FinBinding&)>& pred);

  // Migration: every binding of endpoint `from` (local ones) moves to `to`, and from now on a
  // binding made (bind, adopt) for `from` is made for `to` — one step under the registry's lock,
  // so a register bound during a cutover cannot stay behind. Returns how many bindings moved.
  // An empty `from` removes the redirection.
  size_t redirect(const std::string& from, const std::string& to);

  std::vector<FinBinding> snapshot() const;
  size_t size() const;

  // Persistence: the state file (JSON), written off the caller's thread by one writer:
  // changes are coalesced for `delay_ms` (staleness bound), then the whole file is written to
  // a temp file, fsynced and renamed. An empty path disables persistence.
  void setStateFile(std::string path, uint32_t delay_ms = 100);
  const std::string& stateFile() const { return state_file_; }
  // Loads the state file (missing file = empty). Every binding is validated like a live
  // register (ids, endpoint known when `endpoint_known` is given); bad ones are dropped with a
  // warning. A file that cannot be read as a state file is moved aside
  // (<file>.corrupt-<unix time>) with an error line, and the registry starts empty.
  void load(const std::function<bool(const std::string&)>& endpoint_known = {});
  // Writes what is pending now and waits for it (tests, shutdown).
  void flush();
  uint64_t writes() const { return writes_.load(); }

 private:
  using Ptr = std::shared_ptr<FinBinding>;
  void changedLocked();
  void writerLoop();
  std::string serializeLocked() const;
  void writeFile(const std::string& j) const;
  std::vector<std::string> indexAdd(const FinBinding& b);
  void indexRemove(const FinBinding& b);
  std::string conflictLocked(const FinBinding& b) const;
  std::string limitLocked(const FinBinding& b, std::string& code) const;
  void replaceLocked(const FinBinding& b, BindResult& r);
  void replicate();
  bool writerWantedLocked() const { return !state_file_.empty() || static_cast<bool>(share_); }
  void startWriterLocked();
  SharePredicate share_;
  SharePublish publish_;
  std::mutex replicate_mu_;               // held while publish_ runs, and to change it
  std::map<std::string, Ptr> published_;  // what the shared registry last got, per fin (writer thread)
  mutable std::mutex mu_;
  std::map<std::string, Ptr> fins_;              // fin_id -> binding (replaced, never changed in place)
  std::map<std::string, std::string> by_topic_;  // fin id / capability id -> fin_id
  // Fins per endpoint and per live (endpoint, session): kept counted for the limits.
  void account(const FinBinding& b, int delta);
  std::unordered_map<std::string, size_t> per_endpoint_;
  std::map<std::pair<std::string, uint64_t>, size_t> per_session_;
  RegistryLimits limits_;
  std::string redirect_from_, redirect_to_;  // see redirect()
  std::string state_file_;
  uint32_t delay_ms_ = 100;
  // writer
  std::condition_variable writer_cv_, written_cv_;
  std::thread writer_;
  bool dirty_ = false, stop_writer_ = false;
  uint64_t version_ = 0, written_version_ = 0;
  std::atomic<uint64_t> writes_{0};
};

}  // namespace fingate
