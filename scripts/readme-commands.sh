#!/usr/bin/env bash
# Runs every `netray …` example command of README.md, top to bottom, against the bundled
# examples, and fails on any unexpected exit code.
#
#   scripts/readme-commands.sh [README]      (netray is taken from $NETRAY, else PATH)
#
# A command is a line in a ```sh block starting with `netray` or `sudo netray` (with its `\`
# continuation lines). Its expected exit code is 0 unless the command ends with a comment
# `# exit N`. A comment `# needs: root|cluster|lab|system` skips it where that is missing:
# root (run as root), cluster (a Kubernetes API: set NETRAY_README_KUBE=1), lab (creates and
# deletes namespace labs on this host: set NETRAY_README_LAB=1, as root), system (installs
# files outside the scratch directory: set NETRAY_README_SYSTEM=1, as root).
# Commands run in a scratch directory holding a link to the repository's examples/, so any
# file they write lands there.
set -u -o pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
readme=${1:-$here/README.md}
netray=${NETRAY:-$(command -v netray || true)}
if [ -z "$netray" ] || [ ! -x "$netray" ]; then
    echo "readme-commands: no netray binary (set NETRAY=/path/to/netray or put it on PATH)" >&2
    exit 2
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
ln -s "$here/examples" "$scratch/examples"
mkdir -p "$scratch/bin"
ln -s "$netray" "$scratch/bin/netray"
export PATH="$scratch/bin:$PATH"

# Extract: one command per record, NUL separated, prefixed by its line number.
mapfile -d '' commands < <(awk '
    /^```sh/ { insh = 1; next }
    /^```/   { insh = 0; next }
    !insh    { next }
    {
        line = $0
        if (cont) { cmd = cmd "\n" line }
        else {
            t = line; sub(/^[ \t]+/, "", t)
            if (t !~ /^(sudo )?netray( |$)/) next
            start = NR; cmd = t
        }
        cont = (line ~ /\\[ \t]*$/)
        if (!cont) { printf "%d:%s%c", start, cmd, 0 }
    }' "$readme")

ran=0 skipped=0 failed=0
for rec in "${commands[@]}"; do
    lineno=${rec%%:*}
    cmd=${rec#*:}
    want=0
    if [[ $cmd =~ \#[[:space:]]*exit[[:space:]]+([0-9]+) ]]; then want=${BASH_REMATCH[1]}; fi
    need=""
    if [[ $cmd =~ \#.*needs:[[:space:]]*([a-z]+) ]]; then need=${BASH_REMATCH[1]}; fi
    skip=""
    case "$need" in
        root) [ "$(id -u)" = 0 ] || skip="needs root" ;;
        cluster) [ "${NETRAY_README_KUBE:-}" = 1 ] || skip="needs a Kubernetes API (NETRAY_README_KUBE=1)" ;;
        lab) { [ "${NETRAY_README_LAB:-}" = 1 ] && [ "$(id -u)" = 0 ]; } || skip="creates namespace labs (NETRAY_README_LAB=1, as root)" ;;
        system) { [ "${NETRAY_README_SYSTEM:-}" = 1 ] && [ "$(id -u)" = 0 ]; } || skip="installs files on this host (NETRAY_README_SYSTEM=1, as root)" ;;
        "") ;;
        *) echo "README.md:$lineno: unknown need '$need'" >&2; failed=$((failed + 1)); continue ;;
    esac
    # `sudo` is dropped: as root it is not needed, and without root the command was skipped.
    run=${cmd#sudo }
    if [ -n "$skip" ]; then
        echo "--- README.md:$lineno: skipped ($skip): ${run%%$'\n'*}"
        skipped=$((skipped + 1))
        continue
    fi
    echo "--- README.md:$lineno: $run"
    (cd "$scratch" && bash -c "$run") >"$scratch/out" 2>&1
    got=$?
    ran=$((ran + 1))
    if [ "$got" != "$want" ]; then
        echo "README.md:$lineno: exit code $got, expected $want; output:" >&2
        tail -n 30 "$scratch/out" >&2
        failed=$((failed + 1))
    else
        head -n 3 "$scratch/out" | sed 's/^/    /'
    fi
done
if [ "$ran" = 0 ]; then
    echo "readme-commands: found no commands in $readme" >&2
    exit 1
fi
echo "readme-commands: $ran run, $skipped skipped, $failed failed"
[ "$failed" = 0 ]
