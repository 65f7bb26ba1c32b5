// A small JSON tree for the command-line tools (admin API answers, verify reports): read with
// simdjson (in codec.cpp, the one translation unit that includes it), never on the data path.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace fingate {

struct Json {
  enum class Type { Null, Bool, Number, String, Array, Object };
  Type type = Type::Null;
  bool boolean = false;
  double number = 0;
  std::string string;
  std::vector<Json> array;
  // An object's members, in document order: keys[i] names members[i] (two vectors: a
  // pair<string, Json> member would need Json complete here).
  std::vector<std::string> keys;
  std::vector<Json> members;

  // The member `key` of an object (nullptr when absent or not an object).
  const Json* get(std::string_view key) const;
  // Convenience reads with a default when absent or of another type.
  std::string str(std::string_view key, std::string def = "") const;
  double num(std::string_view key, double def = 0) const;
  bool flag(std::string_view key, bool def = false) const;
  bool isNull() const { return type == Type::Null; }
};

// Parses a whole JSON document (nesting up to 64 levels). nullopt with `error` set when it is
// not one.
std::optional<Json> parseJson(std::string_view text, std::string& error);

}  // namespace fingate
