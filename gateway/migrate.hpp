// `fingate migrate`: moving the fins of one broker endpoint to another while the gateway runs
// (plan / mirror / verify / cutover / rollback / status; docs/cli.md, "fingate migrate").
// main.cpp only adds the subcommand (addMigrateCommand) and calls migrate().
#pragma once

#include <string>
#include <vector>

namespace CLI {
class App;
}

namespace fingate::cli {

struct MigrateArgs {
  enum class Step { None, Plan, Mirror, Verify, Cutover, Rollback, Status };
  Step step = Step::None;  // set by the step's subcommand

  // Every step.
  std::string config;  // -c FILE: admin address and token (and verify's endpoints)
  std::string admin;   // --admin HOST:PORT (default: the config's admin.listen)
  std::string token;   // --token TOKEN (default: the config's admin.token)
  bool json = false;   // --json (plan, verify, cutover, rollback, status)

  // mirror
  bool off = false;    // --off
  double watch_s = 0;  // --watch SECONDS (0 = do not watch)

  // verify
  double window_s = 10;             // --window
  double grace_s = 2;               // --grace
  bool allow_idle = false;          // --allow-idle
  std::vector<std::string> topics;  // -t (repeatable): observed beside soarca and the bound ids
  double connect_timeout_s = 10;    // --connect-timeout
  bool debug = false;               // -d
};

// Adds `migrate` and its steps to app; returns it (main checks `if (*cmd)`).
CLI::App* addMigrateCommand(CLI::App& app, MigrateArgs& args);

// Runs the parsed step. Exit codes: 0 ok, 1 cannot proceed (gateway unreachable, refused,
// differences found), 2 usage or config error.
int migrate(const MigrateArgs& args);

}  // namespace fingate::cli
