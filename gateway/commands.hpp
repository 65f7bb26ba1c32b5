// The fingate subcommands. main.cpp only wires the command line to these.
#pragma once

#include <string>

namespace fingate::cli {

// Exit codes: 0 ok, 1 runtime failure, 2 bad configuration or usage.
int run(const std::string& config_path);
int validate(const std::string& config_path);
int plugins(const std::string& dir);

}  // namespace fingate::cli
