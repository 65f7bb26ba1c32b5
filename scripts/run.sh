#!/usr/bin/env bash
# One command: install what is missing, build, and run the gateway on config/fingate.yaml
# (TCP orchestrator endpoint 127.0.0.1:7400, TCP fins endpoint 127.0.0.1:7410, admin 127.0.0.1:9400).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/build.sh
exec build/bin/fingate run "${1:-config/fingate.yaml}"
