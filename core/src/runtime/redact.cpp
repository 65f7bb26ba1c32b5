#include "redact.hpp"

#include <array>
#include <vector>

namespace fingate {

namespace {

char lower(char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; }

// Characters that end a URL's authority in free text (see redactText).
bool endsAuthority(unsigned char c) {
  return c == '/' || c == '?' || c == '#' || c <= 0x20 || c == 0x7F || c == '"' || c == '\'' || c == '<' ||
         c == '>' || c == '\\';
}

// userinfo -> its redacted form ("user:***" or "***").
void appendRedactedUserinfo(std::string& out, std::string_view userinfo) {
  size_t colon = userinfo.find(':');
  if (colon == std::string_view::npos) {
    out += kRedacted;
    return;
  }
  out.append(userinfo.substr(0, colon + 1));
  out += kRedacted;
}

// The stems of secret key names, normalised (lower case, no '_' '-' '.' ' ').
constexpr std::array<std::string_view, 11> kSecretStems = {"password", "passwd",     "passphrase",
                                                           "pwd",      "token",      "secret",
                                                           "privatekey", "apikey",   "authorization",
                                                           "credential", "cookie"};

// For text that could not be read as JSON: shorter stems, so that a key is caught even when cut
// or spelled oddly ("pass-word", "api_key", "Authorization", "private-key").
constexpr std::array<std::string_view, 9> kLooseStems = {"pass",    "pwd",  "token", "secret", "private",
                                                         "api",     "auth", "credential", "cookie"};

bool ignoredInName(char c) { return c == '_' || c == '-' || c == '.' || c == ' '; }

std::string normalise(std::string_view key) {
  std::string n;
  n.reserve(key.size());
  for (char c : key)
    if (!ignoredInName(c)) n += lower(c);
  return n;
}

// Does a loose stem start at text[i] (case-insensitive, '_' '-' '.' ' ' skipped inside)?
bool looseStemAt(std::string_view text, size_t i) {
  for (std::string_view stem : kLooseStems) {
    size_t k = i, m = 0;
    while (m < stem.size() && k < text.size()) {
      char c = lower(text[k]);
      if (c == stem[m]) {
        ++m;
        ++k;
      } else if (m > 0 && ignoredInName(c)) {
        ++k;
      } else {
        break;
      }
    }
    if (m == stem.size()) return true;
  }
  return false;
}

// The JSON string starting at s[p] (a '"'): the index just past its closing quote, or npos.
size_t stringEnd(std::string_view s, size_t p) {
  size_t i = p + 1;
  while (i < s.size()) {
    char c = s[i];
    if (c == '\\') {
      i += 2;
      continue;
    }
    if (c == '"') return i + 1;
    ++i;
  }
  return std::string_view::npos;
}

int hexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  c = lower(c);
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// The text of a JSON string token (quotes included), unescaped well enough to match names:
// ASCII escapes decoded, anything else as '?'.
std::string keyText(std::string_view tok) {
  std::string out;
  std::string_view s = tok.substr(1, tok.size() - 2);
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '\\' || i + 1 >= s.size()) {
      out += s[i];
      continue;
    }
    char e = s[++i];
    switch (e) {
      case 'u': {
        int v = 0;
        bool ok = i + 4 < s.size();
        for (int k = 1; ok && k <= 4; ++k) {
          int h = hexValue(s[i + k]);
          if (h < 0) ok = false;
          v = v * 16 + h;
        }
        if (ok) {
          out += v < 0x80 ? static_cast<char>(v) : '?';
          i += 4;
        } else {
          out += '?';
        }
        break;
      }
      case 'n': out += '\n'; break;
      case 't': out += '\t'; break;
      case 'r': out += '\r'; break;
      case 'b': out += '\b'; break;
      case 'f': out += '\f'; break;
      default: out += e; break;  // \" \\ \/ and anything else
    }
  }
  return out;
}

bool scalarChar(char c) {
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '+' || c == '-' ||
         c == '.';
}

bool jsonSpace(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r'; }

// One JSON value starting at s[p], skipped without being shown: the index past it, or npos
// when it does not end. Brackets are balanced by count, strings respected; the inside is not
// validated (it is hidden anyway).
size_t valueEnd(std::string_view s, size_t p) {
  if (p >= s.size()) return std::string_view::npos;
  char c = s[p];
  if (c == '"') return stringEnd(s, p);
  if (c == '{' || c == '[') {
    size_t depth = 0;
    size_t i = p;
    while (i < s.size()) {
      char d = s[i];
      if (d == '"') {
        i = stringEnd(s, i);
        if (i == std::string_view::npos) return i;
        continue;
      }
      if (d == '{' || d == '[') ++depth;
      if (d == '}' || d == ']') {
        if (--depth == 0) return i + 1;
      }
      ++i;
    }
    return std::string_view::npos;
  }
  size_t i = p;
  while (i < s.size() && scalarChar(s[i])) ++i;
  return i == p ? std::string_view::npos : i;
}

enum class KeyKind { Plain, Secret, Authentication };

KeyKind classify(std::string_view key_token) {
  std::string n = normalise(keyText(key_token));
  if (n == "authentication") return KeyKind::Authentication;
  for (std::string_view stem : kSecretStems)
    if (n.find(stem) != std::string::npos) return KeyKind::Secret;
  return KeyKind::Plain;
}

class Walker {
 public:
  explicit Walker(std::string_view in) : in_(in) { out_.reserve(in.size()); }

  std::string run() {
    // The value to read next: Plain, Secret (shown as "***") or Authentication (members hidden).
    KeyKind next = KeyKind::Plain;
    bool need_value = true;
    while (true) {
      copySpace();
      if (need_value) {
        need_value = false;
        if (p_ >= in_.size()) return fail(next != KeyKind::Plain);
        char c = in_[p_];
        if (next == KeyKind::Authentication && c == '{') {
          out_ += '{';
          ++p_;
          stack_.push_back(Frame{true, true, kFirst});
          continue;
        }
        if (next != KeyKind::Plain) {
          size_t e = valueEnd(in_, p_);
          if (e == std::string_view::npos) return fail(true);
          out_ += '"';
          out_ += kRedacted;
          out_ += '"';
          p_ = e;
          valueDone();
          continue;
        }
        if (c == '{' || c == '[') {
          out_ += c;
          ++p_;
          stack_.push_back(Frame{c == '{', false, kFirst});
          continue;
        }
        size_t e = c == '"' ? stringEnd(in_, p_) : valueEnd(in_, p_);
        if (e == std::string_view::npos) return fail(false);
        out_.append(in_.substr(p_, e - p_));
        p_ = e;
        valueDone();
        continue;
      }
      if (stack_.empty()) {
        if (p_ == in_.size()) return std::move(out_);
        return fail(false);  // trailing bytes
      }
      if (p_ >= in_.size()) return fail(hiding());
      Frame& f = stack_.back();
      char c = in_[p_];
      if (f.state == kAfterValue) {
        if (c == ',') {
          out_ += c;
          ++p_;
          f.state = kAfterComma;
          continue;
        }
        if (c == (f.object ? '}' : ']')) {
          close();
          continue;
        }
        return fail(hiding());
      }
      if (f.state == kFirst && c == (f.object ? '}' : ']')) {
        close();
        continue;
      }
      if (!f.object) {  // kFirst or kAfterComma: a value
        f.state = kAfterValue;
        need_value = true;
        next = KeyKind::Plain;
        continue;
      }
      if (f.state == kFirst || f.state == kAfterComma) {  // a key
        if (c != '"') return fail(hiding());
        size_t e = stringEnd(in_, p_);
        if (e == std::string_view::npos) return fail(hiding());
        std::string_view key = in_.substr(p_, e - p_);
        f.key = f.hide_members ? KeyKind::Secret : classify(key);
        out_.append(key);
        p_ = e;
        f.state = kColon;
        continue;
      }
      // kColon
      if (c != ':') return fail(hiding());
      out_ += c;
      ++p_;
      f.state = kAfterValue;
      need_value = true;
      next = f.key;
    }
  }

 private:
  enum State { kFirst, kAfterComma, kColon, kAfterValue };
  struct Frame {
    bool object;
    bool hide_members;  // an `authentication` object
    State state;
    KeyKind key = KeyKind::Plain;
  };

  void copySpace() {
    while (p_ < in_.size() && jsonSpace(in_[p_])) out_ += in_[p_++];
  }

  void valueDone() {
    if (!stack_.empty()) stack_.back().state = kAfterValue;
  }

  void close() {
    out_ += in_[p_++];
    stack_.pop_back();
    valueDone();
  }

  // Inside an `authentication` object, or about to show a secret value.
  bool hiding() const {
    for (const Frame& f : stack_)
      if (f.hide_members) return true;
    return false;
  }

  // Not JSON from p_ on. What is out_ so far was read and is safe. In a secret: cut here.
  // Otherwise copy on up to the first secret-looking word or escape (a key can hide behind
  // one), and cut there.
  std::string fail(bool in_secret) {
    // Right after a secret's name or value (`"token":"a"b"`): the rest may be the secret.
    if (!in_secret && !stack_.empty() && stack_.back().object && stack_.back().key != KeyKind::Plain &&
        (stack_.back().state == kColon || stack_.back().state == kAfterValue))
      in_secret = true;
    if (!in_secret) in_secret = afterSecretWord();
    if (!in_secret) {
      size_t q = p_;
      while (q < in_.size() && in_[q] != '\\' && !looseStemAt(in_, q)) ++q;
      out_.append(in_.substr(p_, q - p_));
      if (q == in_.size()) return std::move(out_);
    }
    out_ += kRedacted;
    return std::move(out_);
  }

  // Does the string token just before p_ (past blanks, ':' and ',') look like a secret's name?
  // `"x":"Authorization":"Bearer ..."` breaks where the name was read as a value.
  bool afterSecretWord() const {
    size_t q = p_;
    while (q > 0 && (jsonSpace(in_[q - 1]) || in_[q - 1] == ':' || in_[q - 1] == ',')) --q;
    if (q < 2 || in_[q - 1] != '"') return false;
    size_t open = in_.rfind('"', q - 2);
    if (open == std::string_view::npos) return false;
    for (size_t k = open + 1; k + 1 < q; ++k)
      if (looseStemAt(in_.substr(0, q - 1), k)) return true;
    return false;
  }

  std::string_view in_;
  size_t p_ = 0;
  std::string out_;
  std::vector<Frame> stack_;
};

}  // namespace

std::string redactUrlUserinfo(std::string_view url) {
  size_t sep = url.find("://");
  if (sep == std::string_view::npos) return std::string(url);
  size_t a = sep + 3;
  size_t e = url.find_first_of("/?#", a);
  if (e == std::string_view::npos) e = url.size();
  size_t at = url.substr(a, e - a).rfind('@');
  if (at == std::string_view::npos) return std::string(url);
  at += a;
  std::string out(url.substr(0, a));
  appendRedactedUserinfo(out, url.substr(a, at - a));
  out.append(url.substr(at));
  return out;
}

std::string redactText(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find("://", i);
    size_t k = text.find(":\\/\\/", i);
    size_t sep_len = 3;
    if (k < j) {
      j = k;
      sep_len = 5;
    }
    if (j == std::string_view::npos) break;
    size_t a = j + sep_len;
    size_t e = a, at = std::string_view::npos;
    while (e < text.size() && !endsAuthority(static_cast<unsigned char>(text[e]))) {
      if (text[e] == '@') at = e;
      ++e;
    }
    if (at == std::string_view::npos) {
      // Text cut inside a user-info ("tcp://user:pass" and then the end, as in a dead letter's
      // first 4 KiB): what follows the ':' is no port, so it may be a password.
      size_t colon = text.substr(a, e - a).find(':');
      if (e == text.size() && colon != std::string_view::npos && text[a] != '[') {
        std::string_view rest = text.substr(a + colon + 1);
        // A port closed by punctuation of the sentence around it ("(on tcp://h:7401)") is a port.
        while (!rest.empty() && std::string_view(").,;]").find(rest.back()) != std::string_view::npos)
          rest.remove_suffix(1);
        if (rest.find_first_not_of("0123456789") != std::string_view::npos) {
          out.append(text.substr(i, a + colon + 1 - i));
          out += kRedacted;
          i = e;
          continue;
        }
      }
      // No user-info: look for the next URL from just past this "://" (another can start
      // inside what looked like this authority: "a://b://u:p@h").
      out.append(text.substr(i, a - i));
      i = a;
      continue;
    }
    out.append(text.substr(i, a - i));
    appendRedactedUserinfo(out, text.substr(a, at - a));
    i = at;
  }
  if (i < text.size()) out.append(text.substr(i));
  return out;
}

std::string redactJsonSecrets(std::string_view json) { return Walker(json).run(); }

bool isSecretJsonKey(std::string_view key) {
  std::string n = normalise(key);
  if (n == "authentication") return true;
  for (std::string_view stem : kSecretStems)
    if (n.find(stem) != std::string::npos) return true;
  return false;
}

}  // namespace fingate
