// placeholder so the router library is never empty
namespace fingate { [[maybe_unused]] static int router_placeholder = 0; }
