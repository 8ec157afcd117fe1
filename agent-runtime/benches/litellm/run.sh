#!/usr/bin/env bash
# Runs the `fanout` example (20 chats × 3 agents × 6 messages = 100 calls) against a real
# LiteLLM proxy on 127.0.0.1 whose one deployment allows `rpm: 60` (config.yaml beside this
# script). NOT run in CI: LiteLLM's windows are real UTC minutes, so one run takes minutes.
#
#   agent-runtime/benches/litellm/run.sh                 # limits configured: --rpm 60 --period-seconds 60
#   MODE=windows agent-runtime/benches/litellm/run.sh    # configured as LiteLLM counts: --rpm 59
#                                                        #   --period-seconds 60 --limiter fixed-window
#   MODE=learned agent-runtime/benches/litellm/run.sh    # nothing configured: learned from headers
#   RUNS=3 agent-runtime/benches/litellm/run.sh          # several runs, one after another
#   START_SECOND=0 agent-runtime/benches/litellm/run.sh  # each run starts at that second of a
#                                                        #   UTC minute (after a quiet minute)
#
# Installs litellm[proxy] into a virtualenv under target/ (LITELLM_VERSION, default 1.106.12;
# 1.107.x is refused: a compromised release). Prints each run's fanout report and the proxy's
# count of 429s (from its log). Needs python3 with venv and pip reaching PyPI.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../../.." && pwd)"
version="${LITELLM_VERSION:-1.106.12}"
case "$version" in
  1.107.*) echo "run.sh: litellm $version is a compromised release; use 1.106.x or earlier" >&2; exit 2 ;;
esac
port="${LITELLM_PORT:-4011}"
mode="${MODE:-configured}"
runs="${RUNS:-1}"
venv="${LITELLM_VENV:-$root/target/litellm-venv}"
log="${LITELLM_LOG:-$root/target/litellm-proxy.log}"

if [ ! -x "$venv/bin/litellm" ] || ! "$venv/bin/pip" show litellm 2>/dev/null | grep -qx "Version: $version"; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "litellm[proxy]==$version"
fi

cargo build --quiet -p turnstile-examples --example fanout
fanout="$root/target/debug/examples/fanout"

# The proxy refuses to start without a master key; a throwaway one for this loopback run.
key="sk-turnstile-bench-$(python3 -c 'import secrets; print(secrets.token_hex(16))')"
LITELLM_MASTER_KEY="$key" "$venv/bin/litellm" --config "$here/config.yaml" \
  --host 127.0.0.1 --port "$port" >"$log" 2>&1 &
proxy=$!
trap 'kill "$proxy" 2>/dev/null || true; wait "$proxy" 2>/dev/null || true' EXIT
healthy=false
for _ in $(seq 1 180); do
  if curl -fsS "http://127.0.0.1:$port/health/liveliness" >/dev/null 2>&1; then healthy=true; break; fi
  if ! kill -0 "$proxy" 2>/dev/null; then echo "run.sh: the proxy exited; see $log" >&2; exit 1; fi
  sleep 1
done
if [ "$healthy" != true ]; then echo "run.sh: the proxy did not answer within 180 s; see $log" >&2; exit 1; fi

limits=()
case "$mode" in
  configured) limits=(--rpm 60 --period-seconds 60) ;;
  # What docs/quota.md says to configure for a LiteLLM deployment with rpm: 60: its router
  # admits 59 per UTC minute.
  windows) limits=(--rpm 59 --period-seconds 60 --limiter fixed-window) ;;
  learned) ;;
  *) echo "run.sh: MODE must be configured, windows or learned, not $mode" >&2; exit 2 ;;
esac
for run in $(seq 1 "$runs"); do
  if [ -n "${START_SECOND:-}" ]; then
    # A fixed window's bound depends on the phase a run starts at. Runs back to back share the
    # proxy's minute (the second starts with the first's tail counted, which it cannot know):
    # let a whole minute pass without traffic, then start at the chosen second.
    sleep 60
    now=$(date -u +%s)
    sleep $(( (START_SECOND - now % 60 + 60) % 60 ))
  fi
  before=$(grep -c '429' "$log" || true)
  echo "== run $run ($mode), started at second $(date -u +%S) of the UTC minute"
  # A run with failed conversations exits non-zero; report it and go on to the next run.
  OPENAI_API_KEY="$key" "$fanout" --base-url "http://127.0.0.1:$port/v1" \
    --conversations 20 --agents 3 --max-messages 6 "${limits[@]}" || echo "== fanout exited with $?"
  after=$(grep -c '429' "$log" || true)
  echo "== proxy log lines mentioning 429 during the run: $((after - before))"
done
