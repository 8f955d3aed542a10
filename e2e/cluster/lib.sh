# shellcheck shell=bash disable=SC2034  # sourced; the settings are used by the scripts that source it
# Shared settings for e2e/cluster/{up,down,status,build-k8s} and e2e/images/build.
# Sourced, not run. Every path the local cluster writes lives under $GF_STATE (removed by `down`);
# built binaries and images are cached under $GF_CACHE and survive `down`.

set -euo pipefail

GF_K8S_VERSION="${GF_K8S_VERSION:-v1.36.3}"        # k8s.io/kubernetes version from the Go module proxy
GF_COREDNS_VERSION="${GF_COREDNS_VERSION:-v1.14.7}" # github.com/coredns/coredns
GF_CACHE="${GF_CACHE:-$HOME/.cache/gearfleet}"
GF_BIN="$GF_CACHE/bin/$GF_K8S_VERSION"
GF_IMAGES="$GF_CACHE/images"
GF_STATE="${GF_STATE:-$GF_CACHE/cluster}"
GF_LOGS="$GF_STATE/logs"
GF_PKI="$GF_STATE/pki"
GF_RUN="$GF_STATE/run"
GF_KUBECONFIG="$GF_STATE/admin.kubeconfig"

# Networks. Everything is on loopback or on the cluster's own bridge.
GF_POD_CIDR="10.244.77.0/24"      # the bridge's private /24 (pods)
GF_BRIDGE="gf-br0"
GF_BRIDGE_IP="10.244.77.1"
GF_SERVICE_CIDR="10.96.77.0/24"   # ClusterIPs (virtual; kube-proxy rewrites them to pod IPs)
GF_KUBERNETES_SVC_IP="10.96.77.1"
GF_DNS_IP="10.96.77.10"
GF_CLUSTER_DOMAIN="cluster.local"
GF_NODE="localhost"
GF_VOLUMES="${GF_VOLUMES:-16}"       # local PersistentVolumes of the default StorageClass "standard"

# Ports (loopback only, except the kubelet which the apiserver reaches on 127.0.0.1 as well).
GF_ETCD_PORT=23790
GF_ETCD_PEER_PORT=23800
GF_APISERVER_PORT=6443

GF_COMPONENTS=(etcd containerd kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy)

gf_log() { printf '[gearfleet-e2e %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
gf_die() { gf_log "ERROR: $*"; exit 1; }

gf_need_root() {
  [[ $(id -u) == 0 ]] || gf_die "must run as root (it starts containerd, kubelet and kube-proxy and edits iptables)"
}

gf_pidfile() { echo "$GF_RUN/$1.pid"; }

# gf_pid NAME: prints the recorded pid of component NAME if that process is alive and still runs the
# binary of that name (a pid file that outlived a reboot may name someone else's process).
gf_pid() {
  local pf pid exe
  pf=$(gf_pidfile "$1")
  [[ -f $pf ]] || return 1
  pid=$(cat "$pf")
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  [[ $(basename "${exe% (deleted)}") == "$1" ]] || return 1
  echo "$pid"
}

gf_running() { gf_pid "$1" >/dev/null; }

gf_kubectl() { "$GF_BIN/kubectl" --kubeconfig "$GF_KUBECONFIG" "$@"; }

# Host paths outside $GF_STATE that the cluster's components create when they are missing (kubelet's
# container-log symlinks and device-plugin folder, libcni's result cache, containerd's shim sockets,
# iptables' lock). `up` records those that did not exist before it ran, `down` removes exactly those.
GF_HOST_PATHS=(/var/log/containers /var/lib/cni /run/containerd /run/xtables.lock /var/lib/kubelet)

gf_stop() { # NAME... : SIGTERM the components together, then SIGKILL those alive after 15 s
  local name pid pids=() i
  for name in "$@"; do
    pid=$(gf_pid "$name") && kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    rm -f "$(gf_pidfile "$name")"
  done
  for ((i = 0; i < 150; i++)); do
    local alive=()
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive+=("$pid"); done
    pids=("${alive[@]}")
    [[ ${#pids[@]} -eq 0 ]] && return 0
    sleep 0.1
  done
  for pid in "${pids[@]}"; do
    gf_log "pid $pid did not stop in 15 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  done
}
