// Endpoint (core/src/runtime): the router lane hands a message to the plugin itself when
// nothing is queued for the endpoint, and queues it for the dispatcher otherwise (FG_RETRY,
// or something already queued). The order of one source's messages must survive every switch
// between the two ways, and nothing may be lost or doubled.
#include "endpoint.hpp"

#include <gtest/gtest.h>

#include <string>

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
  ASSERT_TRUE(ep->subscribe("#", 1));

  const int n = 5000;
  for (int i = 0; i < n; ++i) {
    OutMessage m;
    m.topic = "t/" + std::to_string(i);
    m.payload = std::to_string(i);
    ASSERT_TRUE(ep->send(std::move(m))) << i;  // one source = one thread, like a router lane
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

}  // namespace
}  // namespace fingate::test
