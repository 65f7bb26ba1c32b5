// The migration's admin API on a real in-process gateway (loopback endpoints, no broker): what
// GET /v1/migration shows, when POST /v1/migration/cutover is refused and why, that switches
// move bindings and survive a restart (state_dir/migration.json), and the bad requests.
#include <gtest/gtest.h>

#include <fingate/admin_client.hpp>
#include <fingate/gateway.hpp>
#include <fingate/json.hpp>

#include "test_support.hpp"

using namespace fingate;
using fingate::test::readFile;
using fingate::test::tempDir;
using fingate::test::vectorBytes;

namespace {

const std::string kFin = "soarca-fin--pingpong-f877bb3a-bb37-429e-8ece-2d4286cf326d";

Config pairConfig(const std::string& state_dir, const std::string& extra = "") {
  return parseConfig(std::string("plugins_dir: ") + FINGATE_PLUGINS_DIR + "\nstate_dir: " + state_dir + R"(
admin: { listen: 127.0.0.1:0 }
endpoints:
  orch: { plugin: loopback, role: orchestrator }
  old: { plugin: loopback, role: fins, mode: sink }
  new: { plugin: loopback, role: fins, mode: sink }
migration:
  from: old
  to: new
)" + extra,
                     "migration-test.yaml");
}

struct Answer {
  int status = 0;
  Json json;
  std::string body;
};

Answer call(Gateway& gw, const std::string& method, const std::string& path, const std::string& body = "") {
  AdminResponse r = adminRequest("127.0.0.1", gw.adminPort(), method, path, "", body, 5000);
  EXPECT_TRUE(r.error.empty()) << r.error;
  Answer a;
  a.status = r.status;
  a.body = r.body;
  std::string error;
  auto j = parseJson(r.body, error);
  EXPECT_TRUE(j) << "not JSON: " << r.body;
  if (j) a.json = *j;
  return a;
}

std::string refusal(const Answer& a) { return a.json.str("error"); }

void registerFinOn(Gateway& gw, const std::string& side) {
  Envelope e;
  e.topic = "soarca";
  e.assignPayload(vectorBytes("01-a-register.json"));
  gw.router().route(side, std::move(e));
}

TEST(MigrationAdmin, CutoverOnlyAfterAPassingVerifyWithTheMirrorOnThenRollback) {
  const std::string state = tempDir("migration-admin");
  {
    Gateway gw(pairConfig(state));
    gw.start();
    registerFinOn(gw, "new");  // a register on the passive side binds to the active one

    Answer s = call(gw, "GET", "/v1/migration");
    ASSERT_EQ(s.status, 200) << s.body;
    EXPECT_EQ(s.json.str("active"), "old");
    EXPECT_EQ(s.json.str("passive"), "new");
    EXPECT_FALSE(s.json.flag("mirror", true));
    EXPECT_EQ(s.json.get("bindings")->num("old"), 1);
    EXPECT_FALSE(s.json.flag("cutover_allowed", true));
    EXPECT_TRUE(s.json.get("verify")->isNull());
    // The fin was heard on the new side only.
    const Json* fins = s.json.get("fins");
    ASSERT_TRUE(fins && fins->array.size() == 1) << s.body;
    EXPECT_EQ(fins->array[0].str("fin_id"), kFin);
    EXPECT_TRUE(fins->array[0].get("last_seen_age_s")->get("old")->isNull());
    EXPECT_EQ(fins->array[0].get("last_seen_age_s")->get("new")->type, Json::Type::Number);

    Answer c = call(gw, "POST", "/v1/migration/cutover");
    EXPECT_EQ(c.status, 409);
    EXPECT_NE(refusal(c).find("the mirror is off"), std::string::npos) << c.body;

    EXPECT_EQ(call(gw, "POST", "/v1/migration/mirror?enabled=true").status, 200);
    c = call(gw, "POST", "/v1/migration/cutover");
    EXPECT_EQ(c.status, 409);
    EXPECT_NE(refusal(c).find("no verify report yet"), std::string::npos) << c.body;

    EXPECT_EQ(call(gw, "POST", "/v1/migration/verify?parity=false&messages=10&topics=2",
                   R"({"parity":false,"differing_topics":["cap-1"]})")
                  .status,
              200);
    c = call(gw, "POST", "/v1/migration/cutover");
    EXPECT_EQ(c.status, 409);
    EXPECT_NE(refusal(c).find("found differences"), std::string::npos) << c.body;
    s = call(gw, "GET", "/v1/migration");
    EXPECT_EQ(s.json.get("verify")->get("report")->get("differing_topics")->array.at(0).string, "cap-1");

    ASSERT_EQ(call(gw, "POST", "/v1/migration/verify?parity=true&messages=10&topics=2", R"({"parity":true})").status,
              200);
    EXPECT_TRUE(call(gw, "GET", "/v1/migration").json.flag("cutover_allowed"));
    c = call(gw, "POST", "/v1/migration/cutover");
    ASSERT_EQ(c.status, 200) << c.body;
    EXPECT_EQ(c.json.str("active"), "new");
    EXPECT_EQ(c.json.num("moved"), 1);
    EXPECT_EQ(gw.router().registry().lookup(kFin)->endpoint, "new");
    c = call(gw, "POST", "/v1/migration/cutover");
    EXPECT_EQ(c.status, 409);
    EXPECT_NE(refusal(c).find("already cut over"), std::string::npos) << c.body;
    EXPECT_NE(gw.metricsText().find("fingate_migration_active{endpoint=\"new\"} 1"), std::string::npos);
    gw.stop();
  }
  // The switch is kept across a restart, and so are the bindings (on the new side).
  Json saved;
  std::string error;
  auto j = parseJson(readFile(state + "/migration.json"), error);
  ASSERT_TRUE(j) << error;
  EXPECT_EQ(j->str("active"), "new");
  EXPECT_TRUE(j->flag("mirror"));
  {
    Gateway gw(pairConfig(state));
    gw.start();
    Answer s = call(gw, "GET", "/v1/migration");
    EXPECT_EQ(s.json.str("active"), "new");
    EXPECT_TRUE(s.json.flag("mirror"));
    EXPECT_EQ(gw.router().registry().lookup(kFin)->endpoint, "new");

    Answer r = call(gw, "POST", "/v1/migration/rollback");
    ASSERT_EQ(r.status, 200) << r.body;
    EXPECT_EQ(r.json.str("active"), "old");
    EXPECT_EQ(r.json.num("moved"), 1);
    EXPECT_EQ(gw.router().registry().lookup(kFin)->endpoint, "old");
    r = call(gw, "POST", "/v1/migration/rollback");
    EXPECT_EQ(r.status, 409);
    // A report from before the switch does not allow the next cutover.
    ASSERT_EQ(call(gw, "POST", "/v1/migration/verify?parity=true", R"({"parity":true})").status, 200);
    ASSERT_EQ(call(gw, "POST", "/v1/migration/cutover").status, 200);
    ASSERT_EQ(call(gw, "POST", "/v1/migration/rollback").status, 200);
    Answer c = call(gw, "POST", "/v1/migration/cutover");
    EXPECT_EQ(c.status, 409);
    EXPECT_NE(refusal(c).find("before the last switch"), std::string::npos) << c.body;
    gw.stop();
  }
}

TEST(MigrationAdmin, BadRequestsAreClearErrors) {
  Gateway gw(pairConfig(tempDir("migration-bad")));
  gw.start();
  EXPECT_EQ(call(gw, "POST", "/v1/migration/mirror").status, 400);
  EXPECT_EQ(call(gw, "POST", "/v1/migration/mirror?enabled=yes").status, 400);
  EXPECT_EQ(call(gw, "POST", "/v1/migration/verify?parity=maybe").status, 400);
  Answer a = call(gw, "POST", "/v1/migration/verify?parity=true", "not json");
  EXPECT_EQ(a.status, 400);
  EXPECT_NE(refusal(a).find("not a JSON object"), std::string::npos);
  EXPECT_EQ(call(gw, "POST", "/v1/migration/verify?parity=true&messages=-1").status, 400);
  EXPECT_EQ(call(gw, "POST", "/v1/migration/jump").status, 404);
  gw.stop();
}

TEST(MigrationAdmin, NoMigrationConfiguredIs404) {
  Gateway gw(parseConfig(std::string("plugins_dir: ") + FINGATE_PLUGINS_DIR + R"(
admin: { listen: 127.0.0.1:0 }
endpoints:
  orch: { plugin: loopback, role: orchestrator }
)",
                         "none.yaml"));
  gw.start();
  Answer a = call(gw, "GET", "/v1/migration");
  EXPECT_EQ(a.status, 404);
  EXPECT_NE(refusal(a).find("no migration configured"), std::string::npos);
  EXPECT_EQ(call(gw, "POST", "/v1/migration/cutover").status, 404);
  gw.stop();
}

TEST(MigrationAdmin, ASessionTransportCannotBeASideOfAMigration) {
  Config cfg = parseConfig(std::string("plugins_dir: ") + FINGATE_PLUGINS_DIR + R"(
endpoints:
  orch: { plugin: loopback, role: orchestrator }
  old: { plugin: loopback, role: fins }
  edge: { plugin: tcp, role: fins, listen: 127.0.0.1:0 }
migration: { from: old, to: edge }
)",
                           "session.yaml");
  try {
    validateConfig(cfg);
    ADD_FAILURE() << "a tcp endpoint was accepted as a side of a migration";
  } catch (const ConfigError& e) {
    EXPECT_EQ(e.mark().line, 6);
    EXPECT_NE(e.message().find("session transport"), std::string::npos) << e.what();
  }
}

}  // namespace
