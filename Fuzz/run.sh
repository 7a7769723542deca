#!/usr/bin/env bash
# Builds every libFuzzer target of Bulkhead in one `swift build` and runs each for a while.
#
#   Fuzz/run.sh [SECONDS_PER_TARGET]      default 30
#
# Fails (exit 1) if a target crashes, a build fails, or a run does not print "Loaded 1 modules"
# (libFuzzer saw no instrumented module, or more than one). Crashing inputs are written to
# Fuzz/.build-fuzz/artifacts/<target>/; reproduce one with
#   Fuzz/.build-fuzz/debug/<target> <file>
#
# Environment:
#   FUZZ_TARGETS   targets to run (default: all of them), e.g. "FuzzELF FuzzSerial"
#   FUZZ_JOBS      parallel fuzzing processes per target (libFuzzer -fork=N; default 1)
#   FUZZ_OPT=0     build without -O (slower, the plain debug build the docs describe)
#   FUZZ_ARGS      extra libFuzzer flags, e.g. "-seed=1 -max_len=8192"
# The found inputs accumulate in Fuzz/.build-fuzz/corpus/<target>/ (not committed); the seeds in
# Fuzz/corpus/<target>/ are only read.
set -euo pipefail

SECS="${1:-30}"
[[ "$SECS" =~ ^[0-9]+$ ]] || { echo "usage: $0 [seconds-per-target]" >&2; exit 2; }
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SCRATCH="$HERE/.build-fuzz"
TARGETS=(${FUZZ_TARGETS:-FuzzELF FuzzHypercall FuzzSerial FuzzPageTables FuzzVirtqueue FuzzVirtioMMIO FuzzLinuxImage FuzzVirtioBlock FuzzVirtioNet FuzzVsock FuzzWorkerProtocol FuzzAuditRecord FuzzWitness})

BUILD=(swift build --package-path "$HERE" --scratch-path "$SCRATCH" -c debug
       --sanitize=fuzzer -Xswiftc -sanitize=fuzzer,address)
[[ "${FUZZ_OPT:-1}" == 0 ]] || BUILD+=(-Xswiftc -O)

echo "== building ${#TARGETS[@]} fuzz targets"
mkdir -p "$SCRATCH"
# ld.gold warns about every ASan helper symbol; keep the log, show only what matters.
if ! "${BUILD[@]}" >"$SCRATCH/build.log" 2>&1; then
    grep -v "Cannot export local symbol" "$SCRATCH/build.log" | tail -50
    echo "run.sh: build failed (full log: $SCRATCH/build.log)" >&2
    exit 1
fi
grep -E "^Build complete" "$SCRATCH/build.log" || true
BIN="$("${BUILD[@]}" --show-bin-path)"

# Swift's own backtracer would race libFuzzer's and ASan's handlers for the crash; let the
# sanitizer report it (with symbols via llvm-symbolizer from the toolchain).
export SWIFT_BACKTRACE=enable=no
SYMBOLIZER="$(dirname "$(readlink -f "$(command -v swiftc)")")/llvm-symbolizer"
[[ -x "$SYMBOLIZER" ]] && export ASAN_SYMBOLIZER_PATH="$SYMBOLIZER"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=0:abort_on_error=0}"

failed=()
summary=()
for t in "${TARGETS[@]}"; do
    seeds="$HERE/corpus/$t"
    work="$SCRATCH/corpus/$t"
    artifacts="$SCRATCH/artifacts/$t"
    log="$SCRATCH/logs/$t.log"
    mkdir -p "$work" "$artifacts" "$(dirname "$log")"
    args=(-max_total_time="$SECS" -print_final_stats=1 -artifact_prefix="$artifacts/" -rss_limit_mb=4096)
    [[ "${FUZZ_JOBS:-1}" -gt 1 ]] && args+=(-fork="$FUZZ_JOBS" -ignore_crashes=0)
    # shellcheck disable=SC2206
    args+=(${FUZZ_ARGS:-})
    echo "== $t: ${SECS}s"
    set +e
    "$BIN/$t" "${args[@]}" "$work" "$seeds" >"$log" 2>&1
    rc=$?
    set -e
    stats="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 | sed -E 's/^#([0-9]+)[[:space:]]+DONE[[:space:]]+/runs: \1 /; s/ rss:.*//' || true)"
    if ! grep -q "Loaded 1 modules" "$log"; then
        echo "$t: the output lacks 'Loaded 1 modules' (instrumentation missing?)" >&2
        [[ $rc -ne 0 ]] || rc=1
    fi
    if [[ $rc -ne 0 ]]; then
        echo "---- $t failed (exit $rc); the end of $log:"
        grep -v -E "^#[0-9]+[[:space:]]+(NEW|REDUCE|pulse)|NEW_FUNC" "$log" | tail -60
        ls -1 "$artifacts" 2>/dev/null | sed "s|^|   artifact: $artifacts/|"
        failed+=("$t")
        summary+=("$t: FAILED (exit $rc)")
    else
        summary+=("$t: ok  $stats")
    fi
done

echo "== summary"
printf '   %s\n' "${summary[@]}"
echo "$(( ${#TARGETS[@]} - ${#failed[@]} )) passed, ${#failed[@]} failed"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "run.sh: fuzz targets failed: ${failed[*]}" >&2
    exit 1
fi
