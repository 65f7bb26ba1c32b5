// `fingate migrate verify`: what the two observers saw, compared (docs/cli.md, "fingate migrate").
// Pure: no plugin, no clock, no I/O, so every rule is unit-tested without brokers
// (tests/unit/gateway/verify_matcher_test.cpp).
//
// Rules (the contract):
//  - a message seen before the observation began (seen_at < started_at) is ignored (Kafka history);
//  - messages are matched per (topic, sha256 of the payload), in seen_at order: the i-th on one
//    side with the i-th on the other; a matched pair's time is the earlier of its two seen_at;
//  - the window is [started_at + grace, started_at + grace + window] (ends included); only pairs
//    and unmatched messages whose time is in the window count;
//  - per topic: count per side, digest per side (sha256 over the sorted hex sha256s of the
//    counted messages, concatenated without separator), missing_on_<side> (counted messages seen
//    only on the other side) and the first difference (the earliest unmatched counted message);
//  - parity = no unmatched counted message on any topic AND (at least one message counted OR
//    allow_idle).
#pragma once

#include <array>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace fingate::cli {

// One message one observer saw.
struct Observed {
  int side = 0;  // 0 = the migration's `from`, 1 = its `to`
  std::string topic;
  std::string sha256;      // of the payload, lower-case hex
  int64_t seen_at_ms = 0;  // the transport's timestamp when non-zero, else the arrival (wall clock, ms)
  uint64_t seq = 0;        // arrival order (breaks ties of seen_at)
  std::string message_id;  // read with the Fin codec; empty when it has none
  std::string type;        // "result", ...; empty when unreadable
  std::string preview;     // the first 200 bytes, secrets redacted (previewOf)
};

// sha256, seen_at, message_id, type and preview of one payload.
Observed observe(int side, std::string_view topic, std::string_view payload, int64_t transport_ms, int64_t arrival_ms,
                 uint64_t seq);

inline constexpr size_t kPreviewBytes = 200;
// What a report may show of a payload: JSON secrets (password, token, authentication, ...) and
// URL credentials masked, then cut to kPreviewBytes on a UTF-8 boundary.
std::string previewOf(std::string_view payload);

std::string sha256Hex(std::string_view data);
// sha256 over the sorted hex digests, concatenated (the digest of a side of a topic).
std::string digestOf(std::vector<std::string> hex_digests);

struct VerifyParams {
  std::array<std::string, 2> names;  // the endpoint names of `from` and `to`
  std::string active;                // the active side when the observation ran
  int64_t started_at_ms = 0;         // wall clock, when both sides were up and subscribed
  double grace_s = 2;
  double window_s = 10;
  bool allow_idle = false;
  // Every topic observed: each is in the report, a silent one with zero counts (parity).
  std::vector<std::string> topics;
};

struct FirstDifference {
  int seen_on = 0;  // the side that saw it (missing on the other)
  int64_t seen_at_ms = 0;
  std::string message_id, type, sha256, preview;
};

struct TopicResult {
  std::string topic;
  std::array<uint64_t, 2> count{};       // counted messages per side
  std::array<std::string, 2> digest;     // per side
  std::array<uint64_t, 2> missing_on{};  // missing_on[s]: counted messages seen only on the other side
  std::optional<FirstDifference> first_difference;
  bool parity() const { return missing_on[0] == 0 && missing_on[1] == 0; }
};

struct VerifyReport {
  VerifyParams params;
  bool parity = false;
  std::string reason;                  // empty with parity
  std::array<uint64_t, 2> messages{};  // counted per side
  uint64_t compared = 0;               // distinct counted messages (a matched pair once)
  std::vector<TopicResult> topics;     // every observed topic (params.topics) and any other with a message, by name
  std::vector<std::string> differing_topics;
};

VerifyReport matchObservations(const std::vector<Observed>& seen, const VerifyParams& params);

// The report as JSON (the contract's format; the keys named by side are the endpoint names).
// only_differing: the `topics` list keeps the differing topics only (for a report too big to
// post whole; topics_checked still counts every topic), and "topics_omitted" says how many
// matching topics were left out.
std::string reportJson(const VerifyReport& r, bool only_differing = false);
// The report for a terminal: a verdict line, a table of topics, the first differences.
std::string reportTable(const VerifyReport& r);

// "2024-05-01T12:00:00Z" and "2024-05-01T12:00:00.123Z" (UTC).
std::string rfc3339(int64_t unix_ms);
std::string rfc3339Ms(int64_t unix_ms);

}  // namespace fingate::cli
