// `fingate migrate plan` and `status`: the gateway's answers (GET /v1/migration, GET /v1/fins)
// read and shown. Pure: no I/O, unit-tested in tests/unit/gateway/migrate_plan_test.cpp.
#pragma once

#include <cstdint>
#include <fingate/json.hpp>
#include <map>
#include <string>
#include <vector>

namespace fingate::cli {

// GET /v1/migration, the members the CLI uses.
struct MigrationState {
  std::string from, to, active, passive;
  bool mirror = false;
  uint64_t mirrored_from = 0, mirrored_to = 0;  // copies the mirror published to each side
  uint64_t mirror_failed = 0;
  uint64_t bindings_from = 0, bindings_to = 0;
  std::string switched_at;  // empty: never switched
  bool has_verify = false;
  bool verify_parity = false;
  std::string verify_at, verify_active;
  double verify_age_s = 0;
  uint64_t verify_messages = 0, verify_topics = 0;
  bool cutover_allowed = false;
  std::string cutover_refused_because;
  // Where each fin of the pair was last heard (seconds ago; < 0 = never): which fins still
  // speak on which broker (GET /v1/migration "fins").
  struct Heard {
    double from_s = -1, to_s = -1;
  };
  std::map<std::string, Heard> heard;
};

// Fins heard on `side` ("from" or "to" side of m) within the last `within_s` seconds.
std::vector<std::string> heardOn(const MigrationState& m, bool to_side, double within_s);

// false with `error` when the answer lacks from/to/active or is not an object.
bool readMigrationState(const Json& j, MigrationState& out, std::string& error);

// status: the state, readable (several lines).
std::string statusText(const MigrationState& m);

struct PlanMove {
  std::string fin_id;
  std::vector<std::string> capabilities;
  std::string endpoint;
  bool acked = false;
  MigrationState::Heard heard;  // last heard on each side
};
struct PlanStay {
  std::string fin_id;
  std::string endpoint;
  std::string reason;
};
struct Plan {
  std::string from, to, active;
  bool mirror = false;
  std::vector<PlanMove> move;  // bound on the active side: moves at the next switch
  std::vector<PlanStay> stay;
  std::vector<std::string> problems;  // what blocks the next switch now
};

// Every binding of GET /v1/fins classified (in its order):
//  - on an endpoint outside the pair: stays;
//  - a session binding (session != 0): stays with its connection;
//  - a remote binding (owned by another gateway instance): stays, that instance moves it;
//  - restored and unclaimed: stays;
//  - on the active side: moves (not acked yet: moves too, with a note in the text);
//  - on the passive side: stays (already where the switch moves bindings to).
// The next switch is the cutover while `from` is active, else the rollback (a problem: the
// migration is already cut over). A refused cutover (cutover_allowed false) is a problem with the
// gateway's reason.
Plan makePlan(const MigrationState& m, const Json& fins);
std::string planJson(const Plan& p);
std::string planText(const Plan& p);

}  // namespace fingate::cli
