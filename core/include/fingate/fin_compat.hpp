// Compatibility repair between SOARCA's Go encoder and the Python fin library's models
// (FIN-PROTOCOL.md §3-5). Applied by the router to commands going to a `compat: python-fin`
// endpoint. Only the repaired bytes change; everything else stays byte for byte.
#pragma once

#include <string>
#include <string_view>

namespace fingate::fin {

struct RepairStats {
  int auth_removed = 0;         // `authentication` objects with an empty (or no) `type`, removed
  int variables_completed = 0;  // variables that got the fields Go omits when empty
};

// Repairs a `command` message for the Python fin library:
//  - command.authentication whose `type` is "" (Go's zero value) is removed;
//  - every command.variables.<name> object gets the fields Go omits when empty:
//    "description":"", "value":"", "constant":false, "external":false.
// Returns true and writes `out` when something changed; false (out untouched) when the
// message needs no repair or is not a command object.
bool repairCommandForPythonFin(std::string_view payload, std::string& out, RepairStats& stats);

}  // namespace fingate::fin
