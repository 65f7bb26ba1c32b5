// placeholder so the runtime library is never empty
namespace fingate { [[maybe_unused]] static int runtime_placeholder = 0; }
