#include "verify_matcher.hpp"

#include <openssl/evp.h>

#include <algorithm>
#include <cmath>
#include <ctime>
#include <fingate/fin_codec.hpp>
#include <map>
#include <utility>

#include "cli_format.hpp"
#include "redact.hpp"

namespace fingate::cli {

namespace {

// The redaction reads at most this much of a payload: a prefix cut in the middle of a JSON
// document is redacted conservatively (the rest is masked from the first secret-looking word).
constexpr size_t kPreviewScanBytes = 4096;

std::string hex(const unsigned char* p, size_t n) {
  static const char* d = "0123456789abcdef";
  std::string out(n * 2, '0');
  for (size_t i = 0; i < n; ++i) {
    out[2 * i] = d[p[i] >> 4];
    out[2 * i + 1] = d[p[i] & 15];
  }
  return out;
}

// Cut to at most n bytes, not inside a UTF-8 sequence.
std::string cutUtf8(std::string s, size_t n) {
  if (s.size() <= n) return s;
  size_t end = n;
  while (end > 0 && (static_cast<unsigned char>(s[end]) & 0xC0) == 0x80) --end;
  s.resize(end);
  return s;
}

int64_t msOf(double s) { return static_cast<int64_t>(std::llround(s * 1000.0)); }

}  // namespace

std::string sha256Hex(std::string_view data) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), md, &len, EVP_sha256(), nullptr);
  return hex(md, len);
}

std::string digestOf(std::vector<std::string> hex_digests) {
  std::sort(hex_digests.begin(), hex_digests.end());
  std::string all;
  all.reserve(hex_digests.size() * 64);
  for (auto& h : hex_digests) all += h;
  return sha256Hex(all);
}

std::string previewOf(std::string_view payload) {
  const std::string_view scanned = payload.substr(0, kPreviewScanBytes);
  return cutUtf8(redactText(redactJsonSecrets(scanned)), kPreviewBytes);
}

Observed observe(int side, std::string_view topic, std::string_view payload, int64_t transport_ms, int64_t arrival_ms,
                 uint64_t seq) {
  Observed o;
  o.side = side;
  o.topic.assign(topic);
  o.sha256 = sha256Hex(payload);
  o.seen_at_ms = transport_ms != 0 ? transport_ms : arrival_ms;
  o.seq = seq;
  const fin::ParseResult parsed = fin::parse(payload);
  if (parsed.msg.message_id_readable) o.message_id = parsed.msg.message_id;
  if (parsed.msg.type != fin::MsgType::Unknown) o.type.assign(fin::toString(parsed.msg.type));
  o.preview = previewOf(payload);
  return o;
}

std::string rfc3339(int64_t unix_ms) {
  const std::time_t t = static_cast<std::time_t>(unix_ms >= 0 ? unix_ms / 1000 : (unix_ms - 999) / 1000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

std::string rfc3339Ms(int64_t unix_ms) {
  std::string s = rfc3339(unix_ms);
  const int64_t ms = ((unix_ms % 1000) + 1000) % 1000;
  char frac[8];
  std::snprintf(frac, sizeof frac, ".%03d", static_cast<int>(ms));
  s.insert(s.size() - 1, frac);
  return s;
}

VerifyReport matchObservations(const std::vector<Observed>& seen, const VerifyParams& params) {
  VerifyReport r;
  r.params = params;
  const int64_t from = params.started_at_ms + msOf(params.grace_s);
  const int64_t to = from + msOf(params.window_s);
  auto inWindow = [&](int64_t t) { return t >= from && t <= to; };

  // topic -> sha256 -> the messages of each side
  std::map<std::string, std::map<std::string, std::array<std::vector<const Observed*>, 2>>> groups;
  for (const Observed& o : seen) {
    if (o.seen_at_ms < params.started_at_ms) continue;  // before the observation: history
    if (o.side != 0 && o.side != 1) continue;
    groups[o.topic][o.sha256][o.side].push_back(&o);
  }
  for (const std::string& t : params.topics) groups[t];  // silent topics are listed too
  auto earlier = [](const Observed* a, const Observed* b) {
    return a->seen_at_ms != b->seen_at_ms ? a->seen_at_ms < b->seen_at_ms : a->seq < b->seq;
  };

  for (auto& [topic, by_hash] : groups) {
    TopicResult t;
    t.topic = topic;
    std::array<std::vector<std::string>, 2> hashes;
    const Observed* first = nullptr;  // the earliest unmatched counted message
    uint64_t compared = 0;
    for (auto& [sha, sides] : by_hash) {
      for (auto& v : sides) std::stable_sort(v.begin(), v.end(), earlier);
      const size_t pairs = std::min(sides[0].size(), sides[1].size());
      for (size_t i = 0; i < pairs; ++i) {
        if (!inWindow(std::min(sides[0][i]->seen_at_ms, sides[1][i]->seen_at_ms))) continue;
        ++compared;
        for (int s = 0; s < 2; ++s) {
          ++t.count[s];
          hashes[s].push_back(sha);
        }
      }
      for (int s = 0; s < 2; ++s)
        for (size_t i = pairs; i < sides[s].size(); ++i) {
          const Observed* o = sides[s][i];
          if (!inWindow(o->seen_at_ms)) continue;
          ++compared;
          ++t.count[s];
          ++t.missing_on[1 - s];
          hashes[s].push_back(sha);
          if (!first || o->seen_at_ms < first->seen_at_ms ||
              (o->seen_at_ms == first->seen_at_ms &&
               (o->side < first->side || (o->side == first->side && o->seq < first->seq))))
            first = o;
        }
    }
    const bool listed = std::find(params.topics.begin(), params.topics.end(), topic) != params.topics.end();
    if (t.count[0] + t.count[1] == 0 && !listed) continue;  // nothing of this topic in the window
    for (int s = 0; s < 2; ++s) t.digest[s] = digestOf(std::move(hashes[s]));
    if (first)
      t.first_difference = FirstDifference{first->side, first->seen_at_ms, first->message_id,
                                           first->type, first->sha256,     first->preview};
    for (int s = 0; s < 2; ++s) r.messages[s] += t.count[s];
    r.compared += compared;
    if (!t.parity()) r.differing_topics.push_back(topic);
    r.topics.push_back(std::move(t));
  }

  const auto& n = params.names;
  if (!r.differing_topics.empty()) {
    std::array<uint64_t, 2> missing{};
    for (auto& t : r.topics)
      for (int s = 0; s < 2; ++s) missing[s] += t.missing_on[s];
    r.parity = false;
    r.reason = plural(missing[0] + missing[1], "message", "messages") + " on " +
               plural(r.differing_topics.size(), "topic", "topics") + " seen on one side only (missing on '" + n[0] +
               "': " + std::to_string(missing[0]) + ", missing on '" + n[1] + "': " + std::to_string(missing[1]) + ")";
  } else if (r.compared == 0 && !params.allow_idle) {
    r.parity = false;
    r.reason =
        "no message on either side in the window: nothing was compared (run verify while fins are busy, or pass "
        "--allow-idle)";
  } else {
    r.parity = true;
  }
  return r;
}

std::string reportJson(const VerifyReport& r, bool only_differing) {
  const auto& p = r.params;
  const auto& n = p.names;
  std::string j = "{\"parity\":";
  j += r.parity ? "true" : "false";
  j += ",\"reason\":";
  appendJsonString(j, r.reason);
  j += ",\"from\":";
  appendJsonString(j, n[0]);
  j += ",\"to\":";
  appendJsonString(j, n[1]);
  j += ",\"active\":";
  appendJsonString(j, p.active);
  j += ",\"window_s\":" + numberText(p.window_s) + ",\"grace_s\":" + numberText(p.grace_s) + ",\"started_at\":";
  appendJsonString(j, rfc3339Ms(p.started_at_ms));
  j += ",\"messages\":{";
  appendJsonString(j, n[0]);
  j += ':' + std::to_string(r.messages[0]) + ',';
  appendJsonString(j, n[1]);
  j += ':' + std::to_string(r.messages[1]) + "},\"topics_checked\":" + std::to_string(r.topics.size());
  j += ",\"differing_topics\":[";
  for (size_t i = 0; i < r.differing_topics.size(); ++i) {
    if (i) j += ',';
    appendJsonString(j, r.differing_topics[i]);
  }
  j += "],\"topics\":[";
  bool first = true;
  size_t omitted = 0;
  for (const TopicResult& t : r.topics) {
    if (only_differing && t.parity()) {
      ++omitted;
      continue;
    }
    if (!first) j += ',';
    first = false;
    j += "{\"topic\":";
    appendJsonString(j, t.topic);
    j += ",\"parity\":";
    j += t.parity() ? "true" : "false";
    for (int s = 0; s < 2; ++s) {
      j += ',';
      appendJsonString(j, n[s]);
      j += ':' + std::to_string(t.count[s]);
    }
    for (int s = 0; s < 2; ++s) {
      j += ',';
      appendJsonString(j, "digest_" + n[s]);
      j += ':';
      appendJsonString(j, t.digest[s]);
    }
    for (int s = 0; s < 2; ++s) {
      j += ',';
      appendJsonString(j, "missing_on_" + n[s]);
      j += ':' + std::to_string(t.missing_on[s]);
    }
    j += ",\"first_difference\":";
    if (!t.first_difference) {
      j += "null";
    } else {
      const FirstDifference& d = *t.first_difference;
      j += "{\"seen_on\":";
      appendJsonString(j, n[d.seen_on]);
      j += ",\"missing_on\":";
      appendJsonString(j, n[1 - d.seen_on]);
      j += ",\"seen_at\":";
      appendJsonString(j, rfc3339Ms(d.seen_at_ms));
      j += ",\"message_id\":";
      appendJsonString(j, d.message_id);
      j += ",\"type\":";
      appendJsonString(j, d.type);
      j += ",\"sha256\":";
      appendJsonString(j, d.sha256);
      j += ",\"preview\":";
      appendJsonString(j, d.preview);
      j += '}';
    }
    j += '}';
  }
  j += ']';
  if (only_differing) j += ",\"topics_omitted\":" + std::to_string(omitted);
  j += "}";
  return j;
}

std::string reportTable(const VerifyReport& r) {
  const auto& p = r.params;
  const auto& n = p.names;
  std::string out = "verify " + n[0] + " -> " + n[1] + " (active: " + p.active + "): ";
  out += r.parity ? "PARITY" : "DIFFERENCES";
  out += r.reason.empty() ? "\n" : " - " + r.reason + "\n";
  out += "window " + numberText(p.window_s) + " s after " + numberText(p.grace_s) +
         " s of grace, observation started " + rfc3339Ms(p.started_at_ms) + "; messages: " + n[0] + " " +
         std::to_string(r.messages[0]) + ", " + n[1] + " " + std::to_string(r.messages[1]) + "; " +
         plural(r.topics.size(), "topic", "topics") + "\n";
  if (r.topics.empty()) return out;

  std::vector<std::array<std::string, 6>> rows;
  rows.push_back({"topic", n[0], n[1], "missing on " + n[0], "missing on " + n[1], ""});
  for (auto& t : r.topics)
    rows.push_back({t.topic, std::to_string(t.count[0]), std::to_string(t.count[1]), std::to_string(t.missing_on[0]),
                    std::to_string(t.missing_on[1]), t.parity() ? "ok" : "DIFFERS"});
  std::array<size_t, 6> width{};
  for (auto& row : rows)
    for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
  out += '\n';
  for (auto& row : rows) {
    std::string line = row[0] + std::string(width[0] - row[0].size(), ' ');
    for (size_t c = 1; c < 5; ++c) line += "  " + std::string(width[c] - row[c].size(), ' ') + row[c];
    line += "  " + row[5];
    while (!line.empty() && line.back() == ' ') line.pop_back();
    out += line + '\n';
  }
  bool header = false;
  for (auto& t : r.topics) {
    if (!t.first_difference) continue;
    if (!header) out += "\nfirst differences:\n";
    header = true;
    const FirstDifference& d = *t.first_difference;
    out += "  " + t.topic + ": seen on " + n[d.seen_on] + " at " + rfc3339Ms(d.seen_at_ms) + ", missing on " +
           n[1 - d.seen_on] + ": " + (d.type.empty() ? "(not a Fin message)" : d.type) +
           (d.message_id.empty() ? "" : " message_id " + d.message_id) + ", sha256 " + d.sha256 + "\n";
    std::string shown;
    for (char c : d.preview) shown += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? ' ' : c;
    out += "    preview: " + shown + "\n";
  }
  return out;
}

}  // namespace fingate::cli
