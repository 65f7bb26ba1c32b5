// registry_persist: 10,000 fins registering through the real Router and Registry, without a
// state file and with one (issue 8 item 7: the whole file used to be rewritten and fsynced on
// the routing lane per register, O(n^2)). Writes are now coalesced by one writer thread off the
// lane (limits.state_write_delay_ms). Prints one table; no assertions.
//
// Usage: registry_persist [N=10000] [DIR=/tmp]
#include <fingate/fin_codec.hpp>
#include <fingate/router.hpp>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

using namespace fingate;

namespace {

class NullOutput : public RouterOutput {
 public:
  void send(OutMessage&& m) override { m.settle(FG_OUTCOME_DELIVERED); }
  fg_status subscribe(const std::string&, uint64_t) override { return FG_OK; }
  void unsubscribe(uint64_t) override {}
  void post(std::function<void()> fn) override { fn(); }
  bool noLocal() const override { return true; }
};

std::string registerOf(int i) {
  std::string fin = "soarca-fin--bench-" + std::to_string(i), cap = "mod-bench--" + std::to_string(i);
  return R"({"type":"register","message_id":"m-)" + std::to_string(i) + R"(","fin_id":")" + fin +
         R"(","protocol_version":"0.0.1","security":{"version":"0.0.1","channel_security":"plaintext"},"capabilities":[{"capability_id":")" +
         cap +
         R"(","type":"action","name":"bench","version":"0.0.1","step":{"s":{"type":"action","name":"n","description":"d","external_references":[],"command":"c","target":"t"}},"agent":{"a":{"type":"soarca-fin","name":"x"}}}],"meta":{"timestamp":"2026-11-23T03:47:57.613598+00:00","sender_id":")" +
         fin + R"("}})";
}

struct Result {
  double route_s = 0, flush_s = 0;
  uint64_t writes = 0;
  size_t bytes = 0, bound = 0;
};

Result run(int n, const std::string& state_file, uint32_t delay_ms) {
  Registry registry;
  if (!state_file.empty()) {
    std::filesystem::remove(state_file);
    registry.setStateFile(state_file, delay_ms);
  }
  Limits l;
  l.fins_per_endpoint = n + 1;
  Router router(registry, 10, l);
  NullOutput orch, fins;
  auto o = std::make_shared<RouterEndpoint>();
  o->name = "orch";
  o->role = Role::Orchestrator;
  o->out = &orch;
  auto f = std::make_shared<RouterEndpoint>();
  f->name = "fins";
  f->role = Role::Fins;
  f->out = &fins;
  f->sessions = true;
  router.setEndpoints({o, f});
  std::vector<std::string> regs;
  for (int i = 0; i < n; ++i) regs.push_back(registerOf(i));
  auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < n; ++i) {
    Envelope e;
    e.topic = "soarca";
    e.assignPayload(regs[static_cast<size_t>(i)]);
    e.session = static_cast<uint64_t>(i) + 1;
    router.route("fins", std::move(e));
  }
  auto t1 = std::chrono::steady_clock::now();
  registry.flush();
  auto t2 = std::chrono::steady_clock::now();
  Result r;
  r.route_s = std::chrono::duration<double>(t1 - t0).count();
  r.flush_s = std::chrono::duration<double>(t2 - t1).count();
  r.writes = registry.writes();
  r.bound = registry.size();
  if (!state_file.empty()) r.bytes = std::filesystem::file_size(state_file);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  int n = argc > 1 ? std::atoi(argv[1]) : 10000;
  std::string dir = argc > 2 ? argv[2] : "/tmp";
  std::string file = dir + "/registry_persist_bench.json";
  std::printf("| state | registers | bound | routing time s | registers/s | then flush s | state writes | file bytes |\n");
  std::printf("|---|---:|---:|---:|---:|---:|---:|---:|\n");
  struct Mode {
    const char* name;
    std::string file;
    uint32_t delay;
  };
  for (const Mode& m : {Mode{"none", "", 0}, Mode{"state_dir, delay 100 ms (default)", file, 100},
                        Mode{"state_dir, delay 0", file, 0}}) {
    Result r = run(n, m.file, m.delay);
    std::printf("| %s | %d | %zu | %.3f | %.0f | %.3f | %llu | %zu |\n", m.name, n, r.bound, r.route_s, n / r.route_s,
                r.flush_s, static_cast<unsigned long long>(r.writes), r.bytes);
  }
  std::filesystem::remove(file);
  return 0;
}
