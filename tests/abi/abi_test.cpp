// The loader refuses wrong plugins with a one-line reason; lifecycle calls are safe to repeat.
#include <gtest/gtest.h>

#include "test_support.hpp"

using namespace fingate;

namespace {

std::string loadError(const std::string& file, const std::string& expected_name) {
  try {
    PluginLibrary::load(std::string(BAD_PLUGINS_DIR) + "/libfingate-" + file + ".so", expected_name);
  } catch (const PluginError& e) {
    return e.what();
  }
  return "";
}

// ABI 1.1 is append-only: a plugin built against 1.0 loads and works, and the host reads nothing
// past its struct_size (the loader copies the descriptor into a zeroed one of its own).
TEST(Abi, AVersion10PluginStillLoadsAndWorks) {
  auto lib = PluginLibrary::load(std::string(BAD_PLUGINS_DIR) + "/libfingate-v10.so", "v10");
  EXPECT_EQ(lib->descriptor().ack, nullptr);
  EXPECT_EQ(lib->descriptor().close_session, nullptr);
  fingate::test::RecordingHost host;
  PluginInstance inst(lib, host, {});
  EXPECT_FALSE(inst.hasAck());
  EXPECT_FALSE(inst.canCloseSession());
  inst.ack(1, FG_OUTCOME_DELIVERED);  // a no-op, not a call into garbage
  EXPECT_EQ(inst.closeSession(1, "x"), FG_ERR_UNSUPPORTED);
  ASSERT_EQ(inst.start(), FG_OK);
  fg_message m{{"t", 1}, {"p", 1}, nullptr, 0, 0, 0};
  ASSERT_EQ(inst.publish(m, 0), FG_OK);
  auto got = host.next(std::chrono::seconds(1));
  ASSERT_TRUE(got);
  EXPECT_EQ(got->payload, "p");
  EXPECT_EQ(got->token, 0u);  // untracked: the 1.0 on_message
  inst.stop(100);
}

TEST(Abi, OtherMajorVersionIsRefused) {
  auto e = loadError("bad_major", "bad_major");
  EXPECT_NE(e.find("built for ABI major 2, host has 1"), std::string::npos) << e;
  EXPECT_EQ(e.find('\n'), std::string::npos);
}

TEST(Abi, ShortDescriptorIsRefused) {
  auto e = loadError("short_struct", "short_struct");
  EXPECT_NE(e.find("descriptor too short"), std::string::npos) << e;
}

TEST(Abi, MissingFunctionIsRefused) {
  auto e = loadError("missing_fn", "missing_fn");
  EXPECT_NE(e.find("lacks the required function publish"), std::string::npos) << e;
}

TEST(Abi, NameMismatchIsRefused) {
  auto e = loadError("wrong_name", "wrong_name");
  EXPECT_NE(e.find("plugin calls itself 'somebody_else', expected 'wrong_name'"), std::string::npos) << e;
}

TEST(Abi, NullEntryIsRefused) {
  auto e = loadError("null_entry", "null_entry");
  EXPECT_NE(e.find("returned NULL"), std::string::npos) << e;
}

TEST(Abi, MissingEntrySymbolIsRefused) {
  auto e = loadError("no_entry", "no_entry");
  EXPECT_NE(e.find("does not export fg_plugin_entry"), std::string::npos) << e;
}

TEST(Abi, MissingFileIsRefused) {
  auto e = loadError("does_not_exist", "does_not_exist");
  EXPECT_NE(e.find("cannot load"), std::string::npos) << e;
}

TEST(Abi, CreateErrorCarriesThePluginsMessage) {
  auto lib = test::loadBuiltPlugin("loopback");
  test::RecordingHost host;
  try {
    PluginInstance inst(lib, host, {{"mode", "sideways"}});
    FAIL() << "create accepted a bad mode";
  } catch (const PluginError& e) {
    EXPECT_STREQ(e.what(), "mode: expected echo or sink, got 'sideways'");
  }
}

TEST(Abi, LifecycleCallsAreSafeToRepeat) {
  auto lib = test::loadBuiltPlugin("loopback");
  EXPECT_EQ(lib->name(), "loopback");
  EXPECT_TRUE(lib->acceptsKey("mode"));
  EXPECT_FALSE(lib->acceptsKey("listen"));
  test::RecordingHost host;
  {
    PluginInstance never_started(lib, host, {});
    EXPECT_EQ(never_started.stop(100), FG_OK);  // stop before start
  }  // destroy without start
  PluginInstance inst(lib, host, {});
  EXPECT_EQ(inst.start(), FG_OK);
  EXPECT_EQ(inst.start(), FG_ERR_STATE);
  EXPECT_EQ(inst.subscribe("a/+", 7), FG_OK);
  EXPECT_EQ(inst.publish(fg_message{{"a/b", 3}, {"hi", 2}, nullptr, 0, 0, 0}, 11), FG_OK);
  auto m = host.next();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->sub_id, 7u);
  EXPECT_EQ(m->payload, "hi");
  EXPECT_TRUE(test::waitFor([&] { return host.deliveries().count(11) == 1; }));
  EXPECT_EQ(inst.stop(100), FG_OK);
  EXPECT_EQ(inst.stop(100), FG_OK);
  EXPECT_EQ(inst.publish(fg_message{{"a/b", 3}, {"hi", 2}, nullptr, 0, 0, 0}, 0), FG_ERR_STATE);
}

TEST(Abi, LoopbackBackPressureLosesNothing) {
  auto lib = test::loadBuiltPlugin("loopback");
  test::RecordingHost host;
  PluginInstance inst(lib, host, {});
  ASSERT_EQ(inst.start(), FG_OK);
  ASSERT_EQ(inst.subscribe("#", 1), FG_OK);
  host.retry_budget = 5;
  for (int i = 0; i < 3; ++i) {
    std::string p = std::to_string(i);
    ASSERT_EQ(inst.publish(fg_message{{"t", 1}, {p.data(), p.size()}, nullptr, 0, 0, 0}, 0), FG_OK);
  }
  for (int i = 0; i < 3; ++i) {
    auto m = host.next();
    ASSERT_TRUE(m);
    EXPECT_EQ(m->payload, std::to_string(i));
  }
}

}  // namespace
