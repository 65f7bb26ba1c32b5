/* A plugin as it was built against the ABI 1.0 header: its descriptor ends after `unsubscribe`
 * (no ack, no close_session), and it uses only the 1.0 host API. To prove that the host never
 * reads past struct_size, the descriptor is followed in memory by two non-NULL garbage pointers
 * exactly where 1.1 puts `ack` and `close_session`: a host that read them in place would call
 * address 0x1 and crash. Behaviour: publish hands the message back through on_message. */
#include <fingate/plugin.h>
#include <stddef.h>
#include <stdlib.h>

typedef struct v10_descriptor {
  uint32_t abi_version;
  uint32_t struct_size;
  const char* name;
  const char* version;
  uint32_t capabilities;
  const char* const* config_keys;
  fg_instance* (*create)(const fg_host_api*, void*, const fg_kv*, size_t, char*, size_t);
  void (*destroy)(fg_instance*);
  fg_status (*start)(fg_instance*);
  fg_status (*stop)(fg_instance*, uint32_t);
  fg_status (*publish)(fg_instance*, const fg_message*, uint64_t);
  fg_status (*subscribe)(fg_instance*, fg_str, uint64_t);
  fg_status (*unsubscribe)(fg_instance*, uint64_t);
} v10_descriptor;

typedef struct inst {
  const fg_host_api* host;
  void* ctx;
} inst;

static fg_instance* create(const fg_host_api* h, void* c, const fg_kv* kv, size_t n, char* e, size_t el) {
  (void)kv; (void)n; (void)e; (void)el;
  inst* i = (inst*)calloc(1, sizeof(inst));
  i->host = h;
  i->ctx = c;
  return (fg_instance*)i;
}
static void destroy(fg_instance* i) { free(i); }
static fg_status start(fg_instance* i) { (void)i; return FG_OK; }
static fg_status stop(fg_instance* i, uint32_t t) { (void)i; (void)t; return FG_OK; }
static fg_status publish(fg_instance* p, const fg_message* m, uint64_t d) {
  inst* i = (inst*)p;
  (void)d;
  return i->host->on_message(i->ctx, 1, m); /* 1.0 API only */
}
static fg_status subscribe(fg_instance* i, fg_str f, uint64_t s) { (void)i; (void)f; (void)s; return FG_OK; }
static fg_status unsubscribe(fg_instance* i, uint64_t s) { (void)i; (void)s; return FG_OK; }
static const char* const keys[] = {NULL};

static const struct {
  v10_descriptor d;
  void* after[2];
} blob = {{(1u << 16) | 0u, sizeof(v10_descriptor), "v10", "1.0.0", 0, keys, create, destroy, start, stop, publish,
           subscribe, unsubscribe},
          {(void*)1, (void*)1}};

FG_EXPORT const fg_plugin* fg_plugin_entry(uint32_t v) {
  (void)v;
  return (const fg_plugin*)&blob.d;
}
