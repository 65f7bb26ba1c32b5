// The HTTP plugin's JSON check (simdjson, in its own translation unit): is a body JSON, and what
// are its `type` and `fin_id` (for the per-fin token check of a register).
#pragma once

#include <string>
#include <string_view>

namespace fingate::httpjson {

struct Info {
  bool ok = false;     // well-formed JSON (any value)
  std::string error;   // why not, when !ok
  std::string type;    // top-level "type" when it is a string, else empty
  std::string fin_id;  // top-level "fin_id" when it is a string, else empty
};

Info inspect(std::string_view body);

}  // namespace fingate::httpjson
