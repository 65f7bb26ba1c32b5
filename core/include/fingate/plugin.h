/*
 * fingate transport plugin C ABI.
 *
 * One header, pure C, only <stdint.h> and <stddef.h>. A transport plugin is a shared library
 * (libfingate-<name>.so) that exports exactly one symbol:
 *
 *     const fg_plugin* fg_plugin_entry(uint32_t host_abi_version);
 *
 * Rules that hold for every item below:
 *  - Nothing crosses this boundary with C++ ownership: no STL, no exceptions, no operator new
 *    on one side and delete on the other. A function that throws across it is a plugin bug
 *    (the C++ SDK in plugin_sdk.hpp catches everything and returns FG_ERR_INTERNAL).
 *  - Strings are fg_str {data, len}: never assumed NUL-terminated, may contain any byte.
 *    Exceptions are the descriptor's `name`/`version`/`config_keys` and log/detail text,
 *    which are NUL-terminated C strings (documented per field).
 *  - Everything passed as a pointer into a call is BORROWED for the duration of that call
 *    only. Copy what you keep.
 *  - Structs start with `struct_size` where they can grow. New fields are only ever appended;
 *    a reader checks struct_size before touching a field past the first version's end.
 *  - Status codes (fg_status) are fixed forever; new ones may be appended.
 *
 * Versioning: FG_ABI_VERSION = major << 16 | minor. The host refuses a plugin whose major
 * differs from its own, or whose descriptor is shorter than the first version's.
 * A minor bump only appends fields/functions. The host copies a plugin's descriptor by its
 * struct_size into a zeroed descriptor of its own, so a member the plugin's build does not
 * have reads as NULL/0; a plugin checks host_api->struct_size before it uses a member that
 * was appended after 1.0 (the SDK does this for you).
 *
 * ABI 1.1 (appended; a 1.0 plugin still loads and works):
 *  - outcome tokens: a plugin hands a message in with host_api.on_message_tracked(..., token)
 *    and the host calls fg_plugin.ack(inst, token, outcome) exactly once when the message's
 *    fate is final (every routed copy delivered, or it was dead-lettered, refused or filtered).
 *  - typed events (host_api.on_event): a subscription confirmed *or refused* with its sub id
 *    and a status; per-connection facts (no-local) as flags; a session that answered
 *    FG_RETRY can take more.
 *  - per-session back-pressure: publish(session != 0) may answer FG_RETRY for that session
 *    alone; the host queues that session's messages in its own bounded queue and goes on with
 *    the other sessions; a session that stays full is closed with fg_plugin.close_session.
 *  - FG_DELIVERY_NO_RECEIVER: a publish that no subscriber or session received.
 */
#ifndef FINGATE_PLUGIN_H
#define FINGATE_PLUGIN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define FG_ABI_VERSION_MAJOR 1u
#define FG_ABI_VERSION_MINOR 1u
#define FG_ABI_VERSION ((FG_ABI_VERSION_MAJOR << 16) | FG_ABI_VERSION_MINOR)
#define FG_ABI_MAJOR(v) ((uint32_t)(v) >> 16)
#define FG_ABI_MINOR(v) ((uint32_t)(v)&0xffffu)

#define FG_PLUGIN_ENTRY_SYMBOL "fg_plugin_entry"

#if defined(_WIN32)
#define FG_EXPORT __declspec(dllexport)
#else
#define FG_EXPORT __attribute__((visibility("default")))
#endif

/* ---- status codes: values fixed forever ---------------------------------------------- */
typedef int32_t fg_status;
#define FG_OK 0                /* done */
#define FG_RETRY 1             /* temporarily full or busy: keep the item, try again later */
#define FG_ERR_INVALID_ARG 2   /* the arguments are wrong (bad topic, bad config value) */
#define FG_ERR_STATE 3         /* not allowed in the current state (not started, stopped, refused) */
#define FG_ERR_UNAVAILABLE 4   /* the peer/broker is not reachable now */
#define FG_ERR_UNSUPPORTED 5   /* the plugin does not implement this operation */
#define FG_ERR_FATAL 6         /* the instance cannot continue; the host will stop it */
#define FG_ERR_INTERNAL 7      /* a bug or an unexpected exception inside the plugin */

/* ---- plain data --------------------------------------------------------------------- */

/* A byte string. Not NUL-terminated. data may be NULL only when len is 0. */
typedef struct fg_str {
  const char* data;
  size_t len;
} fg_str;

/* One message header (Kafka record header, MQTT 5 user property, ...). */
typedef struct fg_header {
  fg_str key;
  fg_str value;
} fg_header;

/* A message crossing the boundary, in either direction. BORROWED for the call only.
 *  topic        the fin topic (`soarca`, a fin id or a capability id), without any
 *               transport prefix or template: plugins map it to their own naming.
 *  payload      the bytes, forwarded unchanged.
 *  headers      optional, may be NULL when header_count is 0.
 *  timestamp_ms Unix time in milliseconds when the transport received it; 0 = unknown.
 *  session      the client connection on session transports (TCP/ZeroMQ/HTTP server side),
 *               a plugin-chosen non-zero id unique for the instance's lifetime; 0 means
 *               "no session" (broker transports). On publish: non-zero = deliver to that
 *               session only (it need not have subscribed: that is the implicit binding of a
 *               register); 0 = deliver to every subscriber whose filter matches the topic. */
typedef struct fg_message {
  fg_str topic;
  fg_str payload;
  const fg_header* headers;
  size_t header_count;
  int64_t timestamp_ms;
  uint64_t session;
} fg_message;

/* A configuration entry: key as written in YAML, nested maps flattened with '.', e.g.
 * "listen", "tls.ca_file". Values are scalars as text (environment already expanded).
 * Both are NUL-terminated and BORROWED for the create() call only. */
typedef struct fg_kv {
  const char* key;
  const char* value;
} fg_kv;

/* Log levels for host_api.log. */
typedef int32_t fg_log_level;
#define FG_LOG_TRACE 0
#define FG_LOG_DEBUG 1
#define FG_LOG_INFO 2
#define FG_LOG_WARN 3
#define FG_LOG_ERROR 4

/* Instance states reported through host_api.on_state. */
typedef int32_t fg_state;
#define FG_STATE_STARTING 0     /* start() called, not yet usable */
#define FG_STATE_UP 1           /* connected / listening: publishes can succeed */
#define FG_STATE_DOWN 2         /* lost the broker/listener; the plugin is trying again */
#define FG_STATE_FAILED 3       /* needs operator action (bad credentials, ...); the plugin may
                                   keep retrying slowly and report UP once it is fixed */
#define FG_STATE_STOPPED 4      /* stop() finished */
#define FG_STATE_SUBSCRIBED 5   /* 1.0 only: a subscription was confirmed by the broker; detail =
                                   the decimal sub_id. 1.1 plugins send FG_EVENT_SUBSCRIPTION
                                   instead (which can also say "refused"); the host still
                                   accepts this from 1.0 plugins. */
#define FG_STATE_RECONNECTED 6  /* came back after DOWN, every subscription restored */

/* Session events reported through host_api.on_session. */
typedef int32_t fg_session_event;
#define FG_SESSION_OPENED 0
#define FG_SESSION_CLOSED 1

/* Delivery outcome reported through host_api.on_delivery. */
typedef int32_t fg_delivery;
#define FG_DELIVERY_OK 0       /* the transport took responsibility (QoS 1 PUBACK, Kafka ack, sent) */
#define FG_DELIVERY_FAILED 1   /* definitively not delivered */
#define FG_DELIVERY_NO_RECEIVER 2 /* 1.1: accepted, but no subscriber/session was there to take it
                                     (e.g. a session transport with no matching subscriber);
                                     the host dead-letters it like a failure */

/* Final outcome of an inbound message, given to fg_plugin.ack (ABI 1.1). */
typedef int32_t fg_outcome;
#define FG_OUTCOME_DELIVERED 0     /* every routed copy was delivered (on_delivery OK, or publish
                                      OK on a plugin without FG_CAP_DELIVERY) */
#define FG_OUTCOME_DEAD_LETTERED 1 /* at least one copy could not be delivered (or there was no
                                      route): it is in the dead-letter store, a command was nacked */
#define FG_OUTCOME_REFUSED 2       /* the gateway's rules refused it (invalid, foreign id, limit):
                                      dead-lettered, and nacked when its message_id was readable */
#define FG_OUTCOME_FILTERED 3      /* consumed on purpose, nothing to deliver (an echo of the
                                      gateway's own publish, an answer to a replayed register) */

/* Typed events a plugin reports through host_api.on_event (ABI 1.1). */
typedef int32_t fg_event_kind;
#define FG_EVENT_SUBSCRIPTION 1     /* sub_id's subscription is settled: status FG_OK = confirmed
                                       (MQTT SUBACK granted, Kafka assignment), anything else =
                                       refused for good (e.g. FG_ERR_STATE: the broker said no);
                                       detail may say why */
#define FG_EVENT_CONNECTION 2       /* facts of the current connection, in flags (FG_CONN_*);
                                       send it before FG_STATE_UP / FG_STATE_RECONNECTED */
#define FG_EVENT_SESSION_WRITABLE 3 /* `session` answered FG_RETRY to a publish and can now take
                                       more: the host resumes that session's queue. Send it once
                                       after each FG_RETRY (more is harmless). */

#define FG_CONN_NO_LOCAL (1u << 0)  /* this connection never hands back the instance's own
                                       publishes (MQTT 5 no-local): no echo window needed */

typedef struct fg_event {
  uint32_t struct_size;  /* sizeof(fg_event) of the sender's build; read members past it as 0 */
  fg_event_kind kind;
  uint64_t sub_id;       /* FG_EVENT_SUBSCRIPTION */
  uint64_t session;      /* FG_EVENT_SESSION_WRITABLE */
  fg_status status;      /* FG_EVENT_SUBSCRIPTION */
  uint32_t flags;        /* FG_EVENT_CONNECTION: FG_CONN_* bits */
  const char* detail;    /* NUL-terminated human text or NULL, BORROWED */
} fg_event;

/* Capability bits of a plugin (fg_plugin.capabilities). */
#define FG_CAP_SESSIONS (1u << 0)   /* has client sessions (server side); sets fg_message.session */
#define FG_CAP_NO_LOCAL (1u << 1)   /* never delivers back what this instance published: the
                                       host needs no echo window for it */
#define FG_CAP_DELIVERY (1u << 2)   /* calls on_delivery for every publish with delivery_id != 0 */
#define FG_CAP_SUBSCRIBE_ACK (1u << 3) /* settles each subscription later: FG_EVENT_SUBSCRIPTION
                                          (1.1: confirmed or refused) or FG_STATE_SUBSCRIBED (1.0:
                                          confirmed); a register is parked until then (bounded) */

/* ---- host API: what the host offers a plugin instance -------------------------------- */

/* Passed to create(). The table and host_ctx stay valid until destroy() returns.
 * Every function is thread-safe and may be called from any plugin thread, but never from
 * inside a host->plugin call on the same thread unless noted (publish/subscribe never call
 * back synchronously into on_message). */
typedef struct fg_host_api {
  uint32_t struct_size; /* sizeof(fg_host_api) of the host that built it */
  uint32_t abi_version; /* FG_ABI_VERSION of the host */

  /* A log line. msg is NUL-terminated, BORROWED. Never pass secrets. */
  void (*log)(void* host_ctx, fg_log_level level, const char* msg);

  /* An inbound message. msg is BORROWED: the host copies what it keeps before returning.
   * sub_id: the id given to subscribe() whose filter matched, or 0 for unsolicited client
   * publishes on session transports. Returns FG_OK (taken), FG_RETRY (queue full: keep the
   * message, stop reading from that source, call again later - this is back-pressure, the
   * plugin must not drop it), or FG_ERR_* (refused for good; the host logged and counted why). */
  fg_status (*on_message)(void* host_ctx, uint64_t sub_id, const fg_message* msg);

  /* Outcome of publish(..., delivery_id) when delivery_id != 0. Called once per such publish
   * that returned FG_OK, from any plugin thread. */
  void (*on_delivery)(void* host_ctx, uint64_t delivery_id, fg_delivery status);

  /* State change; detail is NUL-terminated text (may be NULL), BORROWED. */
  void (*on_state)(void* host_ctx, fg_state state, const char* detail);

  /* A client session opened or closed (FG_CAP_SESSIONS plugins). After FG_SESSION_CLOSED the
   * id is never reused by this instance; the host drops the session's bindings. */
  void (*on_session)(void* host_ctx, uint64_t session, fg_session_event event);

  /* Asks the host whether `session` may subscribe to `filter` (client-side subscribe on a
   * session transport). FG_OK = allowed; FG_ERR_STATE = refused (e.g. the id is bound to
   * another session, or a wildcard on a fins endpoint); reason (may be NULL) receives a
   * NUL-terminated explanation of at most reason_len bytes. */
  fg_status (*authorize_subscribe)(void* host_ctx, uint64_t session, fg_str filter, char* reason,
                                   size_t reason_len);

  /* ---- ABI 1.1 (check struct_size before use) ---- */

  /* Like on_message, with an outcome token. token != 0 asks the host to call
   * fg_plugin.ack(inst, token, outcome) exactly once, when the message's outcome is final, from
   * any host thread (never from inside this call). Only a call that returns FG_OK takes the
   * token: after FG_RETRY or FG_ERR_* the host will never ack it (the plugin still owns the
   * message and decides). Tokens are the plugin's: unique among its unacked messages. token 0 =
   * no ack wanted (the same as on_message). Same threading and return values as on_message. */
  fg_status (*on_message_tracked)(void* host_ctx, uint64_t sub_id, const fg_message* msg, uint64_t token);

  /* A typed event (fg_event, BORROWED). Never blocks; any plugin thread. */
  void (*on_event)(void* host_ctx, const fg_event* ev);
} fg_host_api;

/* ---- the plugin descriptor ------------------------------------------------------------ */

typedef struct fg_instance fg_instance; /* opaque, owned by the plugin */

typedef struct fg_plugin {
  uint32_t abi_version; /* FG_ABI_VERSION the plugin was built against */
  uint32_t struct_size; /* sizeof(fg_plugin) of the plugin's build */
  const char* name;     /* NUL-terminated, static: "tcp", "mqtt", ... must equal the name in
                           the config's `plugin:` key and the file name libfingate-<name>.so */
  const char* version;  /* NUL-terminated, static: the plugin's own version, e.g. "0.1.0" */
  uint32_t capabilities; /* FG_CAP_* bits */
  /* NULL-terminated static array of accepted config keys besides `plugin`/`role` (which the
   * host handles). A key ending in ".*" accepts every key with that prefix ("tls.*",
   * "rdkafka.*"). The host rejects any other key with file:line:col before create(). */
  const char* const* config_keys;

  /* Parses cfg and allocates an instance. Opens NO sockets and starts NO threads (so that
   * `fingate validate` can call it). host/host_ctx stay valid until destroy() returns.
   * On error returns NULL and writes a NUL-terminated message into errbuf (errlen bytes);
   * begin it with "<key>: " when it is about one key, so the host can point at its line.
   * Called from the host's main thread. */
  fg_instance* (*create)(const fg_host_api* host, void* host_ctx, const fg_kv* cfg, size_t n,
                         char* errbuf, size_t errlen);

  /* Frees the instance; calls stop() first if it is running. Safe on NULL. After it returns
   * the plugin makes no further host_api calls for this instance. Main thread. */
  void (*destroy)(fg_instance* inst);

  /* Opens sockets, starts I/O threads. Returns quickly: a connection that comes up later
   * is reported through on_state. Errors that will not heal (port in use) are returned.
   * Main thread. Calling start twice returns FG_ERR_STATE. */
  fg_status (*start)(fg_instance* inst);

  /* Stops I/O within timeout_ms (flushing what it can), joins its threads, and returns.
   * No host_api calls after it returns (except from destroy: none). Idempotent: a second
   * call returns FG_OK. Main thread. */
  fg_status (*stop)(fg_instance* inst, uint32_t timeout_ms);

  /* Sends msg (BORROWED: copy before returning). Must not block on the network: queue
   * and return. FG_RETRY = queue full, the host keeps the message and retries later.
   * Session transports (1.1): with msg->session != 0, FG_RETRY means "that session's buffer
   * is full" (keep it small, e.g. a few hundred KiB): the host keeps that session's messages
   * in the host's per-session queue, goes on with other sessions, and resumes the session on
   * FG_EVENT_SESSION_WRITABLE (or on a timer with 1.0 plugins). FG_ERR_STATE for a session
   * that is gone. With FG_CAP_DELIVERY the plugin reports FG_DELIVERY_OK once the bytes were
   * handed to the socket / acknowledged by the broker, FG_DELIVERY_FAILED when they never
   * will be (session closed first), FG_DELIVERY_NO_RECEIVER when no one was there to take
   * them (session == 0 and no subscriber matched).
   * delivery_id != 0 asks for an on_delivery callback (FG_CAP_DELIVERY plugins).
   * Called from host threads (the instance's dispatcher, or a router lane that publishes
   * directly while nothing is queued for the instance), never concurrently for one
   * instance; the calling thread may differ from call to call. */
  fg_status (*publish)(fg_instance* inst, const fg_message* msg, uint64_t delivery_id);

  /* Subscribes the instance to an MQTT-style filter (`+` one level, `#` the rest, levels
   * split on '/'); filter is BORROWED. Inbound matches are given to on_message with sub_id.
   * Broker transports subscribe on the broker (and restore it after a reconnect); session
   * transports deliver every client publish with sub_id 0 and may treat this as a no-op.
   * May be called before start(); any host thread, never concurrently with itself. */
  fg_status (*subscribe)(fg_instance* inst, fg_str filter, uint64_t sub_id);

  /* Removes the subscription sub_id. Unknown ids return FG_OK. Same threading as subscribe. */
  fg_status (*unsubscribe)(fg_instance* inst, uint64_t sub_id);

  /* ---- ABI 1.1 (optional: NULL or absent = not supported) ---- */

  /* The final outcome of the message handed in with `token` (on_message_tracked). Called
   * exactly once per token, from any host thread, possibly after stop() began (then it may be
   * ignored). Must not block and must not call back into the host synchronously. The plugin
   * now commits an offset, answers an HTTP request, or counts. */
  void (*ack)(fg_instance* inst, uint64_t token, fg_outcome outcome);

  /* Closes one client session (a slow consumer, a limit hit); reason is NUL-terminated text
   * the plugin may send to the client (TCP/ZeroMQ: an error frame) before closing. The plugin
   * then reports FG_SESSION_CLOSED as usual. Any host thread; must not block. */
  fg_status (*close_session)(fg_instance* inst, uint64_t session, const char* reason);
} fg_plugin;

/* The one exported symbol. Returns the static descriptor, or NULL when the plugin cannot
 * serve a host of host_abi_version (e.g. another major version). Must not allocate. */
typedef const fg_plugin* (*fg_plugin_entry_fn)(uint32_t host_abi_version);

#ifdef __cplusplus
} /* extern "C" */
#endif

#endif /* FINGATE_PLUGIN_H */
