// Fin codec: routing-field extraction and validation with simdjson ON-DEMAND.
//
// This is the only translation unit that includes simdjson.h.
//
// What parse() does, in one forward pass over the message (no DOM, the payload is not copied
// when the caller's buffer has kPadding readable bytes past the end):
//  * reads `type` and `message_id`, and per type the ids the router needs;
//  * checks the JSON types that SOARCA's Go decoder (encoding/json into its fin structs) and the
//    Python fin library (pydantic models) require: a wrong JSON type where Go expects a
//    struct/map/slice/string/bool/int, a `meta.timestamp` that is not RFC 3339, ... -> error
//    naming the path;
//  * checks that the whole payload is JSON, to the depth chosen by Validation (below).
//
// How much is validated -- the trade-off (numbers in bench/RESULTS.md):
//   simdjson's stage 1 checks, for the whole buffer, UTF-8, unterminated strings and raw control
//   characters in strings. On-demand then looks only at what it is asked for and skips the rest
//   by counting brackets: it does not notice `[1}`, `01`, `tru`, `"\x"` or a missing comma
//   inside a value it skips, and it would not even notice truncation if we stopped iterating once
//   the routing fields are read. Go's json.Unmarshal rejects all of that.
//   * Validation::Full (and every register, in both modes): skipValue() walks every value --
//     containers are iterated (commas, colons, keys, matching brackets), number and literal tokens
//     are checked against the JSON grammar on their raw bytes (no conversion), strings are
//     unescaped only when their raw token holds a backslash. With the typed checks this costs
//     about 2x simdjson's own DOM parse: fine for registers (one per fin start, and they change
//     the gateway's bindings, so nothing invalid may get in).
//   * Validation::Routing (default) for every other type: the typed checks on the fields Go and
//     Python require at the top (command/result objects, their context/authentication/variables
//     objects, meta object), and for the rest on-demand's bracket-counting skip, always to the end
//     of the document, plus a check that every skipped value starts like a value and that nothing
//     follows the root object. So truncation, trailing bytes, unbalanced brackets, bad UTF-8 and
//     broken strings are still errors; token errors inside values nobody reads are not (the
//     receiver's decoder rejects them exactly as it would without the gateway). This keeps
//     command/result extraction at about the cost of a DOM parse and small messages well above
//     5 M/s per core.
//
// Go semantics reproduced on purpose:
//  * keys match struct fields case-insensitively (ASCII), the last duplicate wins, every duplicate
//    is still type-checked (Go decodes each of them);
//  * `null` for a field is a no-op (the previous/zero value stays): optional fields may be null;
//    required ones (message_id, fin_id, capabilities, capability_id, command, result) may not;
//  * unknown keys are ignored (but validated as JSON as above).
// Python (pydantic) requirements added on top: map entries (step, agent, variables) must be
// objects (Go would accept null entries, pydantic does not); `all` is a bool or "true"/"false".
// Not reproduced: Go's Unicode case folding of keys (U+017F, U+212A), Go's acceptance of
// invalid UTF-8 (simdjson rejects it, so do we), nesting deeper than kMaxDepth in walked values
// (Go allows 10000).

#include <fingate/fin_codec.hpp>
#include <fingate/fin_compat.hpp>

#include <simdjson.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace fingate::fin {

namespace {

namespace od = simdjson::ondemand;
using simdjson::error_code;

static_assert(kPadding >= simdjson::SIMDJSON_PADDING, "kPadding must cover simdjson's padding");

// Nesting levels accepted under the root object (real messages use < 10). Bounded so the
// recursive walk cannot exhaust a small thread stack.
constexpr int kMaxDepth = 256;

// ---------------------------------------------------------------------------------------------
// Small pure helpers (no simdjson)

inline char lowerAscii(char c) { return (c >= 'A' && c <= 'Z') ? char(c - 'A' + 'a') : c; }

// Go's encoding/json matches a key to a field name case-insensitively (exact match preferred,
// but our field names never collide under folding). `name` is lower case.
inline bool keyIs(std::string_view key, std::string_view name) {
  if (key.size() != name.size()) return false;
  if (std::memcmp(key.data(), name.data(), key.size()) == 0) return true;  // the usual case
  for (size_t i = 0; i < key.size(); ++i)
    if (lowerAscii(key[i]) != name[i]) return false;
  return true;
}

inline std::string_view trimTrailingWs(std::string_view s) {
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\n' || s.back() == '\r'))
    s.remove_suffix(1);
  return s;
}

inline bool isDigit(char c) { return c >= '0' && c <= '9'; }

// JSON number grammar: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
bool isJsonNumber(std::string_view s) {
  size_t i = 0, n = s.size();
  if (i < n && s[i] == '-') ++i;
  if (i >= n) return false;
  if (s[i] == '0') {
    ++i;
  } else if (s[i] >= '1' && s[i] <= '9') {
    while (i < n && isDigit(s[i])) ++i;
  } else {
    return false;
  }
  if (i < n && s[i] == '.') {
    ++i;
    if (i >= n || !isDigit(s[i])) return false;
    while (i < n && isDigit(s[i])) ++i;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (i >= n || !isDigit(s[i])) return false;
    while (i < n && isDigit(s[i])) ++i;
  }
  return i == n;
}

// What Go's json accepts into an `int` field: an integer literal (no fraction/exponent) in range.
bool isGoInt(std::string_view s) {
  if (!isJsonNumber(s)) return false;
  size_t i = (s[0] == '-') ? 1 : 0;
  for (size_t j = i; j < s.size(); ++j)
    if (!isDigit(s[j])) return false;
  std::string_view digits = s.substr(i);
  constexpr std::string_view kMax = "9223372036854775807", kMinAbs = "9223372036854775808";
  std::string_view limit = i ? kMinAbs : kMax;
  if (digits.size() != limit.size()) return digits.size() < limit.size();
  return digits <= limit;
}

int twoDigits(std::string_view s, size_t at) { return (s[at] - '0') * 10 + (s[at + 1] - '0'); }

// RFC 3339 as Go's time.Time.UnmarshalJSON (Go >= 1.20, strict) accepts it:
// YYYY-MM-DDTHH:MM:SS[.fraction](Z|+hh:mm|-hh:mm), with calendar ranges checked.
bool isRfc3339(std::string_view s) {
  auto digitsAt = [&](size_t at, size_t n) {
    if (at + n > s.size()) return false;
    for (size_t i = at; i < at + n; ++i)
      if (!isDigit(s[i])) return false;
    return true;
  };
  if (s.size() < 20 || !digitsAt(0, 4) || s[4] != '-' || !digitsAt(5, 2) || s[7] != '-' ||
      !digitsAt(8, 2) || s[10] != 'T' || !digitsAt(11, 2) || s[13] != ':' || !digitsAt(14, 2) ||
      s[16] != ':' || !digitsAt(17, 2))
    return false;
  int year = (s[0] - '0') * 1000 + (s[1] - '0') * 100 + twoDigits(s, 2);
  int month = twoDigits(s, 5), day = twoDigits(s, 8);
  int hour = twoDigits(s, 11), minute = twoDigits(s, 14), second = twoDigits(s, 17);
  static constexpr int kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (month < 1 || month > 12 || day < 1) return false;
  bool leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
  int max_day = kDays[month - 1] + ((month == 2 && leap) ? 1 : 0);
  if (day > max_day || hour > 23 || minute > 59 || second > 59) return false;
  size_t i = 19;
  if (i < s.size() && s[i] == '.') {
    ++i;
    size_t start = i;
    while (i < s.size() && isDigit(s[i])) ++i;
    if (i == start) return false;
  }
  if (i >= s.size()) return false;
  if (s[i] == 'Z') return i + 1 == s.size();
  if (s[i] != '+' && s[i] != '-') return false;
  if (s.size() != i + 6 || !digitsAt(i + 1, 2) || s[i + 3] != ':' || !digitsAt(i + 4, 2)) return false;
  return twoDigits(s, i + 1) <= 23 && twoDigits(s, i + 4) <= 59;
}

MsgType typeFromString(std::string_view t) {
  switch (t.size()) {
    case 3:
      if (t == "ack") return MsgType::Ack;
      break;
    case 4:
      if (t == "nack") return MsgType::Nack;
      if (t == "stop") return MsgType::Stop;
      break;
    case 5:
      if (t == "pause") return MsgType::Pause;
      break;
    case 6:
      if (t == "result") return MsgType::Result;
      if (t == "resume") return MsgType::Resume;
      if (t == "status") return MsgType::Status;
      break;
    case 7:
      if (t == "command") return MsgType::Command;
      break;
    case 8:
      if (t == "register") return MsgType::Register;
      if (t == "progress") return MsgType::Progress;
      break;
    case 10:
      if (t == "unregister") return MsgType::Unregister;
      break;
    default:
      break;
  }
  return MsgType::Unknown;
}

// ---------------------------------------------------------------------------------------------
// Error paths: a linked list on the stack, rendered only when an error is reported.

struct Path {
  const Path* parent = nullptr;
  std::string_view key;  // field or map key (when index < 0)
  long index = -1;       // array index
};

void renderPath(std::string& out, const Path* p) {
  if (p == nullptr) return;
  renderPath(out, p->parent);
  if (p->index >= 0) {
    out += '[';
    out += std::to_string(p->index);
    out += ']';
  } else {
    if (p->parent != nullptr) out += '.';
    out += p->key;
  }
}

// ---------------------------------------------------------------------------------------------
// The walk

void resetRouting(Routing& m) {
  m.type = MsgType::Unknown;
  m.message_id.clear();
  m.message_id_readable = false;
  m.fin_id.clear();
  // capability_ids keeps its strings for reuse; parseImpl trims it to Ctx::n_caps.
  m.capability_id.clear();
  m.all = false;
}

// Result of reading one typed field.
enum class Got { Null, Value, Bad, Dead };

struct Ctx {
  ParseResult& res;
  MsgType type = MsgType::Unknown;
  bool failed = false;  // a semantic (type/required) error was recorded
  bool dead = false;    // a JSON syntax error: the iterator cannot be used any more
  bool full = false;    // Validation::Full
  bool deep = true;     // walk and validate every value (else: on-demand skips what is not needed)
  size_t n_caps = 0;    // capability ids in effect (res.msg.capability_ids is trimmed to it at the end)

  void reset() {
    type = MsgType::Unknown;
    failed = dead = false;
    n_caps = 0;
    res.error.clear();
    resetRouting(res.msg);
  }

  std::string_view typePrefix() const {
    return type == MsgType::Unknown ? std::string_view("message") : toString(type);
  }

  // A wrong JSON type / missing field. The walk goes on (so JSON syntax errors later in the
  // payload and a later message_id are still seen); the first such error is kept.
  bool fail(const Path* p, std::string_view what) {
    if (!failed && !dead) {
      failed = true;
      res.error.assign(typePrefix());
      res.error += ": ";
      renderPath(res.error, p);
      res.error += ": ";
      res.error += what;
    }
    return true;  // the walk may continue
  }

  // Invalid JSON: overrides a semantic error (Go reports syntax errors first), stops the walk.
  bool syntax(error_code e, const Path* p) {
    return syntaxText(simdjson::error_message(e), p);
  }
  bool syntaxText(std::string_view what, const Path* p) {
    if (!dead) {
      dead = true;
      failed = true;
      res.error = "invalid JSON";
      if (p != nullptr) {
        res.error += " at ";
        renderPath(res.error, p);
      }
      res.error += ": ";
      res.error += what;
    }
    return false;
  }
};

bool skipValue(Ctx& c, od::value& v, const Path* p, int depth);

// A field's key. Keys without a backslash are used in place (stage 1 guarantees the closing
// quote); only escaped keys are unescaped (into the parser's string buffer).
// Reading 16 bytes at a time past the closing quote is safe: the buffer has kPadding (>= 16)
// readable bytes after the end of the JSON text, and the quote lies inside the text.
inline bool fieldKey(Ctx& c, od::field& f, const Path* p, std::string_view& key) {
  const char* k = f.key().raw();
#if defined(__SSE2__)
  const __m128i quote = _mm_set1_epi8('"'), backslash = _mm_set1_epi8('\\');
  for (size_t i = 0;; i += 16) {
    __m128i chunk = _mm_loadu_si128(reinterpret_cast<const __m128i*>(k + i));
    unsigned q = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(chunk, quote)));
    unsigned b = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(chunk, backslash)));
    if ((q | b) != 0) {
      unsigned first = unsigned(__builtin_ctz(q | b));
      if ((b >> first) & 1u) break;  // an escape comes first: unescape below
      key = std::string_view(k, i + first);
      return true;
    }
  }
#else
  for (size_t i = 0;; ++i) {
    if (k[i] == '"') {
      key = std::string_view(k, i);
      return true;
    }
    if (k[i] == '\\') break;
  }
#endif
  if (auto e = f.unescaped_key().get(key)) return c.syntax(e, p);
  return true;
}

// Whether s contains a backslash. Reads up to 15 bytes past its end (in the padding; s lies in
// the JSON text).
inline bool hasBackslash(std::string_view s) {
#if defined(__SSE2__)
  const __m128i backslash = _mm_set1_epi8('\\');
  size_t i = 0;
  for (; i + 16 <= s.size(); i += 16) {
    __m128i chunk = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s.data() + i));
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(chunk, backslash)) != 0) return true;
  }
  if (i == s.size()) return false;
  __m128i chunk = _mm_loadu_si128(reinterpret_cast<const __m128i*>(s.data() + i));
  unsigned mask = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(chunk, backslash)));
  return (mask & ((1u << (s.size() - i)) - 1u)) != 0;
#else
  return std::memchr(s.data(), '\\', s.size()) != nullptr;
#endif
}

inline void consumeString(od::value& v) {
  od::raw_json_string ignored;
  (void)v.get_raw_json_string().get(ignored);  // the token is a string: cannot fail
}

// The contents of a string value: in place when it has no escapes, else unescaped (which also
// validates the escapes). `v` must be a string (its token starts with a quote).
inline bool stringValue(Ctx& c, od::value& v, const Path* p, std::string_view& out) {
  std::string_view tok = v.raw_json_token();
  // The token runs to the next structural character: the string plus any whitespace after it.
  size_t end = tok.size();
  while (end > 1 && tok[end - 1] != '"') --end;
  if (end < 2) return c.syntax(simdjson::STRING_ERROR, p);
  std::string_view body = tok.substr(1, end - 2);
  if (!hasBackslash(body)) {
    out = body;
    // Consume the token. Left to on-demand's skip, a string followed by ':' would be taken for a
    // key (simdjson issue 1742) and `"k":"v":1` would pass.
    consumeString(v);
    return true;
  }
  if (auto e = v.get_string().get(out)) return c.syntax(e, p);  // consumes
  return true;
}

// Iterates an object's fields: on(key, value, path) -> false stops (syntax error).
template <class OnField>
bool forEachField(Ctx& c, od::value& v, const Path* p, int depth, OnField&& on) {
  if (depth > kMaxDepth) return c.syntaxText("nested too deeply", p);
  od::object o;
  if (auto e = v.get_object().get(o)) return c.syntax(e, p);
  for (auto fr : o) {
    if (auto e = fr.error()) return c.syntax(e, p);
    od::field& f = fr.value_unsafe();  // no copy of the field (a copy costs a store-forwarding stall)
    std::string_view key;
    if (!fieldKey(c, f, p, key)) return false;
    Path fp{p, key};
    if (!on(key, f.value(), &fp)) return false;
  }
  return true;
}

template <class OnElement>
bool forEachElement(Ctx& c, od::value& v, const Path* p, int depth, OnElement&& on) {
  if (depth > kMaxDepth) return c.syntaxText("nested too deeply", p);
  od::array a;
  if (auto e = v.get_array().get(a)) return c.syntax(e, p);
  long i = 0;
  for (auto er : a) {
    if (auto e = er.error()) return c.syntax(e, p);
    od::value& ev = er.value_unsafe();
    Path ep{p, {}, i++};
    if (!on(ev, &ep)) return false;
  }
  return true;
}

// A scalar token's bytes without the whitespace simdjson includes after it.
inline std::string_view tokenOf(od::value& v) { return trimTrailingWs(v.raw_json_token()); }

// Validates any JSON value without converting it (see the header comment).
bool skipValue(Ctx& c, od::value& v, const Path* p, int depth) {
  od::json_type t;
  // Even when on-demand skips the value, it must start like a value: a stray closer here (`"x":]`)
  // would make on-demand's bracket counting end the enclosing container early and accept an
  // unbalanced document.
  if (auto e = v.type().get(t)) return c.syntax(e, p);
  if (t == od::json_type::string) {
    std::string_view s;
    return stringValue(c, v, p, s);  // validates escapes and consumes the token
  }
  if (!c.deep) return true;  // the rest is left to on-demand's skip (see the header comment)
  switch (t) {
    case od::json_type::object:
      return forEachField(c, v, p, depth + 1, [&](std::string_view, od::value& fv, const Path* fp) {
        return skipValue(c, fv, fp, depth + 1);
      });
    case od::json_type::array:
      return forEachElement(c, v, p, depth + 1,
                            [&](od::value& ev, const Path* ep) { return skipValue(c, ev, ep, depth + 1); });
    case od::json_type::string:
      return true;  // handled above
    case od::json_type::number:
      if (!isJsonNumber(tokenOf(v))) return c.syntax(simdjson::NUMBER_ERROR, p);
      return true;
    case od::json_type::boolean: {
      std::string_view tok = tokenOf(v);
      if (tok != "true" && tok != "false") return c.syntax(simdjson::T_ATOM_ERROR, p);
      return true;
    }
    case od::json_type::null:
      if (tokenOf(v) != "null") return c.syntax(simdjson::N_ATOM_ERROR, p);
      return true;
  }
  return c.syntax(simdjson::TAPE_ERROR, p);
}

// Peeks the JSON type; a valid `null` is consumed and reported as Got::Null.
Got peekType(Ctx& c, od::value& v, const Path* p, od::json_type& t) {
  if (auto e = v.type().get(t)) return c.syntax(e, p), Got::Dead;
  if (t == od::json_type::null) {
    if (tokenOf(v) != "null") return c.syntax(simdjson::N_ATOM_ERROR, p), Got::Dead;
    return Got::Null;
  }
  return Got::Value;
}

// A Go `string` field: a string (unescaped into out) or null; anything else is Bad.
Got readString(Ctx& c, od::value& v, const Path* p, std::string_view& out) {
  od::json_type t;
  Got g = peekType(c, v, p, t);
  if (g != Got::Value) return g;
  if (t != od::json_type::string) {
    c.fail(p, "expected a string");
    return skipValue(c, v, p, 0) ? Got::Bad : Got::Dead;
  }
  return stringValue(c, v, p, out) ? Got::Value : Got::Dead;
}

// A Go string field whose value we do not keep.
bool vString(Ctx& c, od::value& v, const Path* p) {
  std::string_view s;
  return readString(c, v, p, s) != Got::Dead;
}

// A Go time.Time field: RFC 3339 string or null.
bool vTime(Ctx& c, od::value& v, const Path* p) {
  std::string_view s;
  Got g = readString(c, v, p, s);
  if (g == Got::Value && !isRfc3339(s)) c.fail(p, "expected an RFC 3339 timestamp");
  return g != Got::Dead;
}

// A Go int field.
bool vInt(Ctx& c, od::value& v, const Path* p) {
  od::json_type t;
  Got g = peekType(c, v, p, t);
  if (g != Got::Value) return g != Got::Dead;
  if (t == od::json_type::number) {
    std::string_view tok = tokenOf(v);
    if (!isJsonNumber(tok)) return c.syntax(simdjson::NUMBER_ERROR, p);
    if (!isGoInt(tok)) c.fail(p, "expected an integer");
    return true;
  }
  c.fail(p, "expected an integer");
  return skipValue(c, v, p, 0);
}

// A Go bool field.
bool vBool(Ctx& c, od::value& v, const Path* p) {
  od::json_type t;
  Got g = peekType(c, v, p, t);
  if (g != Got::Value) return g != Got::Dead;
  if (t != od::json_type::boolean) c.fail(p, "expected a boolean");
  return skipValue(c, v, p, 0);
}

// A Go struct (or pydantic model) field: object or null. on(key, value, path) handles fields.
template <class OnField>
bool vObject(Ctx& c, od::value& v, const Path* p, int depth, OnField&& on, bool* present = nullptr) {
  od::json_type t;
  Got g = peekType(c, v, p, t);
  if (g != Got::Value) return g != Got::Dead;
  if (t != od::json_type::object) {
    c.fail(p, "expected an object");
    return skipValue(c, v, p, depth);
  }
  if (present != nullptr) *present = true;
  return forEachField(c, v, p, depth + 1, on);
}

// A Go map[string]Struct: object or null; every entry must be an object (pydantic).
template <class OnEntryField>
bool vMapOfObjects(Ctx& c, od::value& v, const Path* p, int depth, OnEntryField&& on) {
  return vObject(c, v, p, depth, [&](std::string_view, od::value& ev, const Path* ep) {
    od::json_type t;
    if (auto e = ev.type().get(t)) return c.syntax(e, ep);
    if (t != od::json_type::object) {
      c.fail(ep, "expected an object");
      return skipValue(c, ev, ep, depth + 1);
    }
    return forEachField(c, ev, ep, depth + 2, on);
  });
}

// Shallow check (not deep): object or null, contents left to on-demand's skip.
bool vObjectShallow(Ctx& c, od::value& v, const Path* p) {
  od::json_type t;
  Got g = peekType(c, v, p, t);
  if (g != Got::Value) return g != Got::Dead;
  if (t != od::json_type::object) {
    c.fail(p, "expected an object");
    return skipValue(c, v, p, 0);
  }
  return true;
}

// meta{timestamp, sender_id}
bool vMeta(Ctx& c, od::value& v, const Path* p) {
  if (!c.deep) return vObjectShallow(c, v, p);
  return vObject(c, v, p, 0, [&](std::string_view k, od::value& fv, const Path* fp) {
    if (keyIs(k, "timestamp")) return vTime(c, fv, fp);
    if (keyIs(k, "sender_id")) return vString(c, fv, fp);
    return skipValue(c, fv, fp, 1);
  });
}

// CACAO context as SOARCA sends it (Go struct): times, ints, ids.
bool vContext(Ctx& c, od::value& v, const Path* p, int depth) {
  if (!c.deep) return vObjectShallow(c, v, p);
  return vObject(c, v, p, depth, [&](std::string_view k, od::value& fv, const Path* fp) {
    if (keyIs(k, "completed_on") || keyIs(k, "generated_on")) return vTime(c, fv, fp);
    if (keyIs(k, "timeout") || keyIs(k, "delay")) return vInt(c, fv, fp);
    if (keyIs(k, "step_id") || keyIs(k, "playbook_id") || keyIs(k, "execution_id")) return vString(c, fv, fp);
    return skipValue(c, fv, fp, depth + 1);
  });
}

// cacao.Variables: map of {type,name,description,value: string; constant,external: bool}.
bool vVariables(Ctx& c, od::value& v, const Path* p, int depth) {
  if (!c.deep) return vObjectShallow(c, v, p);
  return vMapOfObjects(c, v, p, depth, [&](std::string_view k, od::value& fv, const Path* fp) {
    if (keyIs(k, "type") || keyIs(k, "name") || keyIs(k, "description") || keyIs(k, "value"))
      return vString(c, fv, fp);
    if (keyIs(k, "constant") || keyIs(k, "external")) return vBool(c, fv, fp);
    return skipValue(c, fv, fp, depth + 2);
  });
}

// cacao.AuthenticationInformation: strings plus the kms bool.
bool vAuthentication(Ctx& c, od::value& v, const Path* p, int depth) {
  if (!c.deep) return vObjectShallow(c, v, p);
  return vObject(c, v, p, depth, [&](std::string_view k, od::value& fv, const Path* fp) {
    if (keyIs(k, "kms")) return vBool(c, fv, fp);
    if (keyIs(k, "id") || keyIs(k, "type") || keyIs(k, "name") || keyIs(k, "description") ||
        keyIs(k, "username") || keyIs(k, "user_id") || keyIs(k, "password") || keyIs(k, "private_key") ||
        keyIs(k, "kms_key_identifier") || keyIs(k, "token") || keyIs(k, "oauth_header"))
      return vString(c, fv, fp);
    return skipValue(c, fv, fp, depth + 1);
  });
}

// register: capabilities[i].step.<key> = {type,name,description,external_references[],command,target}
bool vStepField(Ctx& c, std::string_view k, od::value& fv, const Path* fp, int depth) {
  if (keyIs(k, "external_references")) {
    od::json_type t;
    Got g = peekType(c, fv, fp, t);
    if (g != Got::Value) return g != Got::Dead;
    if (t != od::json_type::array) {
      c.fail(fp, "expected an array");
      return skipValue(c, fv, fp, depth);
    }
    return forEachElement(c, fv, fp, depth + 1, [&](od::value& ev, const Path* ep) {
      return vObject(c, ev, ep, depth + 1, [&](std::string_view rk, od::value& rv, const Path* rp) {
        if (keyIs(rk, "name") || keyIs(rk, "description") || keyIs(rk, "source") || keyIs(rk, "url") ||
            keyIs(rk, "external_id") || keyIs(rk, "reference_id"))
          return vString(c, rv, rp);
        return skipValue(c, rv, rp, depth + 2);
      });
    });
  }
  if (keyIs(k, "type") || keyIs(k, "name") || keyIs(k, "description") || keyIs(k, "command") ||
      keyIs(k, "target"))
    return vString(c, fv, fp);
  return skipValue(c, fv, fp, depth);
}

// register: capabilities[]
bool vCapabilities(Ctx& c, od::value& v, const Path* p, bool& present) {
  od::json_type t;
  Got g = peekType(c, v, p, t);
  if (g == Got::Dead) return false;
  if (g == Got::Null) return true;  // Go: no-op; reported as missing unless a later duplicate sets it
  if (t != od::json_type::array) {
    c.fail(p, "expected an array");
    return skipValue(c, v, p, 0);
  }
  present = true;
  auto& ids = c.res.msg.capability_ids;
  c.n_caps = 0;  // Go resets a slice it decodes into (last duplicate wins)
  return forEachElement(c, v, p, 1, [&](od::value& ev, const Path* ep) {
    od::json_type et;
    if (auto e = ev.type().get(et)) return c.syntax(e, ep);
    if (et != od::json_type::object) {
      c.fail(ep, "expected an object");
      return skipValue(c, ev, ep, 1);
    }
    bool have_id = false;
    // Reuse the strings of an earlier parse (parseInto): no allocation per message.
    size_t slot = c.n_caps++;
    if (slot < ids.size()) ids[slot].clear();
    else ids.emplace_back();
    bool ok = forEachField(c, ev, ep, 2, [&](std::string_view k, od::value& fv, const Path* fp) {
      if (keyIs(k, "capability_id")) {
        std::string_view id;
        Got gg = readString(c, fv, fp, id);
        if (gg == Got::Value) {
          ids[slot].assign(id);
          have_id = true;
        } else if (gg == Got::Bad) {
          have_id = true;  // already reported as "expected a string"
        }
        return gg != Got::Dead;
      }
      if (keyIs(k, "name") || keyIs(k, "version")) return vString(c, fv, fp);
      if (keyIs(k, "step")) {
        return vMapOfObjects(c, fv, fp, 2, [&](std::string_view sk, od::value& sv, const Path* sp) {
          return vStepField(c, sk, sv, sp, 5);
        });
      }
      if (keyIs(k, "agent")) {
        return vMapOfObjects(c, fv, fp, 2, [&](std::string_view ak, od::value& av, const Path* ap) {
          if (keyIs(ak, "type") || keyIs(ak, "name")) return vString(c, av, ap);
          return skipValue(c, av, ap, 5);
        });
      }
      return skipValue(c, fv, fp, 3);
    });
    if (!ok) return false;
    if (!have_id) {
      Path idp{ep, "capability_id"};
      c.fail(&idp, "missing");
    } else if (ids[slot].empty() && !c.failed) {
      Path idp{ep, "capability_id"};
      c.fail(&idp, "must not be empty");
    }
    return true;
  });
}

// ---------------------------------------------------------------------------------------------
// Top level


enum class Mode {
  FirstKeyType,  // fast path: `type` is the first key (Go and Python both write it first)
  TypeScan,      // find the effective (last) `type` and message_id only, no validation
  KnownType,     // full pass with c.type fixed
};

enum class PassResult { Done, Restart };

// What a top-level pass found besides what goes into res.msg.
struct Seen {
  bool type = false;        // a string `type` was read
  bool type_bad = false;    // a non-string, non-null `type`
  bool message_id = false;  // a string message_id is in effect
  bool fin_id = false;
  bool capabilities = false;
  bool body = false;        // command.command / result.result object present
};

// The message_id field (every type): string, null (no-op) or an error.
bool topMessageId(Ctx& c, od::value& v, const Path* p, Seen& seen) {
  std::string_view id;
  Got g = readString(c, v, p, id);
  if (g == Got::Value) {
    c.res.msg.message_id.assign(id);
    c.res.msg.message_id_readable = true;
    seen.message_id = true;
  } else if (g == Got::Bad) {
    c.res.msg.message_id.clear();
    c.res.msg.message_id_readable = false;
    seen.message_id = false;
  }
  return g != Got::Dead;
}

// A top-level field other than type/message_id, dispatched on the message type.
bool topField(Ctx& c, std::string_view k, od::value& v, const Path* p, Seen& seen) {
  Routing& m = c.res.msg;
  switch (c.type) {
    case MsgType::Register:
      if (keyIs(k, "fin_id")) {
        std::string_view s;
        Got g = readString(c, v, p, s);
        if (g == Got::Value) {
          m.fin_id.assign(s);
          seen.fin_id = true;
        } else if (g == Got::Bad) {
          seen.fin_id = true;  // reported already
        }
        return g != Got::Dead;
      }
      if (keyIs(k, "capabilities")) return vCapabilities(c, v, p, seen.capabilities);
      if (keyIs(k, "fin_name") || keyIs(k, "protocol_version")) return vString(c, v, p);
      if (keyIs(k, "security")) {
        return vObject(c, v, p, 0, [&](std::string_view sk, od::value& sv, const Path* sp) {
          if (keyIs(sk, "version") || keyIs(sk, "channel_security")) return vString(c, sv, sp);
          return skipValue(c, sv, sp, 1);
        });
      }
      if (keyIs(k, "meta")) return vMeta(c, v, p);
      break;
    case MsgType::Command:
      if (keyIs(k, "command")) {
        return vObject(
            c, v, p, 0,
            [&](std::string_view ck, od::value& cv, const Path* cp) {
              if (keyIs(ck, "command")) return vString(c, cv, cp);
              if (keyIs(ck, "authentication")) return vAuthentication(c, cv, cp, 1);
              if (keyIs(ck, "context")) return vContext(c, cv, cp, 1);
              if (keyIs(ck, "variables")) return vVariables(c, cv, cp, 1);
              return skipValue(c, cv, cp, 1);
            },
            &seen.body);
      }
      if (keyIs(k, "meta")) return vMeta(c, v, p);
      break;
    case MsgType::Result:
      if (keyIs(k, "result")) {
        return vObject(
            c, v, p, 0,
            [&](std::string_view rk, od::value& rv, const Path* rp) {
              if (keyIs(rk, "state")) return vString(c, rv, rp);
              if (keyIs(rk, "context")) return vContext(c, rv, rp, 1);
              if (keyIs(rk, "variables")) return vVariables(c, rv, rp, 1);
              return skipValue(c, rv, rp, 1);
            },
            &seen.body);
      }
      if (keyIs(k, "meta")) return vMeta(c, v, p);
      break;
    case MsgType::Unregister:
      if (keyIs(k, "capability_id") || keyIs(k, "fin_id")) {
        std::string_view s;
        Got g = readString(c, v, p, s);
        if (g == Got::Value) (keyIs(k, "fin_id") ? m.fin_id : m.capability_id).assign(s);
        return g != Got::Dead;
      }
      if (keyIs(k, "all")) {
        // Go types `all` as a string, the docs and Python as a bool: accept both spellings.
        od::json_type t;
        Got g = peekType(c, v, p, t);
        if (g != Got::Value) return g != Got::Dead;
        if (t == od::json_type::boolean) {
          std::string_view tok = tokenOf(v);
          if (tok == "true") m.all = true;
          else if (tok == "false") m.all = false;
          else return c.syntax(simdjson::T_ATOM_ERROR, p);
          return true;
        }
        if (t == od::json_type::string) {
          std::string_view s;
          if (!stringValue(c, v, p, s)) return false;
          if (s == "true") m.all = true;
          else if (s == "false") m.all = false;
          else c.fail(p, "expected true or false");
          return true;
        }
        c.fail(p, "expected a boolean or \"true\"/\"false\"");
        return skipValue(c, v, p, 0);
      }
      break;
    case MsgType::Pause:
    case MsgType::Resume:
    case MsgType::Stop:
    case MsgType::Progress:
    case MsgType::Status:
      if (keyIs(k, "capability_id")) {
        std::string_view s;
        Got g = readString(c, v, p, s);
        if (g == Got::Value) m.capability_id.assign(s);
        return g != Got::Dead;
      }
      break;
    case MsgType::Ack:
    case MsgType::Nack:
    case MsgType::Unknown:
      break;
  }
  return skipValue(c, v, p, 0);
}

PassResult runPass(Ctx& c, od::document& doc, Mode mode, Seen& seen) {
  od::object root;
  if (auto e = doc.get_object().get(root)) {
    if (e == simdjson::INCORRECT_TYPE) {
      c.dead = c.failed = true;
      c.res.error = "invalid message: not a JSON object";
    } else {
      c.syntax(e, nullptr);
    }
    return PassResult::Done;
  }
  bool first = true;
  for (auto fr : root) {
    if (auto e = fr.error()) return c.syntax(e, nullptr), PassResult::Done;
    od::field& f = fr.value_unsafe();
    std::string_view key;
    if (!fieldKey(c, f, nullptr, key)) return PassResult::Done;
    od::value& v = f.value();
    Path p{nullptr, key};

    if (keyIs(key, "type")) {
      od::json_type t;
      Got g = peekType(c, v, &p, t);
      if (g == Got::Dead) return PassResult::Done;
      if (g == Got::Null) {
        if (mode == Mode::FirstKeyType && first) return PassResult::Restart;
      } else if (t != od::json_type::string) {
        if (mode == Mode::FirstKeyType && first) return PassResult::Restart;
        seen.type_bad = true;
        if (mode != Mode::TypeScan) {
          c.fail(&p, "expected a string");
          if (!skipValue(c, v, &p, 0)) return PassResult::Done;
        }
      } else {
        std::string_view s;
        if (!stringValue(c, v, &p, s)) return PassResult::Done;
        MsgType mt = typeFromString(s);
        if (mode == Mode::FirstKeyType) {
          if (first) {
            c.type = mt;
            c.deep = c.full || mt == MsgType::Register;
          } else if (mt != c.type) {
            return PassResult::Restart;  // a later duplicate wins in Go: validate against it
          }
        } else if (mode == Mode::TypeScan) {
          c.type = mt;
          seen.type_bad = false;
        }
        seen.type = true;
      }
    } else if (mode == Mode::FirstKeyType && first) {
      return PassResult::Restart;
    } else if (keyIs(key, "message_id")) {
      if (!topMessageId(c, v, &p, seen)) return PassResult::Done;
    } else if (mode != Mode::TypeScan) {
      if (!topField(c, key, v, &p, seen)) return PassResult::Done;
    }
    first = false;
  }
  if (first && mode == Mode::FirstKeyType) return PassResult::Restart;  // `{}`: let the scan report it
  // The object is closed: nothing but whitespace may follow it (on-demand would not notice).
  if (mode != Mode::TypeScan) {
    auto loc = doc.current_location();
    if (loc.error() != simdjson::OUT_OF_BOUNDS) {
      c.syntaxText("trailing content after the JSON object", nullptr);
    }
  }
  return PassResult::Done;
}

// Checks that depend on the whole message (required fields).
void finalChecks(Ctx& c, const Seen& seen) {
  const Routing& m = c.res.msg;
  auto missing = [&](std::string_view field) {
    Path p{nullptr, field};
    c.fail(&p, "missing");
  };
  if (!seen.type) {
    if (!seen.type_bad) {
      Path p{nullptr, "type"};
      c.fail(&p, "missing");
    }
    return;
  }
  switch (c.type) {
    case MsgType::Register:
    case MsgType::Command:
    case MsgType::Result:
    case MsgType::Ack:
    case MsgType::Nack:
    case MsgType::Unregister:
      if (!seen.message_id && !c.failed) missing("message_id");
      break;
    default:
      break;
  }
  if (c.type == MsgType::Register) {
    if (!seen.fin_id) {
      missing("fin_id");
    } else if (m.fin_id.empty() && !c.failed) {
      Path p{nullptr, "fin_id"};
      c.fail(&p, "must not be empty");
    }
    if (!seen.capabilities) missing("capabilities");
  }
  if (c.type == MsgType::Command && !seen.body) missing("command");
  if (c.type == MsgType::Result && !seen.body) missing("result");
}

struct PaddedCopy {
  std::unique_ptr<char[]> buf;
  size_t capacity = 0;

  const char* copy(const char* data, size_t len) {
    size_t need = len + simdjson::SIMDJSON_PADDING;
    if (need > capacity) {
      size_t cap = capacity ? capacity : 4096;
      while (cap < need) cap *= 2;
      buf.reset(new char[cap]);
      capacity = cap;
    }
    if (len != 0) std::memcpy(buf.get(), data, len);
    std::memset(buf.get() + len, ' ', simdjson::SIMDJSON_PADDING);
    return buf.get();
  }
};

thread_local od::parser tl_parser;
thread_local PaddedCopy tl_copy;

void parseImpl(ParseResult& out, const char* data, size_t len, size_t capacity, Validation validation) {
  out.ok = false;
  out.error.clear();
  resetRouting(out.msg);

  if (data == nullptr && len != 0) {
    out.msg.capability_ids.clear();
    out.error = "invalid JSON: no data";
    return;
  }
  const char* buf = data;
  // No copy on the fast path: the caller's buffer is readable far enough past the end. One
  // exception: when the byte after the text is '}', simdjson checks the balance of the whole
  // document before iterating, so an unbalanced message would fail before its message_id is read;
  // copying (padding with spaces) keeps the result independent of the caller's spare bytes.
  if (data == nullptr || capacity < len || capacity - len < simdjson::SIMDJSON_PADDING || data[len] == '}') {
    buf = tl_copy.copy(data, len);
  }

  Ctx c{out};
  c.full = validation == Validation::Full;
  od::document doc;
  if (auto e = tl_parser.iterate(buf, len, len + simdjson::SIMDJSON_PADDING).get(doc)) {
    out.msg.capability_ids.clear();
    c.syntax(e, nullptr);
    return;
  }
  Seen seen;
  PassResult r = runPass(c, doc, Mode::FirstKeyType, seen);
  if (r == PassResult::Restart && !c.dead) {
    // Unusual key order or a duplicate `type`: find the effective type first, then validate.
    c.reset();
    seen = Seen{};
    doc.rewind();
    runPass(c, doc, Mode::TypeScan, seen);
    if (!c.dead) {
      MsgType t = c.type;
      bool type_seen = seen.type, type_bad = seen.type_bad;
      c.reset();
      c.type = t;
      c.deep = c.full || t == MsgType::Register;
      seen = Seen{};
      seen.type = type_seen;
      seen.type_bad = type_bad;
      doc.rewind();
      runPass(c, doc, Mode::KnownType, seen);
    }
  }
  out.msg.type = c.type;
  if (!c.dead) finalChecks(c, seen);
  out.ok = !c.failed && !c.dead;
  // After a JSON syntax error the capability list is not trustworthy: report none.
  out.msg.capability_ids.resize(c.dead ? 0 : c.n_caps);
}

// JSON escaping (Go's encoding/json rules, with every control character as \u00XX).
constexpr char kHex[] = "0123456789abcdef";

inline void appendU(std::string& out, unsigned cp) {
  char b[6] = {'\\', 'u', kHex[(cp >> 12) & 15], kHex[(cp >> 8) & 15], kHex[(cp >> 4) & 15], kHex[cp & 15]};
  out.append(b, 6);
}

// Length of a valid UTF-8 sequence starting at s[i], or 0 if invalid.
size_t utf8Len(std::string_view s, size_t i) {
  auto cont = [&](size_t k) { return k < s.size() && (static_cast<unsigned char>(s[k]) & 0xC0) == 0x80; };
  unsigned char c0 = static_cast<unsigned char>(s[i]);
  if (c0 < 0x80) return 1;
  if (c0 >= 0xC2 && c0 <= 0xDF) return cont(i + 1) ? 2 : 0;
  if (c0 >= 0xE0 && c0 <= 0xEF) {
    if (!cont(i + 1) || !cont(i + 2)) return 0;
    unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
    if (c0 == 0xE0 && c1 < 0xA0) return 0;  // overlong
    if (c0 == 0xED && c1 >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c0 >= 0xF0 && c0 <= 0xF4) {
    if (!cont(i + 1) || !cont(i + 2) || !cont(i + 3)) return 0;
    unsigned char c1 = static_cast<unsigned char>(s[i + 1]);
    if (c0 == 0xF0 && c1 < 0x90) return 0;  // overlong
    if (c0 == 0xF4 && c1 >= 0x90) return 0;  // > U+10FFFF
    return 4;
  }
  return 0;
}

}  // namespace

std::string_view toString(MsgType t) noexcept {
  switch (t) {
    case MsgType::Unknown: return "unknown";
    case MsgType::Register: return "register";
    case MsgType::Ack: return "ack";
    case MsgType::Nack: return "nack";
    case MsgType::Command: return "command";
    case MsgType::Result: return "result";
    case MsgType::Unregister: return "unregister";
    case MsgType::Pause: return "pause";
    case MsgType::Resume: return "resume";
    case MsgType::Stop: return "stop";
    case MsgType::Progress: return "progress";
    case MsgType::Status: return "status";
  }
  return "unknown";
}

void parseInto(ParseResult& out, const char* data, size_t len, size_t capacity, Validation validation) noexcept {
  try {
    parseImpl(out, data, len, capacity, validation);
  } catch (const std::bad_alloc&) {
    out.ok = false;
    out.error = "out of memory";
  } catch (...) {
    out.ok = false;
    out.error = "internal error";
  }
}

ParseResult parse(const char* data, size_t len, size_t capacity) noexcept {
  ParseResult r;
  parseInto(r, data, len, capacity);
  return r;
}

std::string validateId(std::string_view id) {
  if (id.empty()) return "empty id";
  if (id.size() > 1024) return "id longer than 1024 bytes";
  if (id == "soarca") return "reserved id \"soarca\"";
  if (id[0] == '$') return "id starts with '$' (reserved for broker system topics such as $SYS)";
  for (size_t i = 0; i < id.size();) {
    unsigned char ch = static_cast<unsigned char>(id[i]);
    if (ch == '+' || ch == '#') return "id contains an MQTT wildcard ('+' or '#')";
    if (ch < 0x20 || ch == 0x7F) return "id contains a NUL or control character";
    size_t n = utf8Len(id, i);
    if (n == 0) return "id is not valid UTF-8";
    if (n == 2 && ch == 0xC2 && static_cast<unsigned char>(id[i + 1]) < 0xA0)
      return "id contains a NUL or control character";  // C1 controls U+0080..U+009F
    i += n;
  }
  return {};
}

void appendJsonEscaped(std::string& out, std::string_view s) {
  size_t run = 0;  // start of the pending run of bytes copied as they are
  size_t i = 0;
  auto flush = [&](size_t end) {
    if (end > run) out.append(s.data() + run, end - run);
  };
  while (i < s.size()) {
    unsigned char ch = static_cast<unsigned char>(s[i]);
    if (ch >= 0x20 && ch < 0x80 && ch != '"' && ch != '\\' && ch != '<' && ch != '>' && ch != '&') {
      ++i;
      continue;
    }
    flush(i);
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
      run = ++i;
      continue;
    }
    if (ch < 0x80) {  // control characters, < > &
      appendU(out, ch);
      run = ++i;
      continue;
    }
    size_t n = utf8Len(s, i);
    if (n == 0) {  // invalid UTF-8: Go writes U+FFFD
      appendU(out, 0xFFFD);
      run = ++i;
      continue;
    }
    if (n == 3 && ch == 0xE2 && static_cast<unsigned char>(s[i + 1]) == 0x80 &&
        (static_cast<unsigned char>(s[i + 2]) == 0xA8 || static_cast<unsigned char>(s[i + 2]) == 0xA9)) {
      appendU(out, static_cast<unsigned char>(s[i + 2]) == 0xA8 ? 0x2028 : 0x2029);  // as Go does
      run = i += 3;
      continue;
    }
    run = i;  // keep the valid sequence in the next run
    i += n;
  }
  flush(i);
}

std::string makeAck(std::string_view message_id) {
  std::string out;
  out.reserve(32 + message_id.size());
  out += R"({"type":"ack","message_id":")";
  appendJsonEscaped(out, message_id);
  out += "\"}";
  return out;
}

std::string makeNack(std::string_view message_id) {
  std::string out;
  out.reserve(33 + message_id.size());
  out += R"({"type":"nack","message_id":")";
  appendJsonEscaped(out, message_id);
  out += "\"}";
  return out;
}

}  // namespace fingate::fin

// ---- Python-fin compatibility repair (fin_compat.hpp) ------------------------------------
// simdjson on-demand locates the byte ranges to change; the output is the input with only
// those ranges edited. Kept in this translation unit so simdjson is compiled once.

namespace fingate::fin {

namespace {

using namespace simdjson;  // NOLINT

struct Edit {
  size_t begin, end;    // replaced range [begin, end) of the original
  std::string text;     // replacement
};

// The byte offset of p inside base.
size_t offsetIn(const char* base, const char* p) { return static_cast<size_t>(p - base); }

bool isWs(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// Which of the four optional fields a variable object has.
struct VarFields {
  bool description = false, value = false, constant = false, external = false;
  size_t count = 0;
};

bool scanVariable(std::string_view raw, VarFields& vf) {
  ondemand::parser p;
  padded_string ps(raw);
  ondemand::document d;
  if (p.iterate(ps).get(d)) return false;
  ondemand::object o;
  if (d.get_object().get(o)) return false;
  for (auto field : o) {
    std::string_view k;
    if (field.unescaped_key().get(k)) return false;
    vf.count++;
    if (k == "description") vf.description = true;
    else if (k == "value") vf.value = true;
    else if (k == "constant") vf.constant = true;
    else if (k == "external") vf.external = true;
  }
  return true;
}

// Type of an authentication object: "" when missing or empty; sets ok=false on bad JSON.
bool authTypeEmpty(std::string_view raw) {
  ondemand::parser p;
  padded_string ps(raw);
  ondemand::document d;
  if (p.iterate(ps).get(d)) return false;
  ondemand::object o;
  if (d.get_object().get(o)) return false;
  ondemand::value t;
  auto err = o.find_field_unordered("type").get(t);
  if (err == NO_SUCH_FIELD) return true;
  if (err) return false;
  std::string_view s;
  if (t.get_string().get(s)) return false;
  return s.empty();
}

}  // namespace

bool repairCommandForPythonFin(std::string_view payload, std::string& out, RepairStats& stats) {
  ondemand::parser parser;
  padded_string ps(payload);
  const char* base = ps.data();
  ondemand::document doc;
  if (parser.iterate(ps).get(doc)) return false;
  ondemand::object root;
  if (doc.get_object().get(root)) return false;
  std::vector<Edit> edits;
  RepairStats local;
  bool is_command = false;
  for (auto field : root) {
    std::string_view key;
    if (field.unescaped_key().get(key)) return false;
    if (key == "type") {
      std::string_view t;
      if (field.value().get_string().get(t) == SUCCESS) is_command = t == "command";
      continue;
    }
    if (key != "command") continue;
    ondemand::object cmd;
    if (field.value().get_object().get(cmd)) return false;
    for (auto f : cmd) {
      ondemand::raw_json_string rk;
      if (f.key().get(rk)) return false;
      const char* key_quote = rk.raw() - 1;
      std::string_view k;
      if (f.unescaped_key().get(k)) return false;
      if (k == "authentication") {
        ondemand::object a;
        if (f.value().get_object().get(a)) continue;  // not an object: leave it to the fin
        std::string_view raw;
        if (a.raw_json().get(raw)) return false;
        if (!authTypeEmpty(raw)) continue;
        // Remove `"authentication":{...}` with one adjoining comma.
        size_t b = offsetIn(base, key_quote);
        size_t e = offsetIn(base, raw.data()) + raw.size();
        size_t pb = b;
        while (pb > 0 && isWs(payload[pb - 1])) --pb;
        if (pb > 0 && payload[pb - 1] == ',') {
          b = pb - 1;
        } else {
          size_t ne = e;
          while (ne < payload.size() && isWs(payload[ne])) ++ne;
          if (ne < payload.size() && payload[ne] == ',') e = ne + 1;
        }
        edits.push_back({b, e, ""});
        local.auth_removed++;
      } else if (k == "variables") {
        ondemand::object vars;
        if (f.value().get_object().get(vars)) continue;
        for (auto vfield : vars) {
          ondemand::object vo;
          if (vfield.value().get_object().get(vo)) continue;
          std::string_view raw;
          if (vo.raw_json().get(raw)) return false;
          VarFields vf;
          if (!scanVariable(raw, vf)) return false;
          std::string add;
          auto put = [&](const char* text) {
            if (vf.count++ > 0) add += ',';
            add += text;
          };
          if (!vf.description) put("\"description\":\"\"");
          if (!vf.value) put("\"value\":\"\"");
          if (!vf.constant) put("\"constant\":false");
          if (!vf.external) put("\"external\":false");
          if (add.empty()) continue;
          // Insert before the variable's closing brace (raw ends with '}', trailing spaces trimmed by simdjson).
          size_t close = offsetIn(base, raw.data()) + raw.size();
          while (close > 0 && payload[close - 1] != '}') --close;
          edits.push_back({close - 1, close - 1, add});
          local.variables_completed++;
        }
      }
    }
  }
  if (!is_command || edits.empty()) return false;
  std::sort(edits.begin(), edits.end(), [](const Edit& a, const Edit& b) { return a.begin < b.begin; });
  std::string r;
  r.reserve(payload.size() + 64 * edits.size());
  size_t pos = 0;
  for (auto& e : edits) {
    r.append(payload.substr(pos, e.begin - pos));
    r += e.text;
    pos = e.end;
  }
  r.append(payload.substr(pos));
  out = std::move(r);
  stats.auth_removed += local.auth_removed;
  stats.variables_completed += local.variables_completed;
  return true;
}

}  // namespace fingate::fin

// ---- a JSON tree for the tools (fingate/json.hpp) -----------------------------------------

#include <fingate/json.hpp>

namespace fingate {

const Json* Json::get(std::string_view key) const {
  if (type != Type::Object) return nullptr;
  for (size_t i = 0; i < keys.size(); ++i)
    if (keys[i] == key) return &members[i];
  return nullptr;
}
std::string Json::str(std::string_view key, std::string def) const {
  auto v = get(key);
  return v && v->type == Type::String ? v->string : def;
}
double Json::num(std::string_view key, double def) const {
  auto v = get(key);
  return v && v->type == Type::Number ? v->number : def;
}
bool Json::flag(std::string_view key, bool def) const {
  auto v = get(key);
  return v && v->type == Type::Bool ? v->boolean : def;
}

namespace {
namespace dom = simdjson::dom;
bool toTree(dom::element e, Json& out, int depth, std::string& error) {
  if (depth > 64) {
    error = "nested deeper than 64 levels";
    return false;
  }
  switch (e.type()) {
    case dom::element_type::ARRAY:
      out.type = Json::Type::Array;
      for (dom::element c : dom::array(e)) {
        out.array.emplace_back();
        if (!toTree(c, out.array.back(), depth + 1, error)) return false;
      }
      return true;
    case dom::element_type::OBJECT:
      out.type = Json::Type::Object;
      for (dom::key_value_pair kv : dom::object(e)) {
        out.keys.emplace_back(kv.key);
        out.members.emplace_back();
        if (!toTree(kv.value, out.members.back(), depth + 1, error)) return false;
      }
      return true;
    case dom::element_type::STRING:
      out.type = Json::Type::String;
      out.string = std::string(std::string_view(e));
      return true;
    case dom::element_type::INT64:
      out.type = Json::Type::Number;
      out.number = static_cast<double>(int64_t(e));
      return true;
    case dom::element_type::UINT64:
      out.type = Json::Type::Number;
      out.number = static_cast<double>(uint64_t(e));
      return true;
    case dom::element_type::DOUBLE:
      out.type = Json::Type::Number;
      out.number = double(e);
      return true;
    case dom::element_type::BOOL:
      out.type = Json::Type::Bool;
      out.boolean = bool(e);
      return true;
    case dom::element_type::NULL_VALUE:
      out.type = Json::Type::Null;
      return true;
  }
  return true;
}
}  // namespace

std::optional<Json> parseJson(std::string_view text, std::string& error) {
  dom::parser parser;
  dom::element root;
  auto err = parser.parse(text.data(), text.size()).get(root);
  if (err) {
    error = simdjson::error_message(err);
    return std::nullopt;
  }
  Json out;
  if (!toTree(root, out, 0, error)) return std::nullopt;
  return out;
}

}  // namespace fingate
