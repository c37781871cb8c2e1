#!/usr/bin/env bash
# Decode rows on one GPU (issue 27): the decode preset's single layers and whole-model steps (graph and eager
# time, energy per token, modelled bytes, parameter bytes), then Nsight Compute's DRAM bytes of the decode
# layer cases, then the findings block and the decode plot rendered from those rows alone.
#
#     OUT=/tmp/out bash docs/ci/gpu_decode.sh        # from the repository root; about 6 minutes on one H200
#
# Each phase has a wall-clock limit (seconds, below). `mfbench run` stopped by it keeps the rows measured so
# far, flagged partial-run, so the script always ends within the sum of the limits plus start-up.
# Outputs under $OUT: results/ (a result table of this script's rows only: results.parquet and its CSV
# mirror; append them to the project's with `python -c "from mfbench.store import results;
# results.append(results.load('OUT/results'))"`), *.log (each phase's output), decode-findings.md (what
# README's decode block would hold), plots/decode.png|svg, info.txt.
set -u
OUT=${OUT:?set OUT to the output directory}
LAYER_S=${LAYER_S:-160} MODEL_S=${MODEL_S:-100} PROFILE_S=${PROFILE_S:-70}
mkdir -p "$OUT/results"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
start=$(date +%s)
phase() { echo "[$(( $(date +%s) - start ))s] $*" | tee -a "$OUT/phases.log"; }

$PY -m mfbench info > "$OUT/info.txt" 2>&1
phase "layers: 7 shapes x B=1..64 x triton,dense (limit ${LAYER_S}s)"
timeout -s TERM "$LAYER_S" $PY -m mfbench run --preset decode --benchmarks layer --providers triton,dense \
    --results-dir "$OUT/results" > "$OUT/layer.log" 2>&1
phase "layers exit $?"
phase "model steps: tiny/small/base x L=512,2048 x B=1,8,64 x triton,dense (limit ${MODEL_S}s)"
timeout -s TERM "$MODEL_S" $PY -m mfbench run --preset decode --benchmarks model --providers triton,dense \
    --seq 1,8,64 --results-dir "$OUT/results" > "$OUT/model.log" 2>&1
phase "model steps exit $?"
phase "ncu: decode cases (d=2048, 8192 x B=1, 8) x triton,dense (limit ${PROFILE_S}s)"
timeout -s TERM "$PROFILE_S" $PY -m mfbench profile --cases decode --providers triton,dense \
    --results-dir "$OUT/results" > "$OUT/profile.log" 2>&1
phase "ncu exit $?"
device=$($PY -c "from mfbench.store import results; f = results.load('$OUT/results'); print(f.loc[f['benchmark'] == 'decode-layer', 'device'].iloc[0])" 2>>"$OUT/phases.log")
$PY -m mfbench.report.findings decode --device "${device:-H200}" --results-dir "$OUT/results" > "$OUT/decode-findings.md" 2>&1
$PY -c "from pathlib import Path; from mfbench.report.plots import decode; from mfbench.store import results; \
print(*decode(results.load('$OUT/results'), Path('$OUT/plots')))" >> "$OUT/phases.log" 2>&1
phase "done"
