// Endpoint (core/src/runtime): the router lane hands a message to the plugin itself when
// nothing is queued for the endpoint, and queues it for the dispatcher otherwise (FG_RETRY,
// or something already queued). The order of one source's messages must survive every switch
// between the two ways, and nothing may be lost or doubled.
#include "endpoint.hpp"

#include <gtest/gtest.h>

#include <string>
#include <thread>

#include "test_support.hpp"

namespace fingate::test {
namespace {

TEST(Endpoint, DirectAndQueuedPublishesKeepTheSourceOrder) {
  Registry registry;
  Router router(registry, 100000);
  EndpointConfig cfg;
  cfg.name = "lb";
  cfg.plugin = "loopback";
  // Room for one message: publish answers FG_RETRY whenever the plugin's worker lags.
  KeyValue capacity;
  capacity.key = "capacity";
  capacity.value = "1";
  cfg.options.push_back(capacity);
  EndpointOptions opts;
  opts.queue_capacity = 100000;
  auto ep = std::make_shared<Endpoint>(cfg, loadBuiltPlugin("loopback"), router, opts);
  // No routes: every message the loopback echoes back is dead-lettered as unroutable, in the
  // order the plugin accepted the publishes.
  router.setEndpoints({ep->routerEndpoint()});
  ep->start();
  ASSERT_EQ(ep->subscribe("#", 1), FG_OK);

  Endpoint::markCurrentThreadAsLane();  // this thread publishes directly when nothing is queued, like a lane
  const int n = 5000;
  for (int i = 0; i < n; ++i) {
    OutMessage m;
    m.topic = "t/" + std::to_string(i);
    m.payload = std::to_string(i);
    ep->send(std::move(m));  // one source = one thread, like a router lane
  }
  ASSERT_TRUE(waitFor([&] { return router.deadLetters().snapshot().size() >= static_cast<size_t>(n); }, 30s))
      << router.deadLetters().snapshot().size() << " of " << n << " came back";
  auto got = router.deadLetters().snapshot();
  ASSERT_EQ(got.size(), static_cast<size_t>(n));
  for (int i = 0; i < n; ++i)
    ASSERT_EQ(got[static_cast<size_t>(i)].topic, "t/" + std::to_string(i)) << "position " << i;
  EXPECT_EQ(ep->stats().out.load(), static_cast<uint64_t>(n));
  // Both ways were taken (otherwise this test shows nothing about the switches).
  EXPECT_GT(ep->stats().backpressure.load(), 0u);
  EXPECT_LT(ep->stats().backpressure.load(), static_cast<uint64_t>(n) * 100);
  ep->stop(1000);
}

// A publish the plugin refuses for good (here: a topic too long for a TCP frame) is
// dead-lettered and counted once, with its payload, never silently dropped.
TEST(Endpoint, RefusedPublishIsDeadLetteredOnce) {
  Registry registry;
  Router router(registry, 100);
  EndpointConfig cfg;
  cfg.name = "tcp";
  cfg.plugin = "tcp";
  KeyValue listen;
  listen.key = "listen";
  listen.value = "127.0.0.1:0";
  cfg.options.push_back(listen);
  auto ep = std::make_shared<Endpoint>(cfg, loadBuiltPlugin("tcp"), router, EndpointOptions{});
  router.setEndpoints({ep->routerEndpoint()});
  ep->start();
  OutMessage m;
  m.topic = std::string(70000, 't');
  m.payload = "x";
  ep->send(std::move(m));
  ASSERT_TRUE(waitFor([&] { return ep->stats().publish_errors.load() >= 1; }, 5s));
  std::this_thread::sleep_for(200ms);  // a second count would show by now
  EXPECT_EQ(ep->stats().publish_errors.load(), 1u);
  EXPECT_EQ(ep->stats().out.load(), 0u);
  auto dl = router.deadLetters().snapshot();
  ASSERT_EQ(dl.size(), 1u);
  EXPECT_EQ(dl[0].reason, "publish_failed");
  EXPECT_EQ(dl[0].payload, "x");
  ep->stop(1000);
}

}  // namespace
}  // namespace fingate::test
