// Redaction of what the gateway shows: URL user-info in URLs and free text, secret-named JSON
// keys and `authentication` objects in dead letters, and never a leak on input that is not JSON.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "redact.hpp"
#include "test_support.hpp"

using fingate::isSecretJsonKey;
using fingate::redactJsonSecrets;
using fingate::redactText;
using fingate::redactUrlUserinfo;

namespace {

// A command with credentials everywhere they can be: the CACAO authentication block, secret-named
// keys at depth, a URL with user-info in a variable. Every secret holds "SEKRIT".
const std::string kCommand =
    R"({"type":"command","message_id":"m-1","command":{"command":"ssh ls","authentication":{"id":"user-auth--1",)"
    R"("type":"user-auth","username":"root-SEKRIT-user","password":"pw-SEKRIT-1","kms":false,"nested":{"a":[1,"SEKRIT-n"]}},)"
    R"("context":{"timeout":1},"variables":{"__target":{"type":"string","value":"ssh://admin:url-SEKRIT@10.0.0.9:22/x"},)"
    R"("cfg":{"Api-Key":"SEKRIT-apikey","deep":[{"private_key":{"pem":"SEKRIT-pem"}},{"ACCESS_TOKEN":"SEKRIT-tok"}]},)"
    R"("x":{"Authorization":"Bearer SEKRIT-bearer","client_secret":12345,"passwd":null,"keep":"visible"}}},)"
    R"("meta":{"timestamp":"2026-01-01T00:00:00Z","sender_id":"s"}})";

// Everything shown for a dead letter's payload.
std::string shown(std::string_view payload) { return redactText(redactJsonSecrets(payload)); }

bool leaks(const std::string& out) {
  return out.find("SEKRIT") != std::string::npos || out.find("SEKR") != std::string::npos;
}

}  // namespace

TEST(RedactUrl, PasswordOfTheUserinfoIsMasked) {
  EXPECT_EQ(redactUrlUserinfo("tcp://user:pass@host:1883"), "tcp://user:***@host:1883");
  EXPECT_EQ(redactUrlUserinfo("ssl://u:p%40ss@[::1]:8883/"), "ssl://u:***@[::1]:8883/");
  EXPECT_EQ(redactUrlUserinfo("https://TOKEN@github.com/x@y"), "https://***@github.com/x@y");
  EXPECT_EQ(redactUrlUserinfo("tcp://u:p@ss@host"), "tcp://u:***@host");  // unencoded '@' in the password
  EXPECT_EQ(redactUrlUserinfo("tcp://:pw@host"), "tcp://:***@host");
  EXPECT_EQ(redactUrlUserinfo("tcp://host:1883"), "tcp://host:1883");
  EXPECT_EQ(redactUrlUserinfo("host:1883"), "host:1883");
  EXPECT_EQ(redactUrlUserinfo("mailto:a@b"), "mailto:a@b");
  EXPECT_EQ(redactUrlUserinfo("http://h/path?u=a:b@c"), "http://h/path?u=a:b@c");
  EXPECT_EQ(redactUrlUserinfo(redactUrlUserinfo("tcp://user:pass@host")), "tcp://user:***@host");
}

TEST(RedactText, EveryUrlInsideFreeText) {
  EXPECT_EQ(redactText("connect to tcp://fingate:s3cr3t@127.0.0.1:1883 failed; retry ssl://a:b@c:8883."),
            "connect to tcp://fingate:***@127.0.0.1:1883 failed; retry ssl://a:***@c:8883.");
  EXPECT_EQ(redactText("url 'tcp://u:p@h'"), "url 'tcp://u:***@h'");
  EXPECT_EQ(redactText("(tcp://u:p@h)"), "(tcp://u:***@h)");
  EXPECT_EQ(redactText("<tcp://u:p@h>"), "<tcp://u:***@h>");
  EXPECT_EQ(redactText("{\"url\":\"tcp://u:p@h:1\",\"x\":\"a@b\"}"), "{\"url\":\"tcp://u:***@h:1\",\"x\":\"a@b\"}");
  EXPECT_EQ(redactText("{\"url\":\"tcp:\\/\\/u:p@h:1\"}"), "{\"url\":\"tcp:\\/\\/u:***@h:1\"}");  // JSON's \/
  EXPECT_EQ(redactText("no url: user@example.org, a:b@c"), "no url: user@example.org, a:b@c");
  EXPECT_EQ(redactText("tcp://host:1883 then mail x@y"), "tcp://host:1883 then mail x@y");
  EXPECT_EQ(redactText("tcp://u:p@h\ntcp://v:q@i"), "tcp://u:***@h\ntcp://v:***@i");
  EXPECT_EQ(redactText(""), "");
  EXPECT_EQ(redactText("://"), "://");
  EXPECT_EQ(redactText("x://@"), "x://***@");
  std::string once = redactText("a tcp://user:pass@host b");
  EXPECT_EQ(redactText(once), once);
}

TEST(RedactJson, SecretKeyNames) {
  for (const char* k : {"password", "PassWord", "db_password", "passwd", "pwd", "token", "access_token", "X-Auth-Token",
                        "secret", "client_secret", "private_key", "privateKey", "private-key", "api_key", "ApiKey",
                        "API-KEY", "authorization", "Authorization", "credentials", "cookie", "authentication"})
    EXPECT_TRUE(isSecretJsonKey(k)) << k;
  for (const char* k : {"type", "message_id", "username", "command", "context", "variables", "value", "keep", "id",
                        "capability_id", "fin_id", "authentication_info"})
    EXPECT_FALSE(isSecretJsonKey(k)) << k;
}

TEST(RedactJson, CommandCredentialsAndSecretKeysAtAnyDepth) {
  std::string out = shown(kCommand);
  EXPECT_FALSE(leaks(out)) << out;
  // The authentication object keeps its keys, loses every value.
  EXPECT_NE(out.find(R"("authentication":{"id":"***","type":"***","username":"***","password":"***","kms":"***","nested":"***"})"),
            std::string::npos)
      << out;
  EXPECT_NE(out.find(R"("Api-Key":"***")"), std::string::npos) << out;
  EXPECT_NE(out.find(R"({"private_key":"***"})"), std::string::npos) << out;
  EXPECT_NE(out.find(R"({"ACCESS_TOKEN":"***"})"), std::string::npos) << out;
  EXPECT_NE(out.find(R"("Authorization":"***","client_secret":"***","passwd":"***","keep":"visible")"), std::string::npos)
      << out;
  EXPECT_NE(out.find(R"("value":"ssh://admin:***@10.0.0.9:22/x")"), std::string::npos) << out;
  // Everything else byte for byte.
  EXPECT_NE(out.find(R"({"type":"command","message_id":"m-1","command":{"command":"ssh ls",)"), std::string::npos);
  EXPECT_NE(out.find(R"("meta":{"timestamp":"2026-01-01T00:00:00Z","sender_id":"s"}})"), std::string::npos);
  // Idempotent, and the input is untouched (the stored message stays whole).
  EXPECT_EQ(shown(out), out);
  EXPECT_NE(kCommand.find("pw-SEKRIT-1"), std::string::npos);
}

TEST(RedactJson, CapturedCommandVector) {
  const std::string v = fingate::test::vectorBytes("03-a-command-auth.json");
  ASSERT_FALSE(v.empty());
  std::string out = redactJsonSecrets(v);
  EXPECT_NE(out.find(R"("authentication":{"id":"***","type":"***","username":"***","password":"***","kms":"***"})"),
            std::string::npos)
      << out;
  EXPECT_EQ(out.find("\"soarca\""), std::string::npos) << out;  // the username
  // The rest of the vector is unchanged.
  auto a = v.find("\"authentication\"");
  ASSERT_NE(a, std::string::npos);
  EXPECT_EQ(out.substr(0, a), v.substr(0, a));
  auto ctx = v.find(",\"context\"");
  EXPECT_EQ(out.substr(out.find(",\"context\"")), v.substr(ctx));
}

TEST(RedactJson, EscapesWhitespaceAndOddValues) {
  EXPECT_EQ(redactJsonSecrets(R"({"\u0070assword":"x1"})"), R"({"\u0070assword":"***"})");
  EXPECT_EQ(redactJsonSecrets(R"({"pass\u0077ord" : "x1"})"), R"({"pass\u0077ord" : "***"})");
  EXPECT_EQ(redactJsonSecrets(" { \"token\" :\n[1,{\"a\":\"}\"}] , \"b\" : true } "),
            " { \"token\" :\n\"***\" , \"b\" : true } ");
  EXPECT_EQ(redactJsonSecrets(R"({"secret":"a\"b\\"})"), R"({"secret":"***"})");
  EXPECT_EQ(redactJsonSecrets(R"([{"password":1},{"password":-1.5e3},{"password":false}])"),
            R"([{"password":"***"},{"password":"***"},{"password":"***"}])");
  EXPECT_EQ(redactJsonSecrets(R"({"authentication":"plain-string"})"), R"({"authentication":"***"})");
  EXPECT_EQ(redactJsonSecrets(R"({"authentication":{}})"), R"({"authentication":{}})");
  EXPECT_EQ(redactJsonSecrets(R"({"a":"password","b":["token"]})"), R"({"a":"password","b":["token"]})");  // values are not keys
  EXPECT_EQ(redactJsonSecrets("[]"), "[]");
  EXPECT_EQ(redactJsonSecrets("\"just a string\""), "\"just a string\"");
  EXPECT_EQ(redactJsonSecrets("42"), "42");
  EXPECT_EQ(redactJsonSecrets(""), "");
}

TEST(RedactJson, InvalidJsonNeverLeaks) {
  // Cut at the first secret-looking word after the point where it stops being JSON.
  EXPECT_EQ(redactJsonSecrets(R"({"a": tru e, "b": 1, "password": "SEKRIT"})"), R"({"a": tru e, "b": 1, "***)");
  EXPECT_EQ(redactJsonSecrets(R"({"a":1} trailing "Pass-Word":"SEKRIT")"), R"({"a":1} trailing "***)");
  EXPECT_EQ(redactJsonSecrets("not json at all"), "not json at all");
  EXPECT_EQ(redactJsonSecrets("not json, token=SEKRIT"), "not json, ***");
  EXPECT_EQ(redactJsonSecrets(R"({"a" "b", "x":"\u0070assword:SEKRIT"})"), R"({"a" "b", "x":"***)");  // escapes too
  // Inside an authentication object or a secret value: cut right there.
  EXPECT_EQ(redactJsonSecrets(R"({"authentication":{"user":"x" "pw":"SEKRIT"}})"), R"({"authentication":{"user":"***" ***)");
  EXPECT_EQ(redactJsonSecrets(R"({"password":"SEKRIT)"), R"({"password":***)");
  EXPECT_EQ(redactJsonSecrets(R"({"password":{"a":"SEKRIT")"), R"({"password":***)");
  EXPECT_EQ(redactJsonSecrets("{\"token\":"), "{\"token\":***");
}

TEST(RedactJson, NoPrefixOfTheCommandLeaks) {
  // Dead letters keep the first 4 KiB: a payload can end anywhere.
  for (size_t n = 0; n <= kCommand.size(); ++n) {
    std::string out = shown(kCommand.substr(0, n));
    ASSERT_FALSE(leaks(out)) << "prefix " << n << ": " << out;
  }
}

TEST(RedactJson, RandomMutationsNeverLeakOrCrash) {
  std::mt19937 rng(8);
  const std::string alphabet = "{}[]\",:\\ \n0a\x01\xff";
  for (int i = 0; i < 20000; ++i) {
    std::string s = kCommand;
    int edits = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < edits; ++k) {
      size_t at = rng() % s.size();
      switch (rng() % 3) {
        case 0: s[at] = alphabet[rng() % alphabet.size()]; break;
        case 1: s.erase(at, 1 + rng() % 3); break;
        default: s.insert(at, 1, alphabet[rng() % alphabet.size()]); break;
      }
    }
    std::string out = shown(s);
    // A mutation can break a key's name (then it is no longer secret-named) but never expose
    // the authentication block or the secret-named values that stayed intact.
    for (const char* secret : {"pw-SEKRIT-1", "SEKRIT-apikey", "SEKRIT-pem", "SEKRIT-tok", "SEKRIT-bearer"}) {
      std::string sec = secret;
      if (s.find(sec) == std::string::npos) continue;
      // Was the key in front of it intact? Only then is hiding it required.
      size_t at = s.find(sec);
      std::string before = s.substr(at >= 40 ? at - 40 : 0, at >= 40 ? 40 : at);
      bool key_intact = before.find("\"password\":\"") != std::string::npos ||
                        before.find("\"Api-Key\":\"") != std::string::npos ||
                        before.find("{\"private_key\":{\"pem\":\"") != std::string::npos ||
                        before.find("{\"ACCESS_TOKEN\":\"") != std::string::npos ||
                        before.find("\"Authorization\":\"Bearer ") != std::string::npos;
      if (key_intact) {
        ASSERT_EQ(out.find(sec), std::string::npos) << "input: " << s << "\noutput: " << out;
      }
    }
  }
}

TEST(RedactText, TextCutInsideTheUserinfo) {
  EXPECT_EQ(redactText("x tcp://user:pa"), "x tcp://user:***");
  EXPECT_EQ(redactText("x tcp://user:"), "x tcp://user:");
  EXPECT_EQ(redactText("x tcp://host:18"), "x tcp://host:18");
  EXPECT_EQ(redactText("x tcp://[::1"), "x tcp://[::1");
  EXPECT_EQ(redactText("x tcp://host:1883 y"), "x tcp://host:1883 y");
  // A port closed by the sentence's punctuation at the end of the text is still a port.
  EXPECT_EQ(redactText("up (listening on tcp://127.0.0.1:35097)"), "up (listening on tcp://127.0.0.1:35097)");
  EXPECT_EQ(redactText("x tcp://host:1883."), "x tcp://host:1883.");
  EXPECT_EQ(redactText("x tcp://user:pa)"), "x tcp://user:***");
}

TEST(RedactText, UrlInsideWhatLooksLikeAnotherAuthority) {
  EXPECT_EQ(redactText("a://b://c:d@e"), "a://b://c:***@e");
  EXPECT_EQ(redactText("proxy http://p:1//tcp://u:pw@h"), "proxy http://p:1//tcp://u:***@h");
}
