#!/usr/bin/env bash
# End-to-end scale measurements (issue 13): the release `netray` binary on generated bundles
# (crates/netray-diagnose/benches/support/synth_bundle.rs: 10 pods per node, 3 endpoints per
# Service, kube-proxy iptables rules on every node), wall time and peak RSS from
# /usr/bin/time, each next to a baseline measured in the same run (`cat` of the bundle to
# /dev/null; `wc -l` and `iptables-legacy-restore --test` of the dump for `rules trace`).
# Prints a markdown table (docs/scale.md). Not a test.
#
#   scripts/scale-measure.sh [WORKDIR]        (default /tmp/netray-scale; bundles are kept)
#   SIZES="3:1000 30:10000" NETRAY=path/to/netray GEN=path/to/gen_bundle TIMEOUT=900 AUDIT_TIMEOUT=900 scripts/scale-measure.sh
#   SIZES= DUMP=file.save scripts/scale-measure.sh   (only `rules trace` on that dump)
#
# Each command runs once per size, or REPEAT times keeping the fastest (the page cache is
# warmed by the `cat` baseline first);
# a command over TIMEOUT seconds, or over MEM_MAX of memory (a cgroup limit where
# `systemd-run --scope` works, else an address-space limit), is reported as such.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/netray-scale}
sizes=${SIZES-"3:1000 30:1000 100:1000 300:1000 3:10000 30:10000 100:10000 300:10000"}
timeout_s=${TIMEOUT:-900}
audit_timeout_s=${AUDIT_TIMEOUT:-$timeout_s}
mem_max=${MEM_MAX:-16G}
mkdir -p "$work"
if [[ -z "${NETRAY:-}" ]]; then
    cargo build --release -q -p netray --manifest-path "$repo/Cargo.toml"
    NETRAY=$repo/target/release/netray
fi
gen=${GEN:-$(cargo bench -q -p netray-diagnose --bench gen_bundle --no-run \
    --manifest-path "$repo/Cargo.toml" --message-format=json 2>/dev/null |
    sed -n 's/.*"executable":"\([^"]*gen_bundle[^"]*\)".*/\1/p' | tail -1)}

scoped=no
systemd-run --quiet --scope -p MemoryMax="$mem_max" true 2>/dev/null && scoped=yes

# run CMD...: "wall_s peak_MB exit cpu_s" (cpu: user + system) into $row; honours the limits.
run() {
    local out rc limit_s=${LIMIT_S:-$timeout_s}
    out=$(mktemp)
    set +e
    local t0=$EPOCHREALTIME
    if [[ $scoped == yes ]]; then
        systemd-run --quiet --scope -p MemoryMax="$mem_max" -p MemorySwapMax=0 \
            /usr/bin/time -f "%e %M %U %S" -o "$out" timeout "$limit_s" "$@" >/dev/null 2>&1
    else
        # No systemd: cap the address space instead (a little above the resident peak).
        /usr/bin/time -f "%e %M %U %S" -o "$out" timeout "$limit_s" \
            prlimit --as="$(numfmt --from=iec "$mem_max")" "$@" >/dev/null 2>&1
    fi
    rc=$?
    local t1=$EPOCHREALTIME
    set -e
    read -r wall kb user sys < <(grep -E '^[0-9.]+ [0-9]+ [0-9.]+ [0-9.]+$' "$out" | tail -1 ||
        echo "- 0 0 0")
    rm -f "$out"
    # Wall time to the millisecond (time's own has 10 ms steps), the wrappers included.
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    cpu=$(awk -v u="$user" -v s="$sys" 'BEGIN { printf "%.2f", u + s }')
    row="$wall $((kb / 1024)) $rc $cpu"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.1f", a / b; else print "-" }'; }
# REPEAT=N: each command N times, the fastest kept (default 1).
best() {
    local i r best_row="" best_wall=""
    for ((i = 0; i < ${REPEAT:-1}; i++)); do
        run "$@"
        read -r r _ <<<"$row"
        if [[ -z $best_wall ]] || awk -v a="$r" -v b="$best_wall" 'BEGIN { exit !(a < b) }'; then
            best_wall=$r best_row=$row
        fi
    done
    row=$best_row
}

echo "date: $(date -u +%FT%TZ); commit: $(git -C "$repo" rev-parse --short HEAD)$(git -C "$repo" diff --quiet HEAD -- crates || echo '+dirty')"
echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GB; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| nodes | Services | bundle MB | cat s | command | wall s | × cat | CPU s | peak MB | peak / bundle | exit |"
echo "|---|---|---|---|---|---|---|---|---|---|---|"
for size in $sizes; do
    n=${size%:*}
    s=${size#*:}
    b=$work/b-$n-$s
    [[ -f $b/nodes/node$((n - 1)).json ]] || "$gen" "$b" "$n" "$s" 2>/dev/null
    mb=$(du -sm "$b" | cut -f1)
    cat "$b"/cluster.json "$b"/nodes/*.json >/dev/null
    run sh -c "cat '$b'/cluster.json '$b'/nodes/*.json >/dev/null"
    read -r cat_s _ _ _ <<<"$row"
    # svc-7's endpoints are on node2, the client pod-0-0 on node0; svc-0's endpoints on node0.
    for cmd in diagnose trace scan audit; do
        case $cmd in
        diagnose) args=(diagnose --bundle "$b" --from pod/default/pod-0-0 --to svc/ns-7/svc-7:80) ;;
        trace) args=(trace --bundle "$b" --from pod/default/pod-0-0 --to svc/ns-0/svc-0:80) ;;
        scan) args=(scan --bundle "$b") ;;
        audit) args=(audit --bundle "$b") ;;
        esac
        limit=$timeout_s
        [[ $cmd == audit ]] && limit=$audit_timeout_s
        LIMIT_S=$limit best "$NETRAY" "${args[@]}" --color never
        read -r wall peak rc cpu <<<"$row"
        note=$rc
        [[ $rc -eq 124 ]] && note="timeout ${limit}s"
        [[ $rc -eq 137 || $rc -eq 134 ]] && note="killed/aborted (memory > $mem_max?)"
        echo "| $n | $s | $mb | $cat_s | $cmd | $wall | $(ratio "$wall" "$cat_s") | $cpu | $peak | $(awk -v p="$peak" -v m="$mb" 'BEGIN { printf "%.2f", p / m }') | $note |"
    done
done

# rules trace on one node's dump of the largest Service count (10,000 Services: 16 MB).
# DUMP=FILE: that dump instead.
big=$(for size in $sizes; do echo "${size#*:} ${size%:*}"; done | sort -n | tail -1)
read -r s n <<<"$big"
dump=${DUMP:-$work/dump-$s.save}
[[ -f $dump ]] || python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
sys.stdout.write(d["namespaces"][0]["firewall"]["iptables"][0]["text"])' "$work/b-$n-$s/nodes/node0.json" >"$dump"
echo
echo "| on a $(( $(stat -c %s "$dump") / 1000000 )) MB dump ($(wc -l <"$dump") lines) | wall s | × wc -l | CPU s | peak MB | peak / dump | exit |"
echo "|---|---|---|---|---|---|---|"
best wc -l "$dump"
read -r wc_s wc_mb _ wc_cpu <<<"$row"
dump_mb=$(( $(stat -c %s "$dump") / 1048576 ))
for what in wc restore trace; do
    case $what in
    wc) row="$wc_s $wc_mb 0 $wc_cpu"; label="wc -l" ;;
    restore) best unshare -n iptables-legacy-restore --test "$dump"; label="iptables-legacy-restore --test (own netns)" ;;
    trace) best "$NETRAY" rules trace --iptables "$dump" --from 10.244.1.5 --to 10.96.0.17:80 --color never
        label="netray rules trace" ;;
    esac
    read -r wall peak rc cpu <<<"$row"
    echo "| $label | $wall | $(ratio "$wall" "$wc_s") | $cpu | $peak | $(awk -v p="$peak" -v m="$dump_mb" 'BEGIN { printf "%.1f", p / m }') | $rc |"
done
echo
echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)"
