# Installs the Debian packages Ambit's tests and demo use, when missing (sourced by test.sh
# and demo.sh). gcc builds aws-lc's C code; iproute2, iptables, util-linux (nsenter, setsid)
# and procps build and inspect the network namespaces; tcpdump checks what crosses a node link;
# dnsmasq-base is the sandbox's DNS server and bind9-dnsutils (dig) the DNS proxy tests' client;
# curl is the outside client of the ingress tests (HTTPS with the gateway's certificate checked);
# openssl (s_client) checks the controller's certificate as a standard TLS client does.
# Helm and kubectl, for the chart tests, come from PyPI instead (scripts/helm.sh).
PACKAGES=(gcc make iproute2 iptables procps util-linux tcpdump dnsmasq-base bind9-dnsutils curl openssl)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  printf '\n==> installing %s\n' "${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "error: missing packages ${missing[*]} and not root; run as root or install them" >&2
    exit 1
  fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
command -v cargo >/dev/null || { echo "error: cargo not found; install the Rust toolchain (rustup)" >&2; exit 1; }
