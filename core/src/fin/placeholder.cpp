// placeholder so the fin library is never empty
namespace fingate { [[maybe_unused]] static int fin_placeholder = 0; }
