#!/bin/sh
# A complete SOARCA fin in curl and POSIX shell, talking to fingate's HTTP transport
# (docs/transports.md, "HTTP"): it registers one capability ("echo"), long-polls for commands,
# and answers each with an ack and a result that echoes the command's variables.
#
#   FINGATE_URL=http://127.0.0.1:7420 FINGATE_HTTP_TOKEN=... examples/http_fin.sh
#
# Needs curl, sed and /proc/sys/kernel/random/uuid (Linux). For real fins, parse the JSON with
# jq: the sed below relies on the field order SOARCA (Go) writes.
set -eu

URL=${FINGATE_URL:-http://127.0.0.1:7420}
TOKEN=${FINGATE_HTTP_TOKEN:?set FINGATE_HTTP_TOKEN to the endpoint token}
SUFFIX=$(cut -c1-8 /proc/sys/kernel/random/uuid)
FIN_ID=${FIN_ID:-soarca-fin--shell-echo-$SUFFIX}
CAP_ID=${CAP_ID:-mod-shell-echo--$SUFFIX}
WAIT=${WAIT:-30}

uuid() { cat /proc/sys/kernel/random/uuid; }
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

# post TOPIC JSON: prints the HTTP status (202 = taken; the Fin-Outcome header says what became of it).
post() {
  curl -sS -o /dev/null -w '%{http_code}' -X POST \
    -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
    --data-binary "$2" "$URL/v1/publish/$1"
}

# poll TOPIC: prints one message and returns 0, or returns 1 after WAIT seconds with nothing.
poll() {
  out=$(curl -sS -w '\n%{http_code}' -H "Authorization: Bearer $TOKEN" "$URL/v1/poll/$1?wait=$WAIT") || return 2
  code=$(printf '%s' "$out" | tail -n 1)
  body=$(printf '%s' "$out" | sed '$d')
  case $code in
    200) printf '%s\n' "$body" | sed 's/" *: */":/g'; return 0 ;;   # "key": v -> "key":v
    204) return 1 ;;
    *) echo "poll $1: HTTP $code: $body" >&2; sleep 1; return 2 ;;
  esac
}

field() { printf '%s' "$1" | sed -n "s/^[^}]*\"$2\":\"\([^\"]*\)\".*/\1/p"; }

REG_ID=$(uuid)
REGISTER='{"type":"register","message_id":"'$REG_ID'","fin_id":"'$FIN_ID'","protocol_version":"0.0.1",'\
'"security":{"version":"0.0.1","channel_security":"plaintext"},"capabilities":[{"capability_id":"'$CAP_ID'",'\
'"type":"action","name":"Shell echo","version":"0.0.1","step":{"echo":{"type":"action","name":"echo",'\
'"description":"returns the command variables","external_references":[],"command":"echo","target":"'$FIN_ID'"}},'\
'"agent":{"shell":{"type":"soarca-fin","name":"'$FIN_ID'"}}}],"meta":{"timestamp":"'$(now)'","sender_id":"'$FIN_ID'"}}'

unregister() {
  post soarca '{"type":"unregister","message_id":"'$(uuid)'","fin_id":"'$FIN_ID'","all":false,'\
'"meta":{"timestamp":"'$(now)'","sender_id":"'$FIN_ID'"}}' >/dev/null || true
}

echo "registering $FIN_ID (capability $CAP_ID) at $URL"
status=$(post soarca "$REGISTER")
[ "$status" = 202 ] || { echo "register refused: HTTP $status" >&2; exit 1; }
trap 'unregister; exit 0' INT TERM

# SOARCA answers the register on the fin id.
while :; do
  if msg=$(poll "$FIN_ID"); then
    case $msg in
      *'"type":"ack"'*"$REG_ID"*) echo "registered"; break ;;
      *'"type":"nack"'*"$REG_ID"*) echo "SOARCA refused the register: $msg" >&2; exit 1 ;;
    esac
  fi
done

# Commands arrive on the capability id; each gets an ack, then a result.
while :; do
  msg=$(poll "$CAP_ID") || continue
  case $msg in *'"type":"command"'*) ;; *) continue ;; esac   # SOARCA's acks of our results
  id=$(field "$msg" message_id)
  context=$(printf '%s' "$msg" | sed -n 's/.*"context":\({[^}]*}\).*/\1/p')
  variables=$(printf '%s' "$msg" | sed -n 's/.*"variables":\({.*}\)},"meta".*/\1/p')
  echo "command $id"
  post "$CAP_ID" '{"type":"ack","message_id":"'"$id"'"}' >/dev/null
  result='{"type":"result","message_id":"'$(uuid)'","result":{"state":"success","context":'"${context:-{\}}"','\
'"variables":'"${variables:-{\}}"'},"meta":{"timestamp":"'$(now)'","sender_id":"'$CAP_ID'"}}'
  status=$(post "$CAP_ID" "$result")
  echo "result for $id: HTTP $status"
done
