// fingate migrate verify: the matcher (gateway/verify_matcher.hpp) on observations made by hand.
#include "verify_matcher.hpp"

#include <gtest/gtest.h>

#include <fingate/json.hpp>
#include <string>
#include <vector>

using namespace fingate::cli;

namespace {

constexpr int64_t kStart = 1'700'000'000'000;        // started_at (ms)
constexpr int64_t kWindowFrom = kStart + 2000;       // grace 2 s
constexpr int64_t kWindowTo = kWindowFrom + 10'000;  // window 10 s

VerifyParams params(bool allow_idle = false) {
  VerifyParams p;
  p.names = {"old", "new"};
  p.active = "old";
  p.started_at_ms = kStart;
  p.grace_s = 2;
  p.window_s = 10;
  p.allow_idle = allow_idle;
  return p;
}

// One observation with a made-up payload: the same (topic, payload) on both sides matches.
struct Seen {
  std::vector<Observed> all;
  uint64_t seq = 0;
  Observed& add(int side, const std::string& topic, const std::string& payload, int64_t at) {
    all.push_back(observe(side, topic, payload, at, /*arrival*/ at + 7, ++seq));
    return all.back();
  }
};

std::string result(const std::string& id) { return R"({"type":"result","message_id":")" + id + R"("})"; }

const TopicResult* topic(const VerifyReport& r, const std::string& name) {
  for (auto& t : r.topics)
    if (t.topic == name) return &t;
  return nullptr;
}

}  // namespace

TEST(VerifyMatcher, SameMessagesOnBothSidesIsParity) {
  Seen s;
  for (int i = 0; i < 3; ++i) {
    s.add(0, "cap-1", result("r" + std::to_string(i)), kWindowFrom + 100 * i);
    s.add(1, "cap-1", result("r" + std::to_string(i)), kWindowFrom + 100 * i + 40);  // the mirror's copy, later
  }
  s.add(1, "soarca", R"({"type":"register","message_id":"g"})", kWindowFrom + 5);
  s.add(0, "soarca", R"({"type":"register","message_id":"g"})", kWindowFrom + 9);
  const VerifyReport r = matchObservations(s.all, params());
  EXPECT_TRUE(r.parity) << r.reason;
  EXPECT_EQ(r.reason, "");
  EXPECT_EQ(r.messages[0], 4u);
  EXPECT_EQ(r.messages[1], 4u);
  EXPECT_EQ(r.compared, 4u);
  ASSERT_EQ(r.topics.size(), 2u);
  EXPECT_EQ(r.topics[0].topic, "cap-1");  // by name
  EXPECT_EQ(r.topics[1].topic, "soarca");
  const TopicResult& t = r.topics[0];
  EXPECT_TRUE(t.parity());
  EXPECT_EQ(t.count[0], 3u);
  EXPECT_EQ(t.digest[0], t.digest[1]);
  EXPECT_EQ(t.digest[0], digestOf({sha256Hex(result("r2")), sha256Hex(result("r0")), sha256Hex(result("r1"))}));
  EXPECT_FALSE(t.first_difference);
  EXPECT_TRUE(r.differing_topics.empty());
}

TEST(VerifyMatcher, AMessageOnOneSideOnlyIsADifferenceWithItsDetails) {
  Seen s;
  s.add(0, "cap-1", result("both"), kWindowFrom + 10);
  s.add(1, "cap-1", result("both"), kWindowFrom + 20);
  s.add(0, "cap-1", R"({"type":"result","message_id":"lost","password":"SEKRIT"})", kWindowFrom + 500);
  s.add(1, "fin-1", R"({"type":"ack","message_id":"a-9"})", kWindowFrom + 700);
  const VerifyReport r = matchObservations(s.all, params());
  EXPECT_FALSE(r.parity);
  EXPECT_EQ(r.differing_topics, (std::vector<std::string>{"cap-1", "fin-1"}));
  EXPECT_EQ(r.reason, "2 messages on 2 topics seen on one side only (missing on 'old': 1, missing on 'new': 1)");
  const TopicResult* t = topic(r, "cap-1");
  ASSERT_TRUE(t);
  EXPECT_EQ(t->count[0], 2u);
  EXPECT_EQ(t->count[1], 1u);
  EXPECT_EQ(t->missing_on[1], 1u);  // seen on old, missing on new
  EXPECT_EQ(t->missing_on[0], 0u);
  EXPECT_NE(t->digest[0], t->digest[1]);
  ASSERT_TRUE(t->first_difference);
  EXPECT_EQ(t->first_difference->seen_on, 0);
  EXPECT_EQ(t->first_difference->seen_at_ms, kWindowFrom + 500);
  EXPECT_EQ(t->first_difference->message_id, "lost");
  EXPECT_EQ(t->first_difference->type, "result");
  EXPECT_EQ(t->first_difference->preview.find("SEKRIT"), std::string::npos) << t->first_difference->preview;
  const TopicResult* f = topic(r, "fin-1");
  ASSERT_TRUE(f);
  EXPECT_EQ(f->missing_on[0], 1u);
  EXPECT_EQ(f->first_difference->seen_on, 1);
  EXPECT_EQ(f->first_difference->type, "ack");
}

TEST(VerifyMatcher, DuplicatesMatchOneForOneInSeenAtOrder) {
  Seen s;
  // Arrival order differs from seen_at order: the matcher sorts by seen_at.
  s.add(0, "t", "x", kWindowFrom + 900);  // the later copy: unmatched
  s.add(0, "t", "x", kWindowFrom + 100);
  s.add(1, "t", "x", kWindowFrom + 150);
  const VerifyReport r = matchObservations(s.all, params());
  ASSERT_EQ(r.topics.size(), 1u);
  EXPECT_EQ(r.topics[0].count[0], 2u);
  EXPECT_EQ(r.topics[0].count[1], 1u);
  EXPECT_EQ(r.topics[0].missing_on[1], 1u);
  EXPECT_EQ(r.topics[0].first_difference->seen_at_ms, kWindowFrom + 900);
  EXPECT_EQ(r.compared, 2u);
  EXPECT_EQ(r.topics[0].first_difference->type, "");  // not a Fin message
}

TEST(VerifyMatcher, SameTopicDifferentBytesDoNotMatch) {
  Seen s;
  s.add(0, "t", R"({"a":1})", kWindowFrom + 1);
  s.add(1, "t", R"({"a": 1})", kWindowFrom + 2);
  const VerifyReport r = matchObservations(s.all, params());
  EXPECT_FALSE(r.parity);
  EXPECT_EQ(r.topics[0].missing_on[0], 1u);
  EXPECT_EQ(r.topics[0].missing_on[1], 1u);
  EXPECT_EQ(r.topics[0].first_difference->seen_on, 0);  // the earliest unmatched
}

TEST(VerifyMatcher, SameBytesOnAnotherTopicDoNotMatch) {
  Seen s;
  s.add(0, "a", "x", kWindowFrom + 1);
  s.add(1, "b", "x", kWindowFrom + 2);
  EXPECT_EQ(matchObservations(s.all, params()).differing_topics, (std::vector<std::string>{"a", "b"}));
}

TEST(VerifyMatcher, MessagesBeforeTheObservationAreIgnored) {
  Seen s;
  s.add(0, "t", "history", kStart - 60'000);  // a Kafka record from before (its transport timestamp)
  s.add(1, "t", "history", kStart - 1);
  s.add(0, "old-only", "y", kStart - 1);
  const VerifyReport r = matchObservations(s.all, params(true));
  EXPECT_TRUE(r.topics.empty());
  EXPECT_TRUE(r.parity);
}

TEST(VerifyMatcher, OnlyTheWindowCountsAndItsEndsAreIncluded) {
  Seen s;
  s.add(0, "t", "in the leading grace", kWindowFrom - 1);
  s.add(0, "t", "first ms of the window", kWindowFrom);
  s.add(0, "t", "last ms of the window", kWindowTo);
  s.add(0, "t", "in the trailing grace", kWindowTo + 1);
  const VerifyReport r = matchObservations(s.all, params());
  ASSERT_EQ(r.topics.size(), 1u);
  EXPECT_EQ(r.topics[0].count[0], 2u);
  EXPECT_EQ(r.topics[0].missing_on[1], 2u);
  EXPECT_EQ(r.topics[0].first_difference->seen_at_ms, kWindowFrom);
}

TEST(VerifyMatcher, APairCountsAtTheEarlierOfItsTwoTimes) {
  Seen s;
  // Seen on old at the end of the window, its copy on new in the trailing grace: counted, matched.
  s.add(0, "late", "x", kWindowTo - 10);
  s.add(1, "late", "x", kWindowTo + 900);
  // Seen on new in the leading grace, its copy on old in the window: the pair is not counted.
  s.add(1, "early", "y", kWindowFrom - 50);
  s.add(0, "early", "y", kWindowFrom + 50);
  const VerifyReport r = matchObservations(s.all, params());
  EXPECT_TRUE(r.parity) << r.reason;
  ASSERT_EQ(r.topics.size(), 1u);
  EXPECT_EQ(r.topics[0].topic, "late");
  EXPECT_EQ(r.topics[0].count[0], 1u);
  EXPECT_EQ(r.topics[0].count[1], 1u);
}

TEST(VerifyMatcher, AnUnmatchedMessageInTheGraceIsNotADifference) {
  Seen s;
  s.add(0, "t", "copy lost before the window", kWindowFrom - 300);
  s.add(1, "t", "copy lost after the window", kWindowTo + 300);
  s.add(0, "t", "z", kWindowFrom + 1);
  s.add(1, "t", "z", kWindowFrom + 2);
  EXPECT_TRUE(matchObservations(s.all, params()).parity);
}

TEST(VerifyMatcher, NothingInTheWindowIsNoParityUnlessIdleIsAllowed) {
  Seen s;
  const VerifyReport idle = matchObservations(s.all, params());
  EXPECT_FALSE(idle.parity);
  EXPECT_NE(idle.reason.find("--allow-idle"), std::string::npos) << idle.reason;
  EXPECT_TRUE(idle.differing_topics.empty());
  const VerifyReport allowed = matchObservations(s.all, params(true));
  EXPECT_TRUE(allowed.parity);
  EXPECT_EQ(allowed.reason, "");
  // allow_idle never hides a difference.
  s.add(0, "t", "x", kWindowFrom + 1);
  EXPECT_FALSE(matchObservations(s.all, params(true)).parity);
}

TEST(VerifyMatcher, TheFirstDifferenceIsTheEarliestUnmatchedAcrossPayloads) {
  Seen s;
  s.add(1, "t", "b", kWindowFrom + 300);
  s.add(0, "t", "a", kWindowFrom + 200);
  s.add(0, "t", "c", kWindowFrom + 250);
  const VerifyReport r = matchObservations(s.all, params());
  ASSERT_TRUE(r.topics[0].first_difference);
  EXPECT_EQ(r.topics[0].first_difference->sha256, sha256Hex("a"));
  EXPECT_EQ(r.topics[0].first_difference->seen_on, 0);
}

TEST(VerifyObserve, SeenAtIsTheTransportTimestampWhenItHasOne) {
  EXPECT_EQ(observe(0, "t", "x", 1234, 9999, 1).seen_at_ms, 1234);
  EXPECT_EQ(observe(0, "t", "x", 0, 9999, 1).seen_at_ms, 9999);
}

TEST(VerifyObserve, Sha256AndDigests) {
  EXPECT_EQ(sha256Hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(digestOf({}), sha256Hex(""));
  EXPECT_EQ(digestOf({sha256Hex("a"), sha256Hex("b")}), digestOf({sha256Hex("b"), sha256Hex("a")}));
  EXPECT_EQ(digestOf({sha256Hex("b"), sha256Hex("a")}),
            sha256Hex(std::min(sha256Hex("a"), sha256Hex("b")) + std::max(sha256Hex("a"), sha256Hex("b"))));
}

TEST(VerifyObserve, ThePreviewIsRedactedAndCutAt200BytesOnACharacterBoundary) {
  const std::string cmd = R"({"type":"command","message_id":"m-7","command":{"authentication":{"password":"SEKRIT"},)"
                          R"("variables":{"u":"ssh://root:SEKRIT2@host/"}}})";
  const Observed o = observe(0, "cap", cmd, 0, 1, 1);
  EXPECT_EQ(o.type, "command");
  EXPECT_EQ(o.message_id, "m-7");
  EXPECT_EQ(o.preview.find("SEKRIT"), std::string::npos) << o.preview;
  EXPECT_NE(o.preview.find("m-7"), std::string::npos);

  std::string long_text(199, 'a');
  long_text += "\xc3\xa9";  // é across bytes 199..200
  long_text += std::string(5000, 'b') + "password=SEKRIT";
  const std::string p = previewOf(long_text);
  EXPECT_EQ(p, std::string(199, 'a'));
  EXPECT_EQ(previewOf("short"), "short");
}

TEST(VerifyReportJson, TheContractFormatWithTheEndpointNames) {
  Seen s;
  s.add(0, "cap-1", result("x"), kWindowFrom + 1);
  s.add(1, "cap-1", result("x"), kWindowFrom + 2);
  s.add(0, "fin-1", result("only-old"), kWindowFrom + 3);
  const VerifyReport r = matchObservations(s.all, params());
  std::string err;
  auto j = fingate::parseJson(reportJson(r), err);
  ASSERT_TRUE(j) << err;
  EXPECT_FALSE(j->flag("parity", true));
  EXPECT_NE(j->str("reason"), "");
  EXPECT_EQ(j->str("from"), "old");
  EXPECT_EQ(j->str("to"), "new");
  EXPECT_EQ(j->str("active"), "old");
  EXPECT_EQ(j->num("window_s"), 10);
  EXPECT_EQ(j->num("grace_s"), 2);
  EXPECT_EQ(j->str("started_at"), "2023-11-14T22:13:20.000Z");
  EXPECT_EQ(j->get("messages")->num("old"), 2);
  EXPECT_EQ(j->get("messages")->num("new"), 1);
  EXPECT_EQ(j->num("topics_checked"), 2);
  ASSERT_EQ(j->get("differing_topics")->array.size(), 1u);
  EXPECT_EQ(j->get("differing_topics")->array[0].string, "fin-1");
  const auto& topics = j->get("topics")->array;
  ASSERT_EQ(topics.size(), 2u);
  const fingate::Json& same = topics[0];
  EXPECT_EQ(same.str("topic"), "cap-1");
  EXPECT_TRUE(same.flag("parity"));
  EXPECT_EQ(same.num("old"), 1);
  EXPECT_EQ(same.num("new"), 1);
  EXPECT_EQ(same.str("digest_old"), same.str("digest_new"));
  EXPECT_EQ(same.str("digest_old").size(), 64u);
  EXPECT_EQ(same.num("missing_on_old", -1), 0);
  EXPECT_TRUE(same.get("first_difference")->isNull());
  const fingate::Json* d = topics[1].get("first_difference");
  ASSERT_TRUE(d && d->type == fingate::Json::Type::Object);
  EXPECT_EQ(topics[1].num("missing_on_new"), 1);
  EXPECT_EQ(d->str("seen_on"), "old");
  EXPECT_EQ(d->str("missing_on"), "new");
  EXPECT_EQ(d->str("seen_at"), "2023-11-14T22:13:22.003Z");
  EXPECT_EQ(d->str("message_id"), "only-old");
  EXPECT_EQ(d->str("type"), "result");
  EXPECT_EQ(d->str("sha256"), sha256Hex(result("only-old")));
  EXPECT_EQ(d->str("preview"), result("only-old"));

  auto small = fingate::parseJson(reportJson(r, /*only_differing*/ true), err);
  ASSERT_TRUE(small) << err;
  EXPECT_EQ(small->num("topics_checked"), 2);
  EXPECT_EQ(small->get("topics")->array.size(), 1u);
  EXPECT_EQ(small->num("topics_omitted"), 1);
}

TEST(VerifyReportTable, SaysTheVerdictAndTheFirstDifference) {
  Seen s;
  s.add(1, "fin-1", result("only-new"), kWindowFrom + 3);
  const std::string text = reportTable(matchObservations(s.all, params()));
  EXPECT_NE(text.find("DIFFERENCES"), std::string::npos) << text;
  EXPECT_NE(text.find("fin-1: seen on new at 2023-11-14T22:13:22.003Z, missing on old: result message_id only-new"),
            std::string::npos)
      << text;
  EXPECT_NE(text.find("DIFFERS"), std::string::npos) << text;
}

TEST(VerifyTime, Rfc3339) {
  EXPECT_EQ(rfc3339(0), "1970-01-01T00:00:00Z");
  EXPECT_EQ(rfc3339Ms(1'700'000'000'123), "2023-11-14T22:13:20.123Z");
  EXPECT_EQ(rfc3339Ms(5), "1970-01-01T00:00:00.005Z");
}

TEST(VerifyMatcher, EveryObservedTopicIsListedASilentOneWithZeroCounts) {
  Seen s;
  s.add(0, "cap-1", result("r1"), kWindowFrom + 10);
  s.add(1, "cap-1", result("r1"), kWindowFrom + 20);
  VerifyParams p = params();
  p.topics = {"soarca", "fin-1", "cap-1"};
  const VerifyReport r = matchObservations(s.all, p);
  EXPECT_TRUE(r.parity) << r.reason;
  ASSERT_EQ(r.topics.size(), 3u);
  const TopicResult* silent = topic(r, "fin-1");
  ASSERT_NE(silent, nullptr);
  EXPECT_TRUE(silent->parity());
  EXPECT_EQ(silent->count[0] + silent->count[1], 0u);
  EXPECT_EQ(silent->digest[0], silent->digest[1]);
  EXPECT_NE(reportJson(r).find("\"topics_checked\":3"), std::string::npos);
}
