#!/usr/bin/env bash
# The demo: the project's local Kubernetes cluster, gearfleet installed with its Helm chart, the
# example WorkerPool, a burst of jobs from the stock `gearman` CLI, and the pool's Deployments
# scaling up with the queue and back down when it drains, shown live.
#
#   bash scripts/demo.sh                 (needs root; the first run builds Kubernetes, ~10 minutes)
#
# The cluster stays up afterwards so you can look around; `bash e2e/cluster/down` removes it.
# Environment: GEARFLEET_DEMO_JOBS (default 48 sleep jobs), GEARFLEET_DEMO_JOB_MS (default 4000).
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/gearfleet/target}"
JOBS="${GEARFLEET_DEMO_JOBS:-48}"
JOB_MS="${GEARFLEET_DEMO_JOB_MS:-4000}"
SYSTEM=gearfleet-system
DEMO=gearfleet-demo
t0=$SECONDS

step() { printf '\n==> %s\n' "$*"; }

step "installing the Gearman command-line tools (gearman, gearadmin) and the test peers"
bash scripts/install-test-deps.sh >/dev/null

step "starting the local Kubernetes cluster (e2e/cluster/up; builds the images from this checkout)"
eval "$(bash e2e/cluster/up)"
echo "KUBECONFIG=$KUBECONFIG"

step "installing gearfleet with Helm (charts/gearfleet) into $SYSTEM"
bash scripts/helm.sh upgrade --install gearfleet charts/gearfleet --namespace "$SYSTEM" --create-namespace \
  --wait --timeout 5m
kubectl -n "$SYSTEM" get pods -o wide

step "applying examples/workerpool.yaml in $DEMO (functions echo, reverse, sleep)"
kubectl create namespace "$DEMO" --dry-run=client -o yaml | kubectl apply -f - >/dev/null
kubectl -n "$DEMO" apply -f examples/workerpool.yaml
for _ in $(seq 120); do kubectl -n "$DEMO" get deployment demo-echo >/dev/null 2>&1 && break; sleep 1; done
kubectl -n "$DEMO" rollout status deployment/demo-echo --timeout=180s

broker_ip=$(kubectl -n "$SYSTEM" get service gearfleet-broker -o jsonpath='{.spec.clusterIP}')
BROKER="$broker_ip:4730"
admin() { exec 3<>"/dev/tcp/$broker_ip/4730"; printf '%s\n' "$1" >&3; sed '/^\.$/q' <&3; exec 3>&-; }
for _ in $(seq 60); do timeout 3 bash -c "exec 3<>/dev/tcp/$broker_ip/4730" 2>/dev/null && break; sleep 1; done

step "a foreground job through the broker Service ($BROKER), from the stock gearman CLI"
echo "  gearman -f echo 'hello gearfleet'  ->  $(gearman -h "$broker_ip" -p 4730 -f echo 'hello gearfleet')"

step "submitting $JOBS background 'sleep' jobs of $JOB_MS ms (the sleep function starts at 0 replicas)"
for _ in $(seq "$JOBS"); do echo "$JOB_MS"; done | xargs -P 8 -I{} gearman -h "$broker_ip" -p 4730 -b -f sleep {} >/dev/null

step "the sleep Deployment follows its queue (up to maxReplicas 6, then back to 0 after the cooldown)"
printf '  %-8s %7s %7s %9s %6s\n' time queued running replicas ready
peak=0
for _ in $(seq 150); do
  line=$(admin "fleet status" | awk -F'\t' '$1 == "sleep"' || true)
  queued=$(echo "$line" | awk -F'\t' '{ print ($2 + $3 + $4) + 0 }')
  running=$(echo "$line" | awk -F'\t' '{ print $6 + 0 }')
  read -r replicas ready < <(kubectl -n "$DEMO" get deployment demo-sleep \
    -o jsonpath='{.spec.replicas} {.status.readyReplicas}{"\n"}' 2>/dev/null || echo "0 0")
  printf '  %-8s %7s %7s %9s %6s\n' "$(date +%T)" "${queued:-0}" "${running:-0}" "${replicas:-0}" "${ready:-0}"
  (( ${replicas:-0} > peak )) && peak=${replicas:-0}
  if (( peak > 0 )) && [[ ${queued:-0} == 0 && ${running:-0} == 0 && ${replicas:-0} == 0 ]]; then break; fi
  sleep 2
done
echo "  peak: $peak replicas"

step "a Job resource routed through the broker (examples/job.yaml), waited for with kubectl"
kubectl -n "$DEMO" delete -f examples/job.yaml --ignore-not-found >/dev/null
kubectl -n "$DEMO" apply -f examples/job.yaml
kubectl -n "$DEMO" wait --for=condition=Complete gj/reverse-hello --timeout=120s
echo "  result: $(kubectl -n "$DEMO" get gj reverse-hello -o jsonpath='{.status.result}')"
kubectl -n "$DEMO" get gj

step "the pool and what the operator recorded"
kubectl -n "$DEMO" get workerpool demo
kubectl -n "$DEMO" get events --field-selector involvedObject.kind=WorkerPool --sort-by=.eventTime \
  -o custom-columns=TIME:.eventTime,REASON:.reason,NOTE:.message 2>/dev/null | tail -n 12

cat <<TXT

Done in $((SECONDS - t0)) s. The cluster is still up; look around:
  export KUBECONFIG=$KUBECONFIG PATH=$(dirname "$(command -v kubectl)"):\$PATH
  kubectl -n $DEMO get wp,deploy,pods
  kubectl -n $DEMO describe wp demo
  kubectl -n $DEMO describe gj reverse-hello
  kubectl -n $SYSTEM logs statefulset/gearfleet -c operator
  gearman -h $broker_ip -p 4730 -f reverse hello        # any Gearman client works
  gearadmin -h $broker_ip -p 4730 --status
  curl -s http://$(kubectl -n $SYSTEM get svc gearfleet-metrics -o jsonpath='{.spec.clusterIP}'):9730/metrics | grep gearfleet_broker_jobs
Tear down:  bash e2e/cluster/down
TXT
