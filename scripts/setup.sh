#!/usr/bin/env bash
# Installs the Debian 12 packages fingate needs (skips apt when all are present).
set -euo pipefail
PKGS=(build-essential libzmq3-dev cppzmq-dev libpaho-mqttpp-dev libpaho-mqtt-dev librdkafka-dev
  libcpp-httplib-dev libsimdjson-dev libyaml-cpp-dev libgtest-dev libgmock-dev libbenchmark-dev
  libspdlog-dev libfmt-dev libcli11-dev libssl-dev libasio-dev pkg-config cmake ninja-build ccache
  mosquitto mosquitto-clients kcat python3 openssl curl)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "setup: all ${#PKGS[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "setup: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
