// Fin codec: routing fields of every captured vector, validation as SOARCA's Go decoder and the
// Python fin library require it, malformed input (every truncation of every vector, wrong types,
// trailing garbage), id checks and the ack/nack writer.
#include <fingate/fin_codec.hpp>

#include "test_support.hpp"

#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <random>
#include <string>
#include <thread>
#include <vector>

namespace fin = fingate::fin;
using fin::MsgType;
using fin::ParseResult;
using fin::Validation;

namespace {

// Reads "key":"value" straight from the bytes (the vectors contain no escapes), independently of
// the codec; nullopt when the key is absent or its value is not a string.
std::optional<std::string> rawField(const std::string& bytes, const std::string& key, size_t from = 0) {
  std::string needle = "\"" + key + "\":\"";
  size_t at = bytes.find(needle, from);
  if (at == std::string::npos) return std::nullopt;
  size_t start = at + needle.size();
  size_t end = bytes.find('"', start);
  return bytes.substr(start, end - start);
}

std::vector<std::string> rawAll(const std::string& bytes, const std::string& key) {
  std::vector<std::string> out;
  std::string needle = "\"" + key + "\":\"";
  for (size_t at = bytes.find(needle); at != std::string::npos; at = bytes.find(needle, at + 1))
    out.push_back(*rawField(bytes, key, at));
  return out;
}

// Parses `len` bytes of `full` from a buffer that is readable kPadding bytes further: the bytes
// after `len` are the rest of `full` (the real continuation of a truncated message), then `fill`.
// This is the no-copy path, with the most misleading padding we can think of.
ParseResult parseInPlace(const std::string& full, size_t len, char fill, Validation v = Validation::Routing) {
  std::string buf = full;
  buf.append(fin::kPadding, fill);
  ParseResult r;
  fin::parseInto(r, buf.data(), len, buf.size(), v);
  return r;
}

ParseResult parseInPlace(const std::string& s, char fill = '}') { return parseInPlace(s, s.size(), fill); }

ParseResult parseFull(const std::string& s) {
  ParseResult r;
  fin::parseInto(r, s.data(), s.size(), s.size(), Validation::Full);
  return r;
}

// Expects a failure whose error contains `what`, with the default validation (then also with
// Validation::Full, which checks a superset), copied and in place.
void expectError(const std::string& json, const std::string& what) {
  SCOPED_TRACE(json);
  ParseResult r = fin::parse(json);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find(what), std::string::npos) << "error was: " << r.error;
  ParseResult p = parseInPlace(json);
  EXPECT_FALSE(p.ok);
  EXPECT_EQ(p.error, r.error);
  ParseResult f = parseFull(json);
  EXPECT_FALSE(f.ok);
  EXPECT_NE(f.error.find(what), std::string::npos) << "Full error was: " << f.error;
}

// Expects a failure naming `what` with Validation::Full (the default mode may not look there).
void expectFullError(const std::string& json, const std::string& what) {
  SCOPED_TRACE(json);
  ParseResult f = parseFull(json);
  EXPECT_FALSE(f.ok);
  EXPECT_NE(f.error.find(what), std::string::npos) << "Full error was: " << f.error;
  EXPECT_FALSE(parseInPlace(json, json.size(), '}', Validation::Full).ok);
  EXPECT_FALSE(parseInPlace(json, json.size(), ' ', Validation::Full).ok);
}

// Expects success in both modes, copied and in place.
ParseResult expectOk(const std::string& json) {
  SCOPED_TRACE(json);
  ParseResult r = fin::parse(json);
  EXPECT_TRUE(r.ok) << r.error;
  EXPECT_TRUE(r.error.empty());
  ParseResult p = parseInPlace(json);
  EXPECT_TRUE(p.ok) << p.error;
  ParseResult f = parseFull(json);
  EXPECT_TRUE(f.ok) << "Full: " << f.error;
  return r;
}

// A small strict JSON (RFC 8259) validator, independent of the codec, used as an oracle for the
// mutation test. Lenient only where the codec may be stricter (lone surrogate escapes).
class JsonOracle {
 public:
  static bool valid(std::string_view s) {
    JsonOracle o(s);
    o.ws();
    if (!o.value(0)) return false;
    o.ws();
    return o.i_ == s.size();
  }

 private:
  explicit JsonOracle(std::string_view s) : s_(s) {}
  bool eof() const { return i_ >= s_.size(); }
  char peek() const { return eof() ? '\0' : s_[i_]; }
  void ws() {
    while (!eof() && (s_[i_] == ' ' || s_[i_] == '\t' || s_[i_] == '\n' || s_[i_] == '\r')) ++i_;
  }
  bool lit(std::string_view w) {
    if (s_.substr(i_, w.size()) != w) return false;
    i_ += w.size();
    return true;
  }
  bool digits() {
    size_t start = i_;
    while (!eof() && s_[i_] >= '0' && s_[i_] <= '9') ++i_;
    return i_ > start;
  }
  bool number() {
    if (peek() == '-') ++i_;
    if (peek() == '0') {
      ++i_;
    } else if (peek() >= '1' && peek() <= '9') {
      digits();
    } else {
      return false;
    }
    if (peek() == '.') {
      ++i_;
      if (!digits()) return false;
    }
    if (peek() == 'e' || peek() == 'E') {
      ++i_;
      if (peek() == '+' || peek() == '-') ++i_;
      if (!digits()) return false;
    }
    return true;
  }
  bool string() {
    if (peek() != '"') return false;
    ++i_;
    while (!eof()) {
      unsigned char c = static_cast<unsigned char>(s_[i_]);
      if (c == '"') {
        ++i_;
        return true;
      }
      if (c < 0x20) return false;
      if (c == '\\') {
        ++i_;
        char e = peek();
        if (e == 'u') {
          ++i_;
          for (int k = 0; k < 4; ++k, ++i_)
            if (eof() || !std::isxdigit(static_cast<unsigned char>(s_[i_]))) return false;
        } else if (std::string_view("\"\\/bfnrt").find(e) != std::string_view::npos && e != '\0') {
          ++i_;
        } else {
          return false;
        }
        continue;
      }
      if (c < 0x80) {
        ++i_;
        continue;
      }
      int n = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 0;
      if (n == 0 || c > 0xF4 || i_ + n > s_.size()) return false;
      unsigned char c1 = static_cast<unsigned char>(s_[i_ + 1]);
      for (int k = 1; k < n; ++k)
        if ((static_cast<unsigned char>(s_[i_ + k]) & 0xC0) != 0x80) return false;
      if ((c == 0xE0 && c1 < 0xA0) || (c == 0xED && c1 >= 0xA0) || (c == 0xF0 && c1 < 0x90) ||
          (c == 0xF4 && c1 >= 0x90))
        return false;
      i_ += n;
    }
    return false;
  }
  bool value(int depth) {
    if (depth > 200) return false;
    char c = peek();
    if (c == '{') {
      ++i_;
      ws();
      if (peek() == '}') return ++i_, true;
      for (;;) {
        ws();
        if (!string()) return false;
        ws();
        if (peek() != ':') return false;
        ++i_;
        ws();
        if (!value(depth + 1)) return false;
        ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        if (peek() == '}') return ++i_, true;
        return false;
      }
    }
    if (c == '[') {
      ++i_;
      ws();
      if (peek() == ']') return ++i_, true;
      for (;;) {
        ws();
        if (!value(depth + 1)) return false;
        ws();
        if (peek() == ',') {
          ++i_;
          continue;
        }
        if (peek() == ']') return ++i_, true;
        return false;
      }
    }
    if (c == '"') return string();
    if (c == 't') return lit("true");
    if (c == 'f') return lit("false");
    if (c == 'n') return lit("null");
    return number();
  }
  std::string_view s_;
  size_t i_ = 0;
};

// What the default mode promises for every message it accepts, whatever it did not read: an
// object, strings closed and valid UTF-8 without raw control characters, brackets balanced by
// count and never closing more than is open, nothing after the root object.
bool structurallySound(std::string_view s) {
  size_t i = 0;
  auto ws = [&] {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\n' || s[i] == '\r')) ++i;
  };
  ws();
  if (i >= s.size() || s[i] != '{') return false;
  long depth = 0;
  for (; i < s.size(); ++i) {
    char c = s[i];
    // Like simdjson's stage 1, an odd run of backslashes escapes a following quote even outside
    // strings (a stray backslash there is a token error the default mode does not promise to find).
    if (c == '\\') {
      size_t run = 0;
      while (i < s.size() && s[i] == '\\') ++i, ++run;
      if (i < s.size() && s[i] == '"' && run % 2 == 1) continue;  // escaped quote: not a string
      --i;
      continue;
    }
    if (c == '"') {
      size_t start = i++;
      while (i < s.size() && s[i] != '"') i += (s[i] == '\\') ? 2 : 1;
      if (i >= s.size()) return false;
      std::string str(s.substr(start, i - start + 1));
      // Reuse the oracle for the string itself, with escapes neutralised (not promised here).
      for (size_t k = 1; k + 1 < str.size(); ++k)
        if (str[k] == '\\') str[k] = str[k + 1] = 'x', ++k;
      if (!JsonOracle::valid(str)) return false;
      continue;
    }
    if (c == '{' || c == '[') ++depth;
    if (c == '}' || c == ']') {
      if (--depth < 0) return false;
      if (depth == 0) {
        ++i;
        ws();
        return i == s.size();
      }
    }
  }
  return false;
}

const std::string kReg = R"({"type":"register","message_id":"m1","fin_id":"fin-1",)";
const std::string kCap = R"({"capability_id":"cap-1","name":"n")";

}  // namespace

// ---------------------------------------------------------------------------------------------
// The captured vectors

TEST(FinCodecVectors, EveryVectorYieldsItsTypeAndIds) {
  auto vectors = fingate::test::loadVectors();
  ASSERT_GE(vectors.size(), 15u);
  for (const auto& v : vectors) {
    SCOPED_TRACE(v.file);
    for (int mode = 0; mode < 4; ++mode) {
      ParseResult r = mode == 0   ? fin::parse(v.bytes)
                      : mode == 3 ? parseFull(v.bytes)
                                  : parseInPlace(v.bytes, mode == 1 ? '}' : ' ');
      ASSERT_TRUE(r.ok) << r.error;
      EXPECT_EQ(fin::toString(r.msg.type), v.type);
      EXPECT_NE(r.msg.type, MsgType::Unknown);
      auto mid = rawField(v.bytes, "message_id");
      ASSERT_TRUE(mid.has_value());
      EXPECT_EQ(r.msg.message_id, *mid);
      EXPECT_TRUE(r.msg.message_id_readable);
      switch (r.msg.type) {
        case MsgType::Register:
          EXPECT_EQ(r.msg.fin_id, *rawField(v.bytes, "fin_id"));
          EXPECT_EQ(r.msg.capability_ids, rawAll(v.bytes, "capability_id"));
          EXPECT_EQ(r.msg.capability_ids.size(), 1u);
          break;
        case MsgType::Unregister:
          EXPECT_EQ(r.msg.capability_id, *rawField(v.bytes, "capability_id"));
          EXPECT_EQ(r.msg.fin_id, *rawField(v.bytes, "fin_id"));
          EXPECT_EQ(r.msg.all, v.bytes.find("\"all\":true") != std::string::npos);
          break;
        case MsgType::Pause:
        case MsgType::Resume:
        case MsgType::Stop:
        case MsgType::Progress:
        case MsgType::Status:
          EXPECT_EQ(r.msg.capability_id, *rawField(v.bytes, "capability_id"));
          EXPECT_FALSE(r.msg.capability_id.empty());
          break;
        default:
          EXPECT_TRUE(r.msg.fin_id.empty());
          EXPECT_TRUE(r.msg.capability_ids.empty());
          EXPECT_TRUE(r.msg.capability_id.empty());
          break;
      }
    }
  }
}

TEST(FinCodecVectors, UnregisterAllFlags) {
  ParseResult one = fin::parse(fingate::test::vectorBytes("10-a-unregister.json"));
  ASSERT_TRUE(one.ok) << one.error;
  EXPECT_FALSE(one.msg.all);
  EXPECT_EQ(one.msg.capability_id, "mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d");
  ParseResult all = fin::parse(fingate::test::vectorBytes("11-a-unregister-all.json"));
  ASSERT_TRUE(all.ok) << all.error;
  EXPECT_TRUE(all.msg.all);
  EXPECT_EQ(all.msg.capability_id, "");
}

TEST(FinCodecVectors, AcksAndNacksNameTheAcknowledgedMessage) {
  ParseResult ack = fin::parse(fingate::test::vectorBytes("02-a-ack.json"));
  ASSERT_TRUE(ack.ok);
  EXPECT_EQ(ack.msg.type, MsgType::Ack);
  EXPECT_EQ(ack.msg.message_id, "abec7356-e6f0-11f1-acf4-02fc00000001");  // the register's id
  ParseResult reg = fin::parse(fingate::test::vectorBytes("01-a-register.json"));
  EXPECT_EQ(reg.msg.message_id, ack.msg.message_id);
  ParseResult nack = fin::parse(fingate::test::vectorBytes("24-b-reregister-nack.json"));
  ASSERT_TRUE(nack.ok);
  EXPECT_EQ(nack.msg.type, MsgType::Nack);
  EXPECT_EQ(nack.msg.message_id, "f17db308-e6f0-11f1-8086-02fc00000001");
}

// Every proper prefix of every vector is invalid JSON: all must fail, none may crash, on the copy
// path and in place (where the bytes after the cut are the real rest of the message).
TEST(FinCodecMalformed, EveryTruncationOfEveryVectorFails) {
  size_t cuts = 0;
  for (const auto& v : fingate::test::loadVectors()) {
    for (size_t cut = 0; cut < v.bytes.size(); ++cut) {
      SCOPED_TRACE(v.file + " cut at " + std::to_string(cut));
      std::string prefix = v.bytes.substr(0, cut);
      ParseResult a = fin::parse(prefix);
      ASSERT_FALSE(a.ok) << prefix;
      EXPECT_FALSE(a.error.empty());
      ParseResult b = parseInPlace(v.bytes, cut, '}');
      ASSERT_FALSE(b.ok) << prefix;
      ParseResult c = parseInPlace(v.bytes, cut, ',');
      ASSERT_FALSE(c.ok) << prefix;
      ParseResult d = parseInPlace(v.bytes, cut, '"', Validation::Full);
      ASSERT_FALSE(d.ok) << prefix;
      ++cuts;
    }
  }
  EXPECT_GT(cuts, 5000u);
}

// Cutting inside a nested object leaves a document whose last byte may be '}' (e.g. after
// "security":{...}): the classic on-demand pitfall. Closing it with '}' must then be accepted.
TEST(FinCodecMalformed, TruncatedAfterInnerObjectIsDetected) {
  std::string reg = fingate::test::vectorBytes("01-a-register.json");
  size_t at = reg.find("\"plaintext\"}") + std::string("\"plaintext\"}").size();
  std::string cut = reg.substr(0, at);
  ASSERT_EQ(cut.back(), '}');
  ParseResult r = fin::parse(cut);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("invalid JSON"), std::string::npos) << r.error;
  EXPECT_FALSE(parseInPlace(reg, at, '}').ok);
  EXPECT_FALSE(parseInPlace(reg, at, ' ').ok);
  // message_id was read before the error, so the router can still nack it.
  EXPECT_TRUE(r.msg.message_id_readable);
  EXPECT_EQ(r.msg.message_id, "abec7356-e6f0-11f1-acf4-02fc00000001");
}

TEST(FinCodecMalformed, NotJsonOrNotAnObject) {
  for (const std::string& s : std::vector<std::string>{"", " ", "\n\t ", "hello", "{", "}", "[]", "[{\"type\":\"ack\"}]", "null", "123",
                        "\"type\"", "true", "{\"type\":\"ack\",\"message_id\":\"m\"", "{'type':'ack'}",
                        "{\"type\":\"ack\" \"message_id\":\"m\"}", "{type:\"ack\"}", "\xff\xfe{}"}) {
    SCOPED_TRACE(s);
    ParseResult r = fin::parse(s);
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(r.error.empty());
    EXPECT_FALSE(r.msg.message_id_readable);
    EXPECT_FALSE(parseInPlace(s).ok);
  }
  EXPECT_NE(fin::parse("[]").error.find("not a JSON object"), std::string::npos);
}

TEST(FinCodecMalformed, NullPointerIsAnErrorNotACrash) {
  EXPECT_FALSE(fin::parse(nullptr, 0, 0).ok);
  EXPECT_FALSE(fin::parse(nullptr, 10, 10).ok);
}

TEST(FinCodecMalformed, TrailingGarbage) {
  const std::string ack = R"({"type":"ack","message_id":"m"})";
  expectOk(ack);
  expectOk(ack + " \n\t\r");
  for (const std::string& tail : std::vector<std::string>{"x", "}", "{}", ",", "]", "\"\"", "1", "null", " {\"a\":1}", "\x01"}) {
    std::string s = ack + tail;
    SCOPED_TRACE(s);
    ParseResult r = fin::parse(s);
    EXPECT_FALSE(r.ok);
    EXPECT_FALSE(parseInPlace(s).ok);
  }
  expectError(ack + "{}", "trailing content");
}

// Token errors anywhere are errors for a register (it changes the gateway's bindings) and, with
// Validation::Full, for every message: SOARCA's decoder rejects them.
TEST(FinCodecMalformed, InvalidJsonInUnreadParts) {
  const std::string reg = R"({"type":"register","message_id":"m","fin_id":"f","capabilities":[],"x":)";
  const std::string ack = R"({"type":"ack","message_id":"m","x":)";
  for (const std::string& bad : std::vector<std::string>{
           "01", "-", "1.", ".5", "1e", "+1", "0x10", "tru", "nul", "falsey", "True", "NaN", "[1}", "[1,]", "[,1]",
           "{\"a\":1,}", "{\"a\" 1}", "{\"a\"}", "{1:2}", "\"\\x\"", "\"\\u12\"", "\"\\ud800x\"", "[[[]]",
           "{\"a\":{\"b\":[1,2}}}", "'s'", "1 2", "\"a\" \"b\"", "[\"\\q\"]", "{\"k\\z\":1}"}) {
    std::string r = reg + bad + "}";
    SCOPED_TRACE(r);
    ParseResult pr = fin::parse(r);
    EXPECT_FALSE(pr.ok);
    EXPECT_NE(pr.error.find("invalid JSON"), std::string::npos) << pr.error;
    EXPECT_TRUE(pr.msg.message_id_readable);  // read before the error: the router can nack it
    EXPECT_FALSE(parseInPlace(r).ok);
    expectFullError(ack + bad + "}", "invalid JSON");
  }
  // Valid values of every kind in the same places are fine.
  for (const std::string& good : std::vector<std::string>{
           "0", "-0", "1.5e-3", "1E+9", "123456789012345678901234567890", "true", "false", "null", "\"\"",
           "\"\\u0041\\n\\\"\"", "[]", "{}", "[1,[2,{\"a\":[null]}]]", "{\"\\u0041\":{\"b\":\"c\"}}",
           "\"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\"", " 1 "}) {
    expectOk(reg + good + "}");
    expectOk(ack + good + "}");
  }
}

// The default mode still checks the structure of what it does not read, for every type: stage 1
// (UTF-8, closed strings, raw control characters), and brackets balanced by count so nothing is
// truncated or left over. Separators are checked at the levels the codec iterates (the root,
// command/result objects); inside values it skips they are not (Validation::Full checks them).
TEST(FinCodecMalformed, DefaultModeChecksStructureOfUnreadParts) {
  struct Frame {
    std::string head, close;
    bool iterated;  // the codec iterates the object the bad value sits in
  };
  const std::vector<Frame> frames = {
      {R"({"type":"ack","message_id":"m","x":)", "}", true},
      {R"({"type":"command","message_id":"m","command":{},"x":)", "}", true},
      {R"({"type":"command","message_id":"m","command":{"x":)", "}}", true},
      {R"({"type":"command","message_id":"m","command":{"variables":{"v":{"x":)", "}}}}", false},
      {R"({"type":"result","message_id":"m","result":{"variables":{"r":{"x":)", "}}}}", false},
      {R"({"type":"pause","capability_id":"c","x":)", "}", true}};
  const std::vector<std::string> bad_anywhere = {"[[[]]", "[", "{\"a\":[1]", "\"open", "\"a\x01\"", "\"\xff\"",
                                                 "\"\xc3\"", "[]]", "[1]]", "{}}", "1}", "]", "}", "{", "[[]"};
  const std::vector<std::string> bad_separators = {",", ":1", "\"a\":1", "1,", "1 2"};
  for (const auto& f : frames) {
    expectOk(f.head + "[1,{\"a\":\"b\"}]" + f.close);
    for (const std::string& bad : bad_anywhere) {
      std::string s = f.head + bad + f.close;
      SCOPED_TRACE(s);
      EXPECT_FALSE(fin::parse(s).ok);
      EXPECT_FALSE(parseInPlace(s, '}').ok);
      EXPECT_FALSE(parseInPlace(s, ' ').ok);
      EXPECT_FALSE(parseFull(s).ok);
    }
    for (const std::string& bad : bad_separators) {
      std::string s = f.head + bad + f.close;
      SCOPED_TRACE(s);
      if (f.iterated) {
        EXPECT_FALSE(fin::parse(s).ok);
      }
      EXPECT_FALSE(parseFull(s).ok);
    }
  }
}

// Random mutations of every vector (seeded, so reproducible): no crash in either mode, and
// Validation::Full never accepts what the oracle calls invalid JSON; whatever Full accepts the
// default mode accepts too.
TEST(FinCodecMalformed, RandomMutationsAgainstAnIndependentValidator) {
  std::mt19937 rng(20261123);
  static const char kAlphabet[] = "{}[]\",:\\ 0123456789-+.eEtrufalsn\x01\x7f\xc3\xa9\xff\n";
  const std::string alphabet(kAlphabet, sizeof(kAlphabet) - 1);
  size_t full_ok = 0, oracle_bad = 0;
  for (const auto& v : fingate::test::loadVectors()) {
    for (int n = 0; n < 1000; ++n) {
      std::string m = v.bytes;
      int edits = 1 + int(rng() % 3);
      for (int e = 0; e < edits && !m.empty(); ++e) {
        size_t at = rng() % m.size();
        char ch = alphabet[rng() % alphabet.size()];
        switch (rng() % 4) {
          case 0: m[at] = ch; break;
          case 1: m.erase(at, 1); break;
          case 2: m.insert(m.begin() + long(at), ch); break;
          default: m.insert(at, m.substr(at, rng() % 8)); break;
        }
      }
      SCOPED_TRACE(m);
      bool oracle = JsonOracle::valid(m);
      ParseResult full = parseFull(m);
      ParseResult routing = fin::parse(m);
      ParseResult inplace = parseInPlace(m, m.size(), "}] ,\"["[n % 6]);
      if (!oracle) {
        ++oracle_bad;
        EXPECT_FALSE(full.ok) << "Full accepted invalid JSON";
      }
      if (full.ok) {
        ++full_ok;
        EXPECT_TRUE(routing.ok) << routing.error;
        EXPECT_EQ(routing.msg.message_id, full.msg.message_id);
        EXPECT_EQ(routing.msg.capability_ids, full.msg.capability_ids);
      }
      if (routing.ok) {
        EXPECT_TRUE(structurallySound(m)) << "default mode accepted a structurally broken message";
      }
      EXPECT_EQ(inplace.ok, routing.ok);
      EXPECT_EQ(inplace.msg.message_id, routing.msg.message_id);
    }
  }
  // The mutations exercise both sides.
  EXPECT_GT(full_ok, 100u);
  EXPECT_GT(oracle_bad, 1000u);
}

TEST(FinCodecMalformed, InvalidUtf8AndRawControlCharacters) {
  expectError("{\"type\":\"ack\",\"message_id\":\"m\xff\"}", "invalid JSON");
  expectError("{\"type\":\"ack\",\"message_id\":\"m\xc3\"}", "invalid JSON");
  expectError("{\"type\":\"ack\",\"message_id\":\"a\nb\"}", "invalid JSON");
  expectError(std::string("{\"type\":\"ack\",\"message_id\":\"a") + '\0' + "b\"}", "invalid JSON");
}

TEST(FinCodecMalformed, DeepNestingIsBoundedNotACrash) {
  const std::string nest = std::string(5000, '[') + std::string(5000, ']');
  std::string reg = R"({"type":"register","message_id":"m","fin_id":"f","capabilities":[],"x":)" + nest + "}";
  ParseResult r = fin::parse(reg);
  EXPECT_FALSE(r.ok);
  EXPECT_NE(r.error.find("nested too deeply"), std::string::npos) << r.error;
  EXPECT_TRUE(r.msg.message_id_readable);
  std::string ack = R"({"type":"ack","message_id":"m","x":)" + nest + "}";
  expectFullError(ack, "nested too deeply");
  // Unread parts are skipped by a loop, not by recursion: no depth limit needed (Go allows 10000).
  EXPECT_TRUE(fin::parse(ack).ok);
  std::string fine = R"({"type":"register","message_id":"m","fin_id":"f","capabilities":[],"x":)" +
                     std::string(100, '[') + std::string(100, ']') + "}";
  expectOk(fine);
}

// ---------------------------------------------------------------------------------------------
// Types and required fields (Go decoder + Python models)

TEST(FinCodecValidation, WrongTypesNameThePath) {
  expectError(kReg + R"("capabilities":[)" + kCap + R"(,"step":[{"type":"action"}]}]})",
              "register: capabilities[0].step: expected an object");
  expectError(kReg + R"("capabilities":{"capability_id":"c"}})", "register: capabilities: expected an array");
  expectError(kReg + R"("capabilities":[)" + kCap + R"(},"c2"]})", "register: capabilities[1]: expected an object");
  expectError(kReg + R"("capabilities":[)" + kCap + R"(,"step":{"s":"text"}}]})",
              "register: capabilities[0].step.s: expected an object");
  expectError(kReg + R"("capabilities":[)" + kCap + R"(,"step":{"s":{"external_references":{}}}}]})",
              "register: capabilities[0].step.s.external_references: expected an array");
  expectError(kReg + R"("capabilities":[)" + kCap + R"(,"step":{"s":{"external_references":[5]}}}]})",
              "register: capabilities[0].step.s.external_references[0]: expected an object");
  expectError(kReg + R"("capabilities":[)" + kCap + R"(,"agent":[]}]})",
              "register: capabilities[0].agent: expected an object");
  expectError(kReg + R"("capabilities":[)" + kCap + R"(,"agent":{"a":{"name":7}}}]})",
              "register: capabilities[0].agent.a.name: expected a string");
  expectError(kReg + R"("capabilities":[{"capability_id":"c","name":5}]})",
              "register: capabilities[0].name: expected a string");
  expectError(kReg + R"("capabilities":[{"capability_id":7}]})",
              "register: capabilities[0].capability_id: expected a string");
  expectError(kReg + R"("capabilities":[],"meta":"now"})", "register: meta: expected an object");
  expectError(kReg + R"("capabilities":[],"meta":{"timestamp":"yesterday"}})",
              "register: meta.timestamp: expected an RFC 3339 timestamp");
  expectError(kReg + R"("capabilities":[],"meta":{"timestamp":17}})", "register: meta.timestamp: expected a string");
  expectError(kReg + R"("capabilities":[],"security":"none"})", "register: security: expected an object");
  expectError(kReg + R"("capabilities":[],"protocol_version":1})", "register: protocol_version: expected a string");
  expectError(R"({"type":"register","message_id":"m","fin_id":["f"],"capabilities":[]})",
              "register: fin_id: expected a string");

  const std::string cmd = R"({"type":"command","message_id":"m","command":)";
  expectError(cmd + R"("pong"})", "command: command: expected an object");
  expectError(cmd + R"({"context":[]}})", "command: command.context: expected an object");
  expectError(cmd + R"({"authentication":"x"}})", "command: command.authentication: expected an object");
  expectFullError(cmd + R"({"authentication":{"kms":"no"}}})", "command: command.authentication.kms: expected a boolean");
  expectError(cmd + R"({"variables":[]}})", "command: command.variables: expected an object");
  expectFullError(cmd + R"({"variables":{"v":1}}})", "command: command.variables.v: expected an object");
  expectFullError(cmd + R"({"variables":{"v":{"constant":"yes"}}}})",
              "command: command.variables.v.constant: expected a boolean");
  expectFullError(cmd + R"({"context":{"timeout":1.5}}})", "command: command.context.timeout: expected an integer");
  expectFullError(cmd + R"({"context":{"timeout":"1"}}})", "command: command.context.timeout: expected an integer");
  expectFullError(cmd + R"({"context":{"completed_on":"0001-01-01"}}})",
              "command: command.context.completed_on: expected an RFC 3339 timestamp");
  expectError(cmd + R"({},"meta":[]})", "command: meta: expected an object");
  expectFullError(cmd + R"({},"meta":{"timestamp":"now"}})", "command: meta.timestamp: expected an RFC 3339 timestamp");

  const std::string res = R"({"type":"result","message_id":"m","result":)";
  expectError(res + R"([]})", "result: result: expected an object");
  expectError(res + R"({"context":"c"}})", "result: result.context: expected an object");
  expectFullError(res + R"({"variables":{"r":"pong"}}})", "result: result.variables.r: expected an object");
  expectError(res + R"({"state":false}})", "result: result.state: expected a string");

  const std::string unreg = R"({"type":"unregister","message_id":"m","capability_id":"c","fin_id":"f","all":)";
  expectError(unreg + "1}", "unregister: all: expected a boolean");
  expectError(unreg + "[]}", "unregister: all: expected a boolean");
  expectError(unreg + R"("yes"})", "unregister: all: expected true or false");
  expectError(R"({"type":"unregister","message_id":"m","capability_id":{}})", "unregister: capability_id: expected a string");
  expectError(R"({"type":"pause","message_id":"m","capability_id":5})", "pause: capability_id: expected a string");
}

TEST(FinCodecValidation, MessageIdReadabilityIsReportedOnErrors) {
  // message_id as a number: not readable, so the router cannot nack it.
  ParseResult num = fin::parse(R"({"type":"ack","message_id":42})");
  EXPECT_FALSE(num.ok);
  EXPECT_FALSE(num.msg.message_id_readable);
  EXPECT_TRUE(num.msg.message_id.empty());
  EXPECT_EQ(num.error, "ack: message_id: expected a string");
  EXPECT_EQ(num.msg.type, MsgType::Ack);

  // Invalid register, readable id: the router can nack it by id.
  ParseResult reg = fin::parse(kReg + R"("capabilities":{}})");
  EXPECT_FALSE(reg.ok);
  EXPECT_TRUE(reg.msg.message_id_readable);
  EXPECT_EQ(reg.msg.message_id, "m1");
  EXPECT_EQ(reg.msg.type, MsgType::Register);
  EXPECT_EQ(reg.msg.fin_id, "fin-1");

  // message_id after the faulty field is still read.
  ParseResult late = fin::parse(R"({"type":"register","fin_id":"f","capabilities":7,"message_id":"late"})");
  EXPECT_FALSE(late.ok);
  EXPECT_TRUE(late.msg.message_id_readable);
  EXPECT_EQ(late.msg.message_id, "late");
  EXPECT_EQ(late.error, "register: capabilities: expected an array");

  // `type` wrong: message_id still known.
  ParseResult badtype = fin::parse(R"({"type":5,"message_id":"t"})");
  EXPECT_FALSE(badtype.ok);
  EXPECT_EQ(badtype.error, "message: type: expected a string");
  EXPECT_TRUE(badtype.msg.message_id_readable);
  EXPECT_EQ(badtype.msg.message_id, "t");

  // Invalid JSON after message_id: what was read is kept.
  ParseResult broken = fin::parse(R"({"type":"command","message_id":"c1","command":{"context":[}})");
  EXPECT_FALSE(broken.ok);
  EXPECT_TRUE(broken.msg.message_id_readable);
  EXPECT_EQ(broken.msg.message_id, "c1");
}

TEST(FinCodecValidation, MissingFields) {
  expectError(R"({"message_id":"m"})", "message: type: missing");
  expectError(R"({})", "message: type: missing");
  expectError(R"({"type":null,"message_id":"m"})", "type: missing");
  for (const std::string& t : std::vector<std::string>{"register", "command", "result", "ack", "nack", "unregister"}) {
    expectError("{\"type\":\"" + t + "\"}", t + ": message_id: missing");
    expectError("{\"type\":\"" + t + "\",\"message_id\":null}", t + ": message_id: missing");
  }
  expectError(R"({"type":"register","message_id":"m","capabilities":[]})", "register: fin_id: missing");
  expectError(R"({"type":"register","message_id":"m","fin_id":"","capabilities":[]})",
              "register: fin_id: must not be empty");
  expectError(R"({"type":"register","message_id":"m","fin_id":"f"})", "register: capabilities: missing");
  expectError(R"({"type":"register","message_id":"m","fin_id":"f","capabilities":null})",
              "register: capabilities: missing");
  expectError(kReg + R"("capabilities":[{"name":"x"}]})", "register: capabilities[0].capability_id: missing");
  expectError(kReg + R"("capabilities":[{"capability_id":""}]})",
              "register: capabilities[0].capability_id: must not be empty");
  expectError(kReg + R"("capabilities":[null]})", "register: capabilities[0]: expected an object");
  expectError(R"({"type":"command","message_id":"m"})", "command: command: missing");
  expectError(R"({"type":"command","message_id":"m","command":null})", "command: command: missing");
  expectError(R"({"type":"result","message_id":"m"})", "result: result: missing");

  // Not required for these: pause etc. without message_id or capability_id parse (router decides).
  ParseResult p = expectOk(R"({"type":"pause"})");
  EXPECT_EQ(p.msg.type, MsgType::Pause);
  EXPECT_FALSE(p.msg.message_id_readable);
  ParseResult u = expectOk(R"({"type":"unregister","message_id":"m"})");
  EXPECT_FALSE(u.msg.all);
}

TEST(FinCodecValidation, NullsAreNoOpsLikeGo) {
  ParseResult r = expectOk(kReg + R"("fin_name":null,"security":null,"meta":null,"capabilities":[{"capability_id":"c",)"
                                  R"("name":null,"step":null,"agent":null}]})");
  EXPECT_EQ(r.msg.capability_ids, std::vector<std::string>{"c"});
  // Python sends nulls inside external_references.
  expectOk(kReg + R"("capabilities":[{"capability_id":"c","step":{"s":{"external_references":[{"name":"x",)"
                  R"("description":null,"url":null}]}}}]})");
  ParseResult d = expectOk(R"({"type":"ack","message_id":"a","message_id":null})");
  EXPECT_EQ(d.msg.message_id, "a");
  ParseResult c = expectOk(R"({"type":"command","message_id":"m","command":{"authentication":null,"context":null,)"
                           R"("variables":null},"meta":{"timestamp":null}})");
  EXPECT_EQ(c.msg.type, MsgType::Command);
}

TEST(FinCodecValidation, UnknownTypeIsOkOnlyWhenAString) {
  ParseResult r = expectOk(R"({"type":"heartbeat","anything":[1,{"x":null}]})");
  EXPECT_EQ(r.msg.type, MsgType::Unknown);
  expectOk(R"({"type":"Register","message_id":"m"})");  // type values are case-sensitive in SOARCA
  EXPECT_EQ(fin::parse(R"({"type":"Register"})").msg.type, MsgType::Unknown);
  expectError(R"({"type":{"name":"register"}})", "type: expected a string");
  expectError(R"({"type":["register"]})", "type: expected a string");
  expectError(R"({"type":true})", "type: expected a string");
}

TEST(FinCodecValidation, KeyOrderCaseAndDuplicatesFollowGo) {
  // type not first.
  ParseResult a = expectOk(R"({"message_id":"m","type":"register","capabilities":[{"capability_id":"c"}],"fin_id":"f"})");
  EXPECT_EQ(a.msg.type, MsgType::Register);
  EXPECT_EQ(a.msg.fin_id, "f");
  EXPECT_EQ(a.msg.capability_ids, std::vector<std::string>{"c"});
  // Go matches keys case-insensitively.
  ParseResult b = expectOk(R"({"TYPE":"unregister","Message_ID":"m","Capability_Id":"c","ALL":true})");
  EXPECT_EQ(b.msg.type, MsgType::Unregister);
  EXPECT_EQ(b.msg.message_id, "m");
  EXPECT_EQ(b.msg.capability_id, "c");
  EXPECT_TRUE(b.msg.all);
  // Escaped key names are unescaped before matching.
  ParseResult e = expectOk(R"({"t\u0079pe":"ack","message\u005fid":"m"})");
  EXPECT_EQ(e.msg.type, MsgType::Ack);
  EXPECT_EQ(e.msg.message_id, "m");
  // The last duplicate wins, for ids and for the type itself.
  ParseResult c = expectOk(R"({"type":"ack","message_id":"first","message_id":"second"})");
  EXPECT_EQ(c.msg.message_id, "second");
  ParseResult d = expectOk(R"({"type":"register","message_id":"m","type":"ack"})");
  EXPECT_EQ(d.msg.type, MsgType::Ack);
  ParseResult f = expectOk(kReg + R"("capabilities":[{"capability_id":"x"}],"capabilities":[{"capability_id":"y"},)"
                                  R"({"capability_id":"z"}]})");
  EXPECT_EQ(f.msg.capability_ids, (std::vector<std::string>{"y", "z"}));
  // Every duplicate is type-checked (Go decodes each).
  expectError(R"({"type":"ack","message_id":1,"message_id":"m"})", "message_id: expected a string");
  // Unknown keys of any JSON type are fine.
  expectOk(R"({"type":"ack","message_id":"m","extra":{"a":[1,2,{"b":null}]},"more":-1.5e10})");
}

TEST(FinCodecValidation, AllAcceptsBoolsAndGoStrings) {
  const std::string u = R"({"type":"unregister","message_id":"m","capability_id":"","fin_id":"f","all":)";
  EXPECT_TRUE(expectOk(u + "true}").msg.all);
  EXPECT_FALSE(expectOk(u + "false}").msg.all);
  EXPECT_TRUE(expectOk(u + R"("true"})").msg.all);
  EXPECT_FALSE(expectOk(u + R"("false"})").msg.all);
  EXPECT_FALSE(expectOk(u + "null}").msg.all);
  EXPECT_EQ(expectOk(u + "true}").msg.fin_id, "f");
}

TEST(FinCodecValidation, Rfc3339Timestamps) {
  const std::string head = kReg + R"("capabilities":[],"meta":{"timestamp":")";
  for (const std::string& ts : std::vector<std::string>{"2026-11-23T03:51:04.545154778Z", "2026-11-23T03:47:57.613598+00:00", "0001-01-01T00:00:00Z",
                         "2024-02-29T23:59:59-12:30", "2026-01-01T00:00:00.1Z"}) {
    expectOk(head + ts + "\"}}");
  }
  for (const std::string& ts : std::vector<std::string>{"2026-11-23", "2026-11-23 03:51:04Z", "2026-11-23T03:51:04", "2026-11-23t03:51:04Z",
                         "2026-11-23T03:51:04z", "2026-13-01T00:00:00Z", "2025-02-29T00:00:00Z", "2026-01-01T24:00:00Z",
                         "2026-01-01T00:60:00Z", "2026-01-01T00:00:60Z", "2026-01-01T00:00:00.Z",
                         "2026-01-01T00:00:00+0100", "2026-01-01T00:00:00+24:00", "2026-1-01T00:00:00Z", ""}) {
    expectError(head + ts + "\"}}", "meta.timestamp: expected an RFC 3339 timestamp");
  }
}

TEST(FinCodecValidation, EscapedIdsAreUnescaped) {
  ParseResult r = expectOk(R"({"type":"register","message_id":"a\u0041","fin_id":"f\"q\\b\/",)"
                           R"("capabilities":[{"capability_id":"caf\u00e9-\ud83d\ude00"},{"capability_id":"t\tx"}]})");
  EXPECT_EQ(r.msg.message_id, "aA");
  EXPECT_EQ(r.msg.fin_id, "f\"q\\b/");
  ASSERT_EQ(r.msg.capability_ids.size(), 2u);
  EXPECT_EQ(r.msg.capability_ids[0], "caf\xc3\xa9-\xf0\x9f\x98\x80");
  EXPECT_EQ(r.msg.capability_ids[1], "t\tx");
  ParseResult u = expectOk(R"({"type":"stop","capability_id":"\u0063ap"})");
  EXPECT_EQ(u.msg.capability_id, "cap");
  // A NUL via an escape is a valid JSON string; validateId is what refuses it as a topic.
  ParseResult n = expectOk(R"({"type":"ack","message_id":"a\u0000b"})");
  EXPECT_EQ(n.msg.message_id, std::string("a\0b", 3));
  EXPECT_FALSE(fin::validateId(n.msg.message_id).empty());
}

TEST(FinCodecValidation, LargeMessagesAndBufferReuse) {
  std::string vars;
  for (int i = 0; i < 2000; ++i) {
    if (i) vars += ',';
    vars += "\"v" + std::to_string(i) + "\":{\"type\":\"string\",\"name\":\"n\",\"value\":\"" + std::string(40, 'x') + "\"}";
  }
  std::string big = R"({"type":"command","message_id":"big","command":{"variables":{)" + vars + "}}}";
  ASSERT_GT(big.size(), 100000u);
  ParseResult r = expectOk(big);
  EXPECT_EQ(r.msg.message_id, "big");
  // A small message after the big one (the thread's buffers are reused).
  ParseResult s = expectOk(R"({"type":"ack","message_id":"small"})");
  EXPECT_EQ(s.msg.message_id, "small");
  // parseInto reuses the result.
  ParseResult into;
  fin::parseInto(into, big.data(), big.size(), big.size());
  EXPECT_TRUE(into.ok);
  std::string ack = R"({"type":"ack","message_id":"x"})";
  fin::parseInto(into, ack.data(), ack.size(), ack.size());
  EXPECT_TRUE(into.ok);
  EXPECT_EQ(into.msg.message_id, "x");
  std::string bad = R"({"type":"ack"})";
  fin::parseInto(into, bad.data(), bad.size(), bad.size());
  EXPECT_FALSE(into.ok);
  EXPECT_FALSE(into.msg.message_id_readable);
  EXPECT_TRUE(into.msg.message_id.empty());
}

TEST(FinCodecValidation, ParsesConcurrentlyFromManyThreads) {
  auto vectors = fingate::test::loadVectors();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 500; ++i) {
        const auto& v = vectors[(i + t) % vectors.size()];
        ParseResult r = fin::parse(v.bytes);
        if (!r.ok || fin::toString(r.msg.type) != v.type || r.msg.message_id != *rawField(v.bytes, "message_id"))
          failures++;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
}

// ---------------------------------------------------------------------------------------------
// validateId

TEST(FinCodecIds, ValidateId) {
  for (const std::string& ok : std::vector<std::string>{"mod-pong--e896aa3b-bb37-429e-8ece-2d4286cf326d", "a", "fin/with/levels", "caf\xc3\xa9",
                         "SOARCA", "soarca-fin", std::string(1024, 'x')}) {
    EXPECT_EQ(fin::validateId(ok), "") << ok;
  }
  for (const std::string& bad : std::vector<std::string>{std::string(), std::string("soarca"), std::string("a+b"), std::string("#"),
                          std::string("x/#"), std::string("+"), std::string("a\0b", 3), std::string("a\nb"),
                          std::string("tab\t"), std::string("del\x7f"), std::string("c1\xc2\x85"),
                          std::string(1025, 'x'), std::string("bad\xff"), std::string("half\xc3")}) {
    EXPECT_NE(fin::validateId(bad), "") << bad;
  }
  EXPECT_NE(fin::validateId("").find("empty"), std::string::npos);
  EXPECT_NE(fin::validateId("soarca").find("soarca"), std::string::npos);
  EXPECT_NE(fin::validateId("a#").find("wildcard"), std::string::npos);
  EXPECT_NE(fin::validateId(std::string(2000, 'y')).find("1024"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------
// Writer

TEST(FinCodecWriter, AckAndNackHaveGoShape) {
  EXPECT_EQ(fin::makeAck("abec7356-e6f0-11f1-acf4-02fc00000001"), fingate::test::vectorBytes("02-a-ack.json"));
  EXPECT_EQ(fin::makeNack("ac227a0a-e6f0-11f1-a63a-02fc00000001"), fingate::test::vectorBytes("05-a-nack.json"));
  EXPECT_EQ(fin::makeAck(""), R"({"type":"ack","message_id":""})");
}

TEST(FinCodecWriter, EscapingLikeGo) {
  auto esc = [](std::string_view s) {
    std::string out = "prefix:";
    fin::appendJsonEscaped(out, s);
    return out;
  };
  EXPECT_EQ(esc("plain-id_1.2"), "prefix:plain-id_1.2");
  EXPECT_EQ(esc("a\"b\\c"), "prefix:a\\\"b\\\\c");
  EXPECT_EQ(esc("<a&b>"), "prefix:\\u003ca\\u0026b\\u003e");
  EXPECT_EQ(esc(std::string("\x00\x01\n\r\t\x1f", 6)), "prefix:\\u0000\\u0001\\u000a\\u000d\\u0009\\u001f");
  EXPECT_EQ(esc("caf\xc3\xa9 \xf0\x9f\x98\x80"), "prefix:caf\xc3\xa9 \xf0\x9f\x98\x80");  // UTF-8 stays raw
  EXPECT_EQ(esc("\xe2\x80\xa8\xe2\x80\xa9"), "prefix:\\u2028\\u2029");
  EXPECT_EQ(esc("bad\xff" "x\xc3"), "prefix:bad\\ufffdx\\ufffd");
  EXPECT_EQ(esc("\x7f"), "prefix:\x7f");  // Go leaves DEL alone
  EXPECT_EQ(esc(""), "prefix:");
}

TEST(FinCodecWriter, AckNackRoundTripThroughParse) {
  for (const std::string& id : std::vector<std::string>{std::string("abec7356-e6f0-11f1-acf4-02fc00000001"), std::string("q\"uo\\te"),
                         std::string("<script>&amp;</script>"), std::string("ctl\x01\n\t\x1f"),
                         std::string("nul\0in", 6), std::string("caf\xc3\xa9 \xf0\x9f\x98\x80 \xe2\x80\xa8"),
                         std::string("/slash/"), std::string()}) {
    SCOPED_TRACE(id);
    std::string ack = fin::makeAck(id);
    ParseResult a = fin::parse(ack);
    ASSERT_TRUE(a.ok) << a.error << " in " << ack;
    EXPECT_EQ(a.msg.type, MsgType::Ack);
    EXPECT_EQ(a.msg.message_id, id);
    EXPECT_TRUE(a.msg.message_id_readable);
    std::string nack = fin::makeNack(id);
    ParseResult n = fin::parse(nack);
    ASSERT_TRUE(n.ok) << n.error;
    EXPECT_EQ(n.msg.type, MsgType::Nack);
    EXPECT_EQ(n.msg.message_id, id);
    EXPECT_EQ(ack.find('<'), std::string::npos);
  }
}

// Issue 8.9: ids starting with '$' are MQTT system topics ($SYS/...): refused like the other
// reserved forms, while a '$' elsewhere in an id stays allowed.
TEST(FinCodecIds, DollarPrefixIsReserved) {
  for (const std::string& bad : {std::string("$SYS/broker/uptime"), std::string("$"), std::string("$share/g/x"),
                                 std::string("$fin--1")})
    EXPECT_NE(fin::validateId(bad).find("'$'"), std::string::npos) << bad;
  EXPECT_EQ(fin::validateId("fin$1"), "");
  EXPECT_EQ(fin::validateId("a/$SYS"), "");
}

// The JSON tree the command-line tools read admin answers with (fingate/json.hpp).
#include <fingate/json.hpp>

TEST(JsonTree, ReadsEveryTypeInOrderAndRefusesWhatIsNotJson) {
  std::string error;
  auto j = fingate::parseJson(R"({"s":"x\u00e9","n":-2.5,"i":7,"t":true,"z":null,"a":[1,{"k":"v"}],"o":{}})", error);
  ASSERT_TRUE(j) << error;
  EXPECT_EQ(j->keys, (std::vector<std::string>{"s", "n", "i", "t", "z", "a", "o"}));
  EXPECT_EQ(j->str("s"), "x\xc3\xa9");
  EXPECT_EQ(j->num("n"), -2.5);
  EXPECT_EQ(j->num("i"), 7);
  EXPECT_TRUE(j->flag("t"));
  EXPECT_TRUE(j->get("z")->isNull());
  EXPECT_EQ(j->get("a")->array.at(1).str("k"), "v");
  EXPECT_EQ(j->get("o")->type, fingate::Json::Type::Object);
  EXPECT_EQ(j->get("missing"), nullptr);
  EXPECT_EQ(j->str("n", "default"), "default");  // another type: the default
  EXPECT_FALSE(fingate::parseJson("{\"a\":", error));
  EXPECT_FALSE(error.empty());
  std::string deep(70, '[');
  deep += std::string(70, ']');
  EXPECT_FALSE(fingate::parseJson(deep, error));
  EXPECT_NE(error.find("64"), std::string::npos) << error;
}
