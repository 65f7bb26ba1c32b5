// Fin protocol codec: reads only the routing fields of a Fin message (simdjson on-demand,
// no DOM, no copy of the payload), validates what SOARCA's Go decoder and the Python fin
// library require, and writes acks/nacks. simdjson is confined to core/src/fin/codec.cpp.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fingate::fin {

// simdjson needs this many readable bytes past the end of the input. Buffers handed to
// parse() should have capacity >= size + kPadding; parse() copies into a padded buffer
// otherwise (slower, still correct).
inline constexpr size_t kPadding = 64;

enum class MsgType {
  Unknown,  // "type" missing or not one of the below
  Register,
  Ack,
  Nack,
  Command,
  Result,
  Unregister,
  Pause,
  Resume,
  Stop,
  Progress,
  Status,
};

std::string_view toString(MsgType t) noexcept;

struct Routing {
  MsgType type = MsgType::Unknown;
  std::string message_id;                    // unescaped; empty when absent
  bool message_id_readable = false;          // a string message_id was read (so a nack can name it)
  std::string fin_id;                        // register, unregister
  std::vector<std::string> capability_ids;   // register: one per capability, in order
  std::string capability_id;                 // unregister, pause/resume/stop/progress/status
  bool all = false;                          // unregister: `all` true (bool true or string "true")
};

struct ParseResult {
  bool ok = false;
  std::string error;  // when !ok: one line, e.g. "register: capabilities[0].capability_id: expected a string"
  Routing msg;        // filled as far as it could be read (message_id may be readable on error)
};

// Parses and validates one message (Validation::Routing, below). `capacity` is the number of
// readable bytes at `data` (>= len); pass len when unknown. Never throws. Thread-safe (one
// simdjson parser per thread).
ParseResult parse(const char* data, size_t len, size_t capacity) noexcept;
inline ParseResult parse(std::string_view s) noexcept { return parse(s.data(), s.size(), s.size()); }

// How much of a message parse() validates beyond its routing fields (bench/RESULTS.md has the cost).
enum class Validation {
  // Default. register (rare, changes the gateway's bindings): every byte validated as JSON and
  // every field SOARCA's Go structs / the Python models type-check. Other types: their routing
  // fields and the typed fields Go/Python require at the top (command/result objects, their
  // context/authentication/variables objects, meta object); the rest is checked structurally
  // only: UTF-8, closed strings, no raw control characters, brackets balanced, nothing truncated
  // or trailing. Token errors inside unread values (`01`, `tru`, `"\x"`, `[1}`) pass; the
  // receiver's decoder rejects them exactly as it would without the gateway.
  Routing,
  // Every message walked and validated completely, like register.
  Full,
};

// Same as parse(), but fills `out`, reusing its strings' storage: no allocation per message once
// `out` has seen ids of that length (use one ParseResult per thread on hot paths).
void parseInto(ParseResult& out, const char* data, size_t len, size_t capacity,
               Validation validation = Validation::Routing) noexcept;

// Id checks before an id becomes a topic: empty, "soarca", a leading '$' (broker system topics),
// '+', '#', NUL or control characters (C0, DEL, C1), invalid UTF-8, or over 1024 bytes are refused. Returns an empty
// string when valid, else why.
std::string validateId(std::string_view id);

// Compact Go-shaped {"type":"ack","message_id":"..."} / nack, with JSON escaping.
std::string makeAck(std::string_view message_id);
std::string makeNack(std::string_view message_id);

// JSON string escaping (quotes not included), shared by every JSON writer of the core. As Go:
// `"` and `\` backslashed, `<` `>` `&` and U+2028/U+2029 as \u escapes, invalid UTF-8 as
// \ufffd, other UTF-8 raw; every control character as \u00XX (lower-case hex).
void appendJsonEscaped(std::string& out, std::string_view s);

}  // namespace fingate::fin
