#!/usr/bin/env bash
# Regenerate examples/: for each case, build a namespace lab (`netray lab up`), send the
# probes that show the problem (so conntrack holds the evidence), run `netray collect` inside
# every node namespace, write cluster.json, and tear the lab down (also on failure).
#
# Usage: sudo scripts/capture-examples.sh [CASE...]   (default: every case)
# Env:   NETRAY=path/to/netray (default: builds and uses target/debug/netray)
set -euo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${NETRAY:-}" ]]; then
    cargo build -q -p netray
    NETRAY="$PWD/target/debug/netray"
fi
NETRAY="$(realpath "$NETRAY")"
[[ $(id -u) == 0 ]] || { echo "capture-examples: needs root (network namespaces)" >&2; exit 2; }

TAG=""
cleanup() { [[ -n "$TAG" ]] && "$NETRAY" lab down "$TAG" >/dev/null || true; TAG=""; }
trap cleanup EXIT INT TERM

# Probe from a lab member; failures are expected for the broken flows.
probe() { # MEMBER PROTO IP:PORT [--bind IP]
    local member=$1; shift
    ip netns exec "nrl-$TAG-$member" "$NETRAY" lab agent probe "$@" --timeout-ms 1000 2>/dev/null \
        | sed "s/^/  $member -> $2: /" || echo "  $member -> $2: failed"
}

capture() { # CASE NODES PODS_PER_NODE [--fault F]... -- warm-up function
    local case=$1 nodes=$2 pods=$3; shift 3
    local faults=() warm=""
    while [[ $# -gt 0 ]]; do
        case $1 in
            --fault) faults+=(--fault "$2"); shift 2 ;;
            --warm) warm=$2; shift 2 ;;
            *) echo "bad argument $1" >&2; exit 2 ;;
        esac
    done
    local dir="examples/$case"
    echo "== $case"
    rm -rf "$dir/nodes" "$dir/cluster.json"
    mkdir -p "$dir/nodes"
    local out
    out=$("$NETRAY" lab up --nodes "$nodes" --pods-per-node "$pods" "${faults[@]}" \
        --cluster-json "$dir/cluster.json" 2>/dev/null)
    TAG=$(sed -n 's/^tag: //p' <<<"$out")
    [[ -n "$TAG" ]] || { echo "lab up printed no tag" >&2; exit 1; }
    if [[ -n "$warm" ]]; then "$warm"; fi
    for ((i = 0; i < nodes; i++)); do
        ip netns exec "nrl-$TAG-node$i" "$NETRAY" collect --node "node$i" \
            -o "$dir/nodes/node$i.json" 2>/dev/null
    done
    cleanup
}

warm_healthy() {
    probe web-0 tcp 10.96.0.100:80
    probe node0 udp 10.96.0.100:53
    probe ext tcp 192.168.50.11:30080
}
warm_000() {
    probe node0 tcp 10.50.0.10:8080 # direct: works
    probe node0 tcp 10.96.0.150:80  # through the ClusterIP: handshake, then no answer
    probe node0 tcp 10.96.0.150:80
}
warm_001() {
    probe web-0 tcp 10.244.1.2:8080       # to a pod behind node1 (ip_forward=0): fails
    probe ext tcp 192.168.50.12:30080     # NodePort on node2 (strict rp_filter): fails
    probe web-1 tcp 10.96.0.100:80        # web-1 has no default route: fails
}
warm_002() {
    for _ in 1 2 3 4; do probe web-0 udp 10.96.0.100:53; done # DNS-like, from node0's pod
    probe web-2 tcp 10.244.0.2:8080 # node2 -> node0 pod: stale neighbour, fails
}
warm_003() {
    for _ in 1 2 3 4; do probe node0 tcp 10.96.0.100:80; done # fails when it picks node1's pods
    probe node0 tcp 10.244.1.2:8080
}
warm_004() {
    probe gw tcp 192.168.50.11:32100 --bind 192.168.60.200 # martian on node1: fails
    probe gw tcp 192.168.50.10:32100 --bind 192.168.60.200 # node0: works
}

SELECTED=("$@")
sel() { [[ ${#SELECTED[@]} -eq 0 ]] || [[ " ${SELECTED[*]} " == *" $1 "* ]]; }

sel healthy && capture healthy 3 2 --warm warm_healthy
sel 000-bridge-nf-masq && capture 000-bridge-nf-masq 3 2 --fault bridge-nf-masq:node0 --warm warm_000
sel 001-checklist && capture 001-checklist 3 2 --fault ip-forward-off:node1 \
    --fault rp-filter-asymmetric:node2 --fault pod-no-default-route:web-1 --warm warm_001
sel 002-stale-vtep && capture 002-stale-vtep 4 1 --fault stale-vtep:node0:node2+node3 --warm warm_002
sel 003-forward-drop && capture 003-forward-drop 3 2 --fault forward-drop:node1 --warm warm_003
sel 004-local-service-ip && capture 004-local-service-ip 3 2 --fault local-service-ip:node1 --warm warm_004
# 005 needs a fault applied *after* the clients talked (the stale entries must exist first):
# the lab test that proves the case against the kernel does the capture.
if sel 005-stale-conntrack; then
    echo "== 005-stale-conntrack"
    rm -rf examples/005-stale-conntrack/nodes examples/005-stale-conntrack/cluster.json
    NETRAY_CAPTURE_EXAMPLE="$PWD/examples/005-stale-conntrack" \
        cargo test -q -p netray --test lab_cases stale_udp_conntrack_entry_after_pod_deletion
fi
if sel 006-dualstack-v6-forward-drop; then
    echo "== 006-dualstack-v6-forward-drop"
    rm -rf examples/006-dualstack-v6-forward-drop/nodes examples/006-dualstack-v6-forward-drop/cluster.json
    NETRAY_CAPTURE_EXAMPLE="$PWD/examples/006-dualstack-v6-forward-drop" \
        cargo test -q -p netray --test dualstack_lab dual_stack_cluster_matches_the_kernel
fi
echo "done"
