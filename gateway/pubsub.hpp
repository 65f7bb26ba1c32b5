// `fingate pub` and `fingate sub`: mosquitto_pub / mosquitto_sub (and kcat) for every transport
// plugin, through the same loader, plugins and config keys as the gateway (docs/cli.md).
// main.cpp only adds the two subcommands (addPubCommand / addSubCommand) and calls pub / sub.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli_host.hpp"  // EndpointArgs, the exit codes

namespace CLI {
class App;
}

namespace fingate::cli {

struct PubArgs {
  EndpointArgs ep;
  std::string topic;    // -t
  std::string message;  // -m
  bool has_message = false;
  std::string file;           // -f: the whole file is one message
  bool lines = false;         // -l: stdin, one message per line (blank lines skipped)
  bool stdin_whole = false;   // -s: stdin, the whole input is one message
  bool null_message = false;  // -n: one empty message
  uint64_t count = 1;         // --count: publish the message this many times
  double rate = 0;            // --rate: messages per second (0 = as fast as confirmed)
  double timeout_s = 10;      // --timeout: per message, until the transport confirms it
};

struct SubArgs {
  EndpointArgs ep;
  std::vector<std::string> topics;  // -t (repeatable)
  bool verbose = false;             // -v: "topic payload"
  bool json = false;                // --json: {"topic":...,"payload":...} per line
  uint64_t count = 0;               // -C: exit after this many messages (0 = no limit)
  double timeout_s = 0;             // --timeout/-W: exit 27 when it expires before -C messages (0 = none)
};

// Adds the subcommand and its options to app; returns it (main checks `if (*cmd)`).
CLI::App* addPubCommand(CLI::App& app, PubArgs& args);
CLI::App* addSubCommand(CLI::App& app, SubArgs& args);

int pub(const PubArgs& args);
int sub(const SubArgs& args);

}  // namespace fingate::cli
