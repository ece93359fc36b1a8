#!/usr/bin/env bash
# The Ambit demo on a fresh Debian machine (as root): builds the workspace, brings the example
# application of examples/shop up on a two-node sandbox (network namespaces, the real
# controller and ztunnels), sends traffic, shows it is mutually authenticated, applies a deny
# policy and shows the refusal, calls an outside host by name through a ServiceEntry (the DNS
# proxy answers with an allocated address), then adds a waypoint (L7): a 90/10 split, header routing and an
# L7 policy, with the waypoint's request metrics; then an ingress gateway: a client in the
# outside world reaches the front end over HTTP and HTTPS (the certificate checked) and the
# gateway's policy refuses a path; then tears everything down.
#
#   scripts/demo.sh          run the demo and clean up
#   scripts/demo.sh --keep   leave the sandbox running to poke at it
set -euo pipefail
cd "$(dirname "$0")/.."
KEEP=0
[[ "${1:-}" == "--keep" ]] && KEEP=1

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

source scripts/packages.sh

say "building (release)"
cargo build --release --locked --workspace --bins
S=target/release/ambit-sandbox
export AMBIT_SANDBOX_DIR=/run/ambit/demo

cleanup() { [[ $KEEP == 1 ]] || { say "tearing down"; $S down; }; }
trap cleanup EXIT
$S down >/dev/null 2>&1 || true

say "bringing up examples/shop on two nodes"
$S up examples/shop

say "a visitor (namespace 'outside', not in the mesh) asks the front end, which calls catalog and reviews"
$S exec visitor-0 -- ambit-sample get http://frontend.shop/
echo

say "spread over the reviews versions, from inside the mesh"
$S exec frontend-0 -- ambit-sample load http://reviews:8080/ --requests 50

say "mutual TLS: ztunnel's access log on node-1, the front end's node (identities of both ends)"
$S logs ztunnel-node-1 | grep 'access' | grep 'direction="outbound"' | grep 'sa/frontend' | tail -n 2 || true
say "and its metrics (connection_security_policy=\"mutual_tls\", SPIFFE principals)"
$S metrics node-1 | grep 'istio_tcp_connections_opened_total' | grep 'mutual_tls' | sed -n '1,2p'  # reads to the end: no SIGPIPE under pipefail

say "applying examples/policies/deny-visitors.yaml (DENY plaintext at catalog, DENY frontend at reviews)"
$S apply examples/policies/deny-visitors.yaml >/dev/null
sleep 1
say "the visitor is refused by catalog (no mesh identity):"
if $S exec visitor-0 -- ambit-sample get http://catalog.shop:8080/; then echo "unexpected: allowed"; exit 1; fi
say "the front end still reaches catalog but reviews refuses it:"
$S exec frontend-0 -- ambit-sample get http://frontend/ || true
echo
say "the refusals, counted by ztunnel (response_flags=\"DENY\")"
{ $S metrics node-1; $S metrics node-2; } | grep 'response_flags="DENY"' | grep closed | sed -n '1,3p'  # reads to the end: no SIGPIPE under pipefail

say "egress: a ServiceEntry for api.world.example, a host in the outside world (examples/egress)"
$S apply examples/egress >/dev/null
say "the front end's DNS is answered by ztunnel's DNS proxy with an allocated address; the visitor (not in the mesh) gets the real one from the world's DNS server"
$S exec frontend-0 -- dig +short api.world.example
$S exec visitor-0 -- dig +short api.world.example
say "the call by name goes out to the real host"
$S exec frontend-0 -- ambit-sample get http://api.world.example/
echo

say "L7: adding a waypoint to shop (examples/waypoint: Gateway, namespace label, routes, policy)"
$S delete examples/policies/deny-visitors.yaml >/dev/null
$S apply examples/waypoint | grep -E 'waypoint' || true
sleep 1
say "reviews through the waypoint: 100 requests split 90/10 between v1 and v2"
$S exec frontend-0 -- ambit-sample load http://reviews:8080/ --requests 100
say "a tester (header x-user: tester) always gets v2"
$S exec frontend-0 -- ambit-sample get -H 'x-user: tester' http://reviews:8080/ | grep -o '"pod":"[^"]*"'
say "DELETE is refused by the waypoint's L7 policy"
$S exec frontend-0 -- ambit-sample get --status -X DELETE http://reviews:8080/
echo
say "the waypoint's request metrics (reporter=\"waypoint\")"
$S exec waypoint-0 -- ambit-sample get http://127.0.0.1:15020/metrics | grep '^istio_requests_total' | sed -n '1,3p'  # reads to the end: no SIGPIPE under pipefail

say "ingress: a Gateway of class ambit (examples/ingress) with HTTP and HTTPS listeners, a route to the front end"
CERTS=$(mktemp -d)
target/release/ambit-sample tls-secret --name shop-tls --namespace ingress --hosts shop.example.com --dir "$CERTS"
$S apply "$CERTS/secret.yaml" >/dev/null
$S apply examples/ingress | grep -E 'waypoint|deployed' || true
GW=$($S status | awk '$2 == "ingress/public-0" {print $3}')
say "from the outside world (a client outside the cluster), HTTP to the gateway ($GW) by Host:"
$S exec world -- curl -sS --max-time 5 -H 'host: shop.example.com' "http://$GW/" | cut -c1-240
say "HTTPS, curl checking the gateway's certificate (from the Secret) against the CA that signed it:"
$S exec world -- curl -sS --max-time 5 --cacert "$CERTS/ca.pem" --resolve "shop.example.com:443:$GW" https://shop.example.com/ | cut -c1-240
say "the gateway's AuthorizationPolicy refuses /admin:"
$S exec world -- curl -sS --max-time 5 -o /dev/null -w '%{http_code}\n' --cacert "$CERTS/ca.pem" --resolve "shop.example.com:443:$GW" https://shop.example.com/admin
say "the Gateway's listeners in its status (attached routes, conditions), as the controller writes it"
$S debug /debug/waypoints | sed -n '/"name": "public"/,/"kind": "Service"/p' | grep -E '"(name|attachedRoutes|type|reason)"' | sed -n '1,24p'  # reads to the end: no SIGPIPE under pipefail

if [[ $KEEP == 1 ]]; then
  say "the sandbox keeps running. Try:"
  cat <<HELP
  export AMBIT_SANDBOX_DIR=$AMBIT_SANDBOX_DIR
  $S status
  $S exec visitor-0 -- ambit-sample get http://frontend.shop/
  $S exec world -- curl -s -H 'host: shop.example.com' http://$GW/
  $S debug /debug/routes
  $S delete examples/waypoint/20-l7-policy.yaml
  $S logs ztunnel-node-1
  $S metrics node-1
  $S down
HELP
fi
