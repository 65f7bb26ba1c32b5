/* One source, six deliberately wrong plugins (selected by a BAD_* define). Pure C, as a
 * plugin author outside the project would write it. */
#include <fingate/plugin.h>
#include <stddef.h>

static fg_instance* create(const fg_host_api* h, void* c, const fg_kv* kv, size_t n, char* e, size_t el) {
  (void)h; (void)c; (void)kv; (void)n; (void)e; (void)el;
  return NULL;
}
static void destroy(fg_instance* i) { (void)i; }
static fg_status start(fg_instance* i) { (void)i; return FG_OK; }
static fg_status stop(fg_instance* i, uint32_t t) { (void)i; (void)t; return FG_OK; }
static fg_status publish(fg_instance* i, const fg_message* m, uint64_t d) { (void)i; (void)m; (void)d; return FG_OK; }
static fg_status subscribe(fg_instance* i, fg_str f, uint64_t s) { (void)i; (void)f; (void)s; return FG_OK; }
static fg_status unsubscribe(fg_instance* i, uint64_t s) { (void)i; (void)s; return FG_OK; }
static const char* const keys[] = {NULL};

#if defined(BAD_BAD_MAJOR)
#define NAME "bad_major"
#define ABI ((2u << 16) | 0u)
#else
#define ABI FG_ABI_VERSION
#endif
#if defined(BAD_SHORT_STRUCT)
#define NAME "short_struct"
#define SIZE (offsetof(fg_plugin, publish))
#else
#define SIZE sizeof(fg_plugin)
#endif
#if defined(BAD_MISSING_FN)
#define NAME "missing_fn"
#define PUBLISH NULL
#else
#define PUBLISH publish
#endif
#if defined(BAD_WRONG_NAME)
#define NAME "somebody_else"
#endif
#if defined(BAD_NULL_ENTRY)
#define NAME "null_entry"
#endif
#if defined(BAD_NO_ENTRY)
#define NAME "no_entry"
#endif

static const fg_plugin desc = {ABI, SIZE, NAME, "0.0.1", 0, keys, create, destroy, start, stop, PUBLISH,
                               subscribe, unsubscribe, NULL, NULL};

#if defined(BAD_NO_ENTRY)
FG_EXPORT const fg_plugin* fg_plugin_entry_misspelled(uint32_t v) { (void)v; return &desc; }
#else
FG_EXPORT const fg_plugin* fg_plugin_entry(uint32_t v) {
  (void)v;
#if defined(BAD_NULL_ENTRY)
  return NULL;
#else
  return &desc;
#endif
}
#endif
