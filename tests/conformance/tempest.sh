#!/usr/bin/env bash
# OpenStack's own network API tests (Tempest's tempest.api.network, and neutron-tempest-plugin's
# API tests) against the dev run, with a real Keystone in front (tokens validated by
# keystonemiddleware, Neutron's default policy). Takes minutes: not part of tests/run.sh.
#
# Usage: bash tests/conformance/tempest.sh [REGEX ...]   (default: ^tempest\.api\.network)
#        bash tests/conformance/tempest.sh '^tempest\.api\.network' '^neutron_tempest_plugin\.api'
# Prints passed/failed/skipped per regex; the run's files (tempest.conf, logs, subunit) stay in
# $OUT (default var/tempest).
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
OUT=${OUT:-$ROOT/var/tempest}
CONCURRENCY=${CONCURRENCY:-2}
[ $# -gt 0 ] || set -- '^tempest\.api\.network'

[ -x .venv/bin/python ] || { python3 -m venv .venv && .venv/bin/pip install -q -e '.[test]'; }
if [ ! -x .venv-keystone/bin/gunicorn ]; then
  echo "== installing Keystone"
  [ -x .venv-keystone/bin/python ] || python3 -m venv .venv-keystone
  .venv-keystone/bin/pip install -q --disable-pip-version-check -r tests/support/keystone-requirements.txt
fi
if [ ! -x .venv-tempest/bin/stestr ]; then
  echo "== installing Tempest"
  [ -x .venv-tempest/bin/python ] || python3 -m venv .venv-tempest
  .venv-tempest/bin/pip install -q --disable-pip-version-check -r tests/conformance/tempest-requirements.txt
fi

rm -rf "$OUT"; mkdir -p "$OUT"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

echo "== Keystone"
.venv/bin/python -m tests.support.keystone serve "$OUT/keystone" > "$OUT/keystone.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 300); do [ -s "$OUT/keystone/keystone.json" ] && break; sleep 1; done
[ -s "$OUT/keystone/keystone.json" ] || { echo "Keystone did not come up: $OUT/keystone.log" >&2; exit 1; }
KS_URL=$(.venv/bin/python -c 'import json,sys; print(json.load(open(sys.argv[1]))["url"])' "$OUT/keystone/keystone.json")

echo "== the dev run, with [api] auth = \"keystone\""
PORT=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
.venv/bin/python - "$OUT/keystone/keystone.json" > "$OUT/alcor.toml" <<'EOF'
import json, sys
ks = json.load(open(sys.argv[1]))
print('[api]\nauth = "keystone"')
# Neutron's default quotas (Tempest's quota tests count up to them); alcor's own are unlimited.
print('[quotas]\nquota_network = 100\nquota_subnet = 100\nquota_port = 500\nquota_router = 10')
print('quota_floatingip = 50')
print('quota_security_group = 10\nquota_security_group_rule = 100')
print('[keystone_authtoken]')
for k, v in ks["authtoken"].items():
    print(f"{k} = {json.dumps(v)}")
EOF
free() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# The embedded agent on ports of its own, leaving the host's Open vSwitch alone.
ALCOR_AGENT__OPENFLOW_LISTEN="tcp:127.0.0.1:$(free)" ALCOR_AGENT__HTTP="127.0.0.1:$(free)" \
ALCOR_AGENT__MANAGE_BRIDGE=false ALCOR_LOG__FORMAT=json \
  .venv/bin/python main.py --config "$OUT/alcor.toml" --port "$PORT" \
    --db "$OUT/alcor.db" > "$OUT/alcor.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 60); do curl -sf "http://127.0.0.1:$PORT/" >/dev/null && break; sleep 0.5; done
curl -sf "http://127.0.0.1:$PORT/" >/dev/null || { echo "the dev run did not come up: $OUT/alcor.log" >&2; exit 1; }

# The network service in Keystone's catalog; what the API lists is what Tempest may test. And the
# public network devstack makes for Tempest (flat on physnet "public", 172.24.4.0/24): the floating
# IP and router gateway tests need one (neutron-tempest-plugin's fail, Tempest's skip, without it).
read -r EXTENSIONS PUBLIC_NET <<<"$(.venv/bin/python - "$OUT/keystone/keystone.json" "$PORT" <<'EOF'
import json, sys
from pathlib import Path
sys.path.insert(0, ".")
from tests.support.keystone import Keystone
ks = json.load(open(sys.argv[1]))
k = Keystone(ks["url"], None, ks["projects"])
k.register_network(int(sys.argv[2]))
s = k.session("admin")
api = f"http://127.0.0.1:{sys.argv[2]}/v2.0"
exts = s.get(f"{api}/extensions").json()["extensions"]
r = s.post(f"{api}/networks", json={"network": {
    "name": "public", "router:external": True, "provider:network_type": "flat",
    "provider:physical_network": "public"}})
r.raise_for_status()
net = r.json()["network"]
s.post(f"{api}/subnets", json={"subnet": {
    "name": "public-subnet", "network_id": net["id"], "ip_version": 4, "cidr": "172.24.4.0/24",
    "gateway_ip": "172.24.4.1", "enable_dhcp": False}}).raise_for_status()
print(",".join(sorted(e["alias"] for e in exts)), net["id"])
EOF
)"
[ -n "$PUBLIC_NET" ] || { echo "could not create the public network: $OUT/alcor.log" >&2; exit 1; }
echo "   extensions: $EXTENSIONS"
echo "   public network: $PUBLIC_NET"

cat > "$OUT/tempest.conf" <<EOF
[DEFAULT]
log_file = $OUT/tempest.log
[auth]
admin_username = admin
admin_password = admin-secret
admin_project_name = admin
admin_domain_name = Default
use_dynamic_credentials = true
[identity]
uri_v3 = $KS_URL
auth_version = v3
region = RegionOne
[identity-feature-enabled]
api_v2 = false
[service_available]
neutron = true
nova = false
cinder = false
glance = false
swift = false
[network]
public_network_id = $PUBLIC_NET
floating_network_name = public
project_network_cidr = 10.100.0.0/16
project_networks_reachable = false
[network-feature-enabled]
api_extensions = $EXTENSIONS
ipv6 = true
ipv6_subnet_attributes = false
[validation]
run_validation = false
[enforce_scope]
neutron = false
EOF
TEST_PATH=$(.venv-tempest/bin/python -c 'import os, tempest.test_discover; print(os.path.dirname(tempest.test_discover.__file__))')
cat > "$OUT/.stestr.conf" <<EOF
[DEFAULT]
test_path=$TEST_PATH
top_dir=$(dirname "$(dirname "$TEST_PATH")")
EOF

cd "$OUT"
export TEMPEST_CONFIG_DIR=$OUT TEMPEST_CONFIG=tempest.conf
.venv() { "$ROOT/.venv-tempest/bin/$@"; }
.venv stestr init >/dev/null 2>&1 || true
status=0
for regex in "$@"; do
  echo "== $regex"
  .venv stestr run --concurrency "$CONCURRENCY" "$regex" > "run.$(echo "$regex" | tr -c 'a-z' _).log" 2>&1 || status=1
  .venv stestr last --subunit > last.subunit || true
  .venv subunit-stats < last.subunit | tee "stats.$(echo "$regex" | tr -c 'a-z' _).txt" || true
  .venv stestr failing --list 2>/dev/null | sed 's/^/   failing: /' || true
done
exit $status
