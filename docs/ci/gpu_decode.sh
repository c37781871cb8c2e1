#!/usr/bin/env bash
# Decode rows on one GPU (issue 27): the decode preset's single layers and whole-model steps (graph and eager
# time, energy per token, modelled bytes, parameter bytes), then Nsight Compute's DRAM bytes of the decode
# layer cases, then the findings block and the decode plot rendered from those rows alone.
#
#     OUT=/tmp/out bash docs/ci/gpu_decode.sh                       # from the repository root
#     OUT=/tmp/out PROVIDERS=reference,embedding_bag,compiled PROFILE_S=0 bash docs/ci/gpu_decode.sh
#
# Each phase runs in processes of a few batches each (BATCHES), each limited to an equal share of what is
# left of its phase's seconds (LAYER_S, MODEL_S, PROFILE_S; 0 skips the phase). A process still running at
# its limit gets SIGUSR1 first (a measuring command then prints every thread's stack into its log; not the
# ncu phase, see bounded), then SIGTERM, which `mfbench run` answers by writing the rows measured so far,
# flagged partial-run; SIGKILL 30 s later. So a stall costs its own group's share, not the phase. Times on one H200 at 2b4066c, triton
# and dense: layers about 110 s, model steps 330 s (84 steps; the base preset's take 4-10 s each), so the
# defaults fit one 10-minute device call. At 703248d, reference, embedding_bag and compiled: layers 152 s,
# model steps 341 s, ncu 17-34 s a case (12 cases: about 370 s), so three calls (MODEL_S=0 PROFILE_S=0,
# then LAYER_S=0 PROFILE_S=0, then LAYER_S=0 MODEL_S=0 PROFILE_S=450).
# Outputs under $OUT: results/ (a result table of this script's rows only: results.parquet and its CSV
# mirror; append them to the project's with `python -c "from mfbench.store import results;
# results.append(results.load('OUT/results'))"`), *.log (each process's output), decode-findings.md (what
# README's decode block would hold), plots/decode.png|svg, info.txt, phases.log.
set -u
OUT=${OUT:?set OUT to the output directory}
LAYER_S=${LAYER_S:-130} MODEL_S=${MODEL_S:-340} PROFILE_S=${PROFILE_S:-80}
PROVIDERS=${PROVIDERS:-triton,dense} BATCHES=${BATCHES:-1,2 4,8,16 32,64}
mkdir -p "$OUT/results"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONFAULTHANDLER=1 PYTHONUNBUFFERED=1 OUT
PY=${PYTHON:-python}
start=$(date +%s)
phase() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/phases.log"; }

bounded() {  # bounded SECONDS LOG CMD...: CMD, its stacks and SIGTERM at the limit, SIGKILL 30 s after that
    local limit=$1 log=$2 i=0; shift 2
    : > "$log"
    "$@" >> "$log" 2>&1 &
    local pid=$!
    while kill -0 $pid 2>/dev/null && [ $i -lt "$limit" ]; do sleep 1; i=$((i + 1)); done
    if kill -0 $pid 2>/dev/null; then
        echo "--- limit of ${limit}s: stacks, then SIGTERM" >> "$log"
        # before its start-up SIGUSR1 would end it; STACKS=0 for `mfbench profile`, which SIGUSR1 ended on the
        # H200 at 703248d (exit 138, its rows so far kept) though it prints its stacks and goes on on the CPU
        [ "$limit" -ge 20 ] && [ "${STACKS:-1}" = 1 ] && { kill -USR1 $pid; sleep 2; }
        kill -TERM $pid
        i=0; while kill -0 $pid 2>/dev/null && [ $i -lt 30 ]; do sleep 1; i=$((i + 1)); done
        kill -0 $pid 2>/dev/null && { echo "--- alive 30 s after SIGTERM: SIGKILL" >> "$log"; kill -KILL $pid; }
    fi
    wait $pid
    echo "exit $?" >> "$log"
}

grouped() {  # grouped NAME SECONDS ARGS...: `mfbench run --preset decode ARGS --seq G` per batch group G
    local name=$1 seconds=$2 until left n; shift 2
    until=$(( $(date +%s) + seconds )); n=$(echo $BATCHES | wc -w)
    for g in $BATCHES; do
        left=$(( (until - $(date +%s)) / n )); n=$((n - 1))
        [ $left -lt 20 ] && { phase "$name B=$g: no time left"; continue; }
        phase "$name B=$g (limit ${left}s)"
        bounded $left "$OUT/$name-$g.log" $PY -m mfbench run --preset decode "$@" --providers "$PROVIDERS" \
            --seq "$g" --results-dir "$OUT/results"
        phase "$name B=$g: $(tail -1 "$OUT/$name-$g.log")"
    done
}

$PY -m mfbench info > "$OUT/info.txt" 2>&1
[ "$LAYER_S" -gt 0 ] && grouped layer "$LAYER_S" --benchmarks layer
[ "$MODEL_S" -gt 0 ] && grouped model "$MODEL_S" --benchmarks model
if [ "$PROFILE_S" -gt 0 ]; then
    phase "ncu: decode cases (d=2048, 8192 x B=1, 8) x $PROVIDERS (limit ${PROFILE_S}s)"
    STACKS=0 bounded "$PROFILE_S" "$OUT/profile.log" $PY -m mfbench profile --cases decode --providers "$PROVIDERS" \
        --results-dir "$OUT/results"
    phase "ncu: $(tail -1 "$OUT/profile.log")"
fi
device=$($PY -c "import os; from mfbench.store import results; f = results.load(os.environ['OUT'] + '/results'); \
print(f.loc[f['benchmark'].str.startswith('decode'), 'device'].iloc[0])" 2>>"$OUT/phases.log")
$PY -m mfbench.report.findings decode --device "${device:-H200}" --results-dir "$OUT/results" > "$OUT/decode-findings.md" 2>&1
$PY -c "import os; from pathlib import Path; from mfbench.report.plots import decode; from mfbench.store import results; \
out = Path(os.environ['OUT']); print(*decode(results.load(out / 'results'), out / 'plots'))" >> "$OUT/phases.log" 2>&1
phase "done"
