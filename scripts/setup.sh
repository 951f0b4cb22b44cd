#!/usr/bin/env bash
# Prepare a fresh Debian/Ubuntu machine: install the Debian packages, create .venv with the
# package and its test extras, and build the fake NVML library.
#   scripts/setup.sh        what the test suite drives: Prometheus with promtool, Alertmanager
#                           with amtool, VictoriaMetrics, Chromium, systemd-analyze, openssl, nginx,
#                           gcc
#   scripts/setup.sh demo   what the demo cannot do without: gcc (Prometheus stays optional)
set -euo pipefail
cd "$(dirname "$0")/.."

purpose=${1:-test}
case "$purpose" in
    test | demo) ;;
    *)
        echo "usage: $0 [test|demo]" >&2
        exit 2
        ;;
esac

missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
if [ "$purpose" = test ]; then
    command -v prometheus >/dev/null || missing+=(prometheus)
    command -v amtool >/dev/null || missing+=(prometheus-alertmanager)
    command -v victoria-metrics >/dev/null || missing+=(victoria-metrics)
    command -v chromium >/dev/null || missing+=(chromium)
    command -v systemd-analyze >/dev/null || missing+=(systemd)
    command -v openssl >/dev/null || missing+=(openssl)
    # the reverse proxy in front of the status service in the trusted-proxy tests
    command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
fi
if [ "${#missing[@]}" -gt 0 ]; then
    echo "installing Debian packages: ${missing[*]}"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/python -m simulator.fakenvml.build
