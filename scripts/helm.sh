#!/usr/bin/env bash
# Runs Helm, building it first from the Go module proxy when it is not cached (no download site
# is needed: helm.sh/helm/v3 is an ordinary Go module). Cached in ~/.cache/gearfleet/tools.
#
#   scripts/helm.sh ARGS...        e.g. scripts/helm.sh lint charts/gearfleet
#   scripts/helm.sh --path         prints the path of the helm binary (building it if needed)
#
# A `helm` already on PATH of the same minor version is used as it is.
set -euo pipefail
HELM_VERSION="${GF_HELM_VERSION:-v3.22.0}"
tools="${GF_CACHE:-$HOME/.cache/gearfleet}/tools/helm-$HELM_VERSION"
bin="$tools/helm"

if [[ ! -x $bin ]]; then
  if command -v helm >/dev/null 2>&1 \
    && [[ $(helm version --template '{{.Version}}' 2>/dev/null) == "${HELM_VERSION%.*}".* ]]; then
    bin=$(command -v helm)
  else
    command -v go >/dev/null 2>&1 || { echo "helm.sh: Go is needed to build helm $HELM_VERSION" >&2; exit 2; }
    echo "helm.sh: building helm $HELM_VERSION from the Go module proxy (once; about 3 minutes)" >&2
    mkdir -p "$tools"
    GOBIN="$tools" CGO_ENABLED=0 GOTOOLCHAIN=local GOFLAGS=-trimpath \
      go install -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/v3/cmd/helm@$HELM_VERSION" >&2
  fi
fi
if [[ ${1:-} == --path ]]; then
  echo "$bin"
  exit 0
fi
exec "$bin" "$@"
