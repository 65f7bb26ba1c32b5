// fingate migrate plan / status: the gateway's answers (GET /v1/migration, GET /v1/fins) read,
// classified and shown (gateway/migrate_plan.hpp).
#include "migrate_plan.hpp"

#include <gtest/gtest.h>

#include <fingate/json.hpp>
#include <string>

using namespace fingate::cli;
using fingate::Json;

namespace {

Json parse(const std::string& text) {
  std::string err;
  auto j = fingate::parseJson(text, err);
  EXPECT_TRUE(j) << err << ": " << text;
  return j ? *j : Json{};
}

MigrationState state(const std::string& text) {
  MigrationState m;
  std::string err;
  EXPECT_TRUE(readMigrationState(parse(text), m, err)) << err;
  return m;
}

const char* kBefore =
    R"({"from":"old","to":"new","active":"old","passive":"new","mirror":true,"mirrored":{"old":12,"new":340},)"
    R"("mirror_failed":0,"bindings":{"old":5,"new":1},"switched_at":"","verify":null,"cutover_allowed":false,)"
    R"("cutover_refused_because":"no verify report yet: run fingate migrate verify"})";

const char* kFins = R"({"fins":[
  {"fin_id":"fin-a","endpoint":"old","session":0,"capabilities":["cap-a1","cap-a2"],"acked":true,"restored":false,"remote":false},
  {"fin_id":"fin-b","endpoint":"old","session":0,"capabilities":[],"acked":false,"restored":false,"remote":false},
  {"fin_id":"fin-c","endpoint":"edge","session":3,"capabilities":["cap-c"],"acked":true,"restored":false,"remote":false},
  {"fin_id":"fin-d","endpoint":"old","session":7,"capabilities":[],"acked":true,"restored":false,"remote":false},
  {"fin_id":"fin-e","endpoint":"old","session":0,"capabilities":[],"acked":true,"restored":false,"remote":true},
  {"fin_id":"fin-f","endpoint":"old","session":0,"capabilities":[],"acked":true,"restored":true,"remote":false},
  {"fin_id":"fin-g","endpoint":"new","session":0,"capabilities":[],"acked":true,"restored":false,"remote":false}
]})";

}  // namespace

TEST(MigratePlan, ClassifiesEveryBinding) {
  const Plan p = makePlan(state(kBefore), parse(kFins));
  EXPECT_EQ(p.from, "old");
  EXPECT_EQ(p.to, "new");
  EXPECT_EQ(p.active, "old");
  EXPECT_TRUE(p.mirror);
  ASSERT_EQ(p.move.size(), 2u);
  EXPECT_EQ(p.move[0].fin_id, "fin-a");
  EXPECT_EQ(p.move[0].capabilities, (std::vector<std::string>{"cap-a1", "cap-a2"}));
  EXPECT_EQ(p.move[0].endpoint, "old");
  EXPECT_TRUE(p.move[0].acked);
  EXPECT_EQ(p.move[1].fin_id, "fin-b");  // not acked yet: moves too
  EXPECT_FALSE(p.move[1].acked);
  ASSERT_EQ(p.stay.size(), 5u);
  EXPECT_EQ(p.stay[0].fin_id, "fin-c");
  EXPECT_EQ(p.stay[0].reason, "bound on 'edge', outside the migration");
  EXPECT_EQ(p.stay[1].fin_id, "fin-d");
  EXPECT_NE(p.stay[1].reason.find("session binding (session 7)"), std::string::npos);
  EXPECT_EQ(p.stay[2].fin_id, "fin-e");
  EXPECT_NE(p.stay[2].reason.find("another gateway instance"), std::string::npos);
  EXPECT_EQ(p.stay[3].fin_id, "fin-f");
  EXPECT_NE(p.stay[3].reason.find("restored"), std::string::npos);
  EXPECT_EQ(p.stay[4].fin_id, "fin-g");
  EXPECT_NE(p.stay[4].reason.find("already on 'new'"), std::string::npos);
  ASSERT_EQ(p.problems.size(), 1u);
  EXPECT_EQ(p.problems[0], "cutover refused now: no verify report yet: run fingate migrate verify");
}

TEST(MigratePlan, AllowedCutoverHasNoProblem) {
  std::string s = kBefore;
  s.replace(s.find("\"cutover_allowed\":false"), 23, "\"cutover_allowed\":true");
  EXPECT_TRUE(makePlan(state(s), parse(R"({"fins":[]})")).problems.empty());
}

TEST(MigratePlan, AfterTheCutoverTheNextSwitchIsTheRollback) {
  const MigrationState m =
      state(R"({"from":"old","to":"new","active":"new","passive":"old","mirror":true,"cutover_allowed":false,)"
            R"("cutover_refused_because":"active is already 'new'"})");
  const Plan p =
      makePlan(m, parse(R"({"fins":[{"fin_id":"f","endpoint":"new","session":0,"capabilities":["c"],"acked":true}]})"));
  ASSERT_EQ(p.move.size(), 1u);
  EXPECT_EQ(p.move[0].endpoint, "new");
  ASSERT_EQ(p.problems.size(), 1u);
  EXPECT_NE(p.problems[0].find("already cut over"), std::string::npos);
  EXPECT_NE(planText(p).find("moves to 'old' at rollback (1)"), std::string::npos) << planText(p);
}

TEST(MigratePlan, JsonFormat) {
  const Plan p = makePlan(state(kBefore), parse(kFins));
  const Json j = parse(planJson(p));
  EXPECT_EQ(j.str("from"), "old");
  EXPECT_EQ(j.str("to"), "new");
  EXPECT_EQ(j.str("active"), "old");
  EXPECT_TRUE(j.flag("mirror"));
  const auto& move = j.get("move")->array;
  ASSERT_EQ(move.size(), 2u);
  EXPECT_EQ(move[0].str("fin_id"), "fin-a");
  EXPECT_EQ(move[0].get("capabilities")->array.size(), 2u);
  EXPECT_EQ(move[0].str("endpoint"), "old");
  EXPECT_TRUE(move[0].flag("acked"));
  const auto& stay = j.get("stay")->array;
  ASSERT_EQ(stay.size(), 5u);
  EXPECT_EQ(stay[0].str("endpoint"), "edge");
  EXPECT_FALSE(stay[0].str("reason").empty());
  EXPECT_EQ(j.get("problems")->array.size(), 1u);
}

TEST(MigratePlan, TextNotesAFinNotAckedYet) {
  const std::string text = planText(makePlan(state(kBefore), parse(kFins)));
  EXPECT_NE(text.find("moves to 'new' at cutover (2):"), std::string::npos) << text;
  EXPECT_NE(text.find("fin-a on old, capabilities: cap-a1, cap-a2"), std::string::npos) << text;
  EXPECT_NE(text.find("note: not acked by SOARCA yet"), std::string::npos) << text;
  EXPECT_NE(text.find("fin-c on edge: bound on 'edge', outside the migration"), std::string::npos) << text;
}

TEST(MigrateStatus, ReadsAndShowsTheState) {
  const MigrationState m = state(
      R"({"from":"old","to":"new","active":"old","passive":"new","mirror":true,"mirrored":{"old":12,"new":340},)"
      R"("mirror_failed":2,"bindings":{"old":1,"new":0},"switched_at":"",)"
      R"("verify":{"parity":true,"at":"2026-01-01T00:00:00Z","age_s":3,"active":"old","messages":120,"topics":4,"report":{}},)"
      R"("cutover_allowed":true,"cutover_refused_because":""})");
  EXPECT_EQ(m.mirrored_from, 12u);
  EXPECT_EQ(m.mirrored_to, 340u);
  EXPECT_EQ(m.mirror_failed, 2u);
  EXPECT_EQ(m.bindings_from, 1u);
  EXPECT_TRUE(m.has_verify);
  EXPECT_EQ(m.verify_messages, 120u);
  const std::string text = statusText(m);
  EXPECT_NE(text.find("migration: old -> new"), std::string::npos) << text;
  EXPECT_NE(text.find("mirror:    on; copies published to old: 12, to new: 340, dead-lettered: 2"), std::string::npos)
      << text;
  EXPECT_NE(text.find("verify:    parity, 3 s ago"), std::string::npos) << text;
  EXPECT_NE(text.find("120 messages on 4 topics"), std::string::npos) << text;
  EXPECT_NE(text.find("cutover:   allowed"), std::string::npos) << text;

  const std::string before = statusText(state(kBefore));
  EXPECT_NE(before.find("verify:    no report yet"), std::string::npos) << before;
  EXPECT_NE(before.find("cutover:   refused: no verify report yet"), std::string::npos) << before;
}

TEST(MigrateStatus, RefusesAnAnswerWithoutTheSides) {
  MigrationState m;
  std::string err;
  EXPECT_FALSE(readMigrationState(parse(R"({"error":"x"})"), m, err));
  EXPECT_FALSE(err.empty());
  EXPECT_FALSE(readMigrationState(parse("[1]"), m, err));
}

TEST(MigratePlan, ShowsWhereEachFinWasLastHeard) {
  const std::string with_fins = std::string(kBefore).substr(0, std::string(kBefore).size() - 1) +
                                R"(,"fins":[{"fin_id":"fin-a","endpoint":"old","last_seen":{"old":"x","new":""},)"
                                R"("last_seen_age_s":{"old":3,"new":null}},)"
                                R"({"fin_id":"fin-b","endpoint":"old","last_seen":{"old":"","new":"y"},)"
                                R"("last_seen_age_s":{"old":null,"new":90}}]})";
  const MigrationState m = state(with_fins);
  ASSERT_EQ(m.heard.size(), 2u);
  EXPECT_EQ(m.heard.at("fin-a").from_s, 3);
  EXPECT_LT(m.heard.at("fin-a").to_s, 0);
  EXPECT_EQ(heardOn(m, false, 60), (std::vector<std::string>{"fin-a"}));
  EXPECT_TRUE(heardOn(m, true, 60).empty());  // fin-b spoke on new, but 90 s ago
  EXPECT_EQ(heardOn(m, true, 120), (std::vector<std::string>{"fin-b"}));
  EXPECT_NE(statusText(m).find("heard in the last 60 s on old: 1, on new: 0 (of 2)"), std::string::npos)
      << statusText(m);
  const Plan p = makePlan(m, parse(kFins));
  EXPECT_NE(planText(p).find("last heard on old: 3 s ago, on new: never"), std::string::npos) << planText(p);
  EXPECT_NE(planJson(p).find(R"("last_seen_age_s":{"old":3,"new":null})"), std::string::npos) << planJson(p);
}
