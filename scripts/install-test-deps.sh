#!/usr/bin/env bash
# Installs the real Gearman peers the tests talk to, on a Debian machine. Idempotent: does nothing
# when everything is present.
set -euo pipefail

need_apt=()
command -v gearman >/dev/null 2>&1 || need_apt+=(gearman-tools)
command -v gearadmin >/dev/null 2>&1 || need_apt+=(gearman-tools)
[ -x /usr/sbin/gearmand ] || need_apt+=(gearman-job-server)
perl -MGearman::Client -e 1 >/dev/null 2>&1 || need_apt+=(libgearman-client-perl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "==> apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
  # Debian starts gearmand as a service on install; the tests start their own.
  (service gearman-job-server stop || pkill -x gearmand || true) >/dev/null 2>&1
fi

if ! python3 -c 'import gear' >/dev/null 2>&1; then
  echo "==> pip install gear"
  python3 -m pip install -q --disable-pip-version-check gear
fi
