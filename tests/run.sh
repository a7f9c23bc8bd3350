#!/usr/bin/env bash
# The whole test suite, from a clean clone: installs what the tests need (Debian packages, a venv with
# the project and its test extras), makes sure RabbitMQ and PostgreSQL are up, then lint, types and pytest.
# Usage: bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

missing=()
command -v ovs-vswitchd >/dev/null || missing+=(openvswitch-switch)
command -v arping >/dev/null || missing+=(arping)
command -v ping >/dev/null || missing+=(iputils-ping)
command -v ip >/dev/null || missing+=(iproute2)
command -v tcpdump >/dev/null || missing+=(tcpdump)
command -v ethtool >/dev/null || missing+=(ethtool)  # TX checksum offload off in VM namespaces
command -v dhclient >/dev/null || missing+=(isc-dhcp-client)   # the DHCP tests' clients
command -v busybox >/dev/null || missing+=(busybox)            # udhcpc, and udhcpd as a rogue server
command -v rabbitmq-server >/dev/null || missing+=(rabbitmq-server)
command -v pg_ctlcluster >/dev/null || missing+=(postgresql)
python3 -c 'import ensurepip' 2>/dev/null || missing+=(python3-venv)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The topology page's test: headless Chromium, and OCR to read its screenshot (no desktop extras).
ui_missing=()
command -v chromium >/dev/null || ui_missing+=(chromium)
command -v tesseract >/dev/null || ui_missing+=(tesseract-ocr tesseract-ocr-eng)
if [ ${#ui_missing[@]} -gt 0 ]; then
  echo "== installing ${ui_missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${ui_missing[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'

# A real Keystone for the tests, in a venv of its own (its pins need not agree with ours); its
# database and keys are made once, on first use (tests/support/keystone.py).
if [ ! -x .venv-keystone/bin/gunicorn ] || [ ! -x .venv-keystone/bin/keystone-manage ]; then
  echo "== installing Keystone (tests/support/keystone-requirements.txt)"
  [ -x .venv-keystone/bin/python ] || python3 -m venv .venv-keystone
  .venv-keystone/bin/pip install -q --disable-pip-version-check -r tests/support/keystone-requirements.txt
fi

port_open() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! port_open; then
  echo "== starting RabbitMQ"
  $SUDO rabbitmq-server -detached || true
  for _ in $(seq 1 90); do port_open && break; sleep 1; done
  port_open || { echo "RabbitMQ did not come up on 127.0.0.1:5672" >&2; exit 1; }
fi

# PostgreSQL for the store tests on the second backend (each test creates a database of its own).
pg_open() { (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; }
if ! pg_open; then
  echo "== starting PostgreSQL"
  for v in $(ls /etc/postgresql 2>/dev/null); do
    $SUDO pg_ctlcluster --skip-systemctl-redirect "$v" main start || true
  done
  for _ in $(seq 1 30); do pg_open && break; sleep 1; done
  pg_open || { echo "PostgreSQL did not come up on 127.0.0.1:5432" >&2; exit 1; }
fi

echo "== ruff"
.venv/bin/ruff check alcor plugins tests bench main.py
echo "== mypy"
.venv/bin/mypy alcor plugins
echo "== pytest"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
