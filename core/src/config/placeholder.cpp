// placeholder so the config library is never empty
namespace fingate { [[maybe_unused]] static int config_placeholder = 0; }
