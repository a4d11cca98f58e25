#!/bin/bash
# The GPU checks from prebuilt executables, on a machine with an NVIDIA GPU, PyTorch and no Rust toolchain.
#
# Usage (from the repository's root):  xtask/gpu-run.sh BIN_DIR OUT_DIR [SECONDS] [WORKLOADS]
#
# BIN_DIR holds, each plain or compressed with xz (`NAME.xz`):
#   vesalius         the CLI built with `--features cuda` (or `cuda-fusion`)
#   nets-it          optional: the vesalius-nets integration tests built with `--features vesalius-nets/test-cuda`
#                    (`cargo test -p vesalius-nets --features test-cuda --test it --no-run`)
#   cubecl-cache.tar optional: the tuning and compiled kernels an earlier run left in its OUT_DIR
# SECONDS bounds the whole run (default 540); WORKLOADS is a comma-separated list (default: the reference ones).
# FIRST_TESTS (environment) names a test filter that runs before the workloads (nets-it-first.txt).
#
# Autotune times every candidate kernel of each new operation shape on first use (seconds per shape), so each
# workload runs once under the remaining time: its `first_step_s` is that cost, its timed steps come after. Its
# PyTorch twin (`xtask/torch_cuda.py`) runs right after it, so both sides of a ratio come from the same minutes.
# Tuning left unfinished is kept: the cache folder (VESALIUS_CACHE_DIR, default a temporary one) goes to
# OUT_DIR/cubecl-cache.tar (also when time runs out; its files listed in cache-files.txt) for the next run's BIN_DIR;
# a VESALIUS_CACHE_DIR set by the caller (e.g. under target/, which a lent machine keeps between calls) carries it
# without the round trip. The tests run with `--nocapture`, so a failure's message is printed when it happens.
# OUT_DIR receives results.jsonl (one line per run: tag, wall_ms, and the bench's JSON or the error), log.txt,
# nets-it.txt and the cache; with AUTOTUNE_LOG=1 also autotune.log, the kernel chosen for each shape (through a
# cubecl.toml in the root, which then sets the cache folder in place of the CLI's own setting).
# Test executables find their fixtures through the checkout they were built in (CARGO_MANIFEST_DIR): BUILD_ROOT
# (default /work/main) names it, and where that path does not exist it is linked to this checkout.
set -u
BIN=${1:?usage: xtask/gpu-run.sh BIN_DIR OUT_DIR [SECONDS] [WORKLOADS]}
OUT=${2:?usage: xtask/gpu-run.sh BIN_DIR OUT_DIR [SECONDS] [WORKLOADS]}
END=$(($(date +%s) + ${3:-540}))
WL=${4:-a_lenet5_train,d_unet3d_train,b_resnet18_train,c_unet2d_train,g_voxelmorph_train,e_convae_train,f_cnnlstm_train,d_unet3d_infer96,c_unet2d_infer,g_voxelmorph_infer,h_redcnn_train,i_crnn_train,j_deepsurv_train,k_centre3d_train}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1
WORK=$(mktemp -d)
export VESALIUS_CACHE_DIR=${VESALIUS_CACHE_DIR:-$WORK/cache}
mkdir -p "$VESALIUS_CACHE_DIR"
left() { echo $((END - $(date +%s))); }
unpack() { # NAME: BIN/NAME or BIN/NAME.xz into WORK/NAME
  if [ -f "$BIN/$1" ]; then cp "$BIN/$1" "$WORK/$1"
  elif [ -f "$BIN/$1.xz" ]; then
    xz -dc "$BIN/$1.xz" > "$WORK/$1" 2>/dev/null ||
      python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), sys.stdout.buffer)' "$BIN/$1.xz" > "$WORK/$1"
  else return 1; fi
  chmod +x "$WORK/$1"
}
json_str() { python3 -c 'import json,sys; print(json.dumps(sys.stdin.read()))'; }
save_cache() {
  tar -C "$VESALIUS_CACHE_DIR" -cf "$OUT/cubecl-cache.tar" . && echo "cache saved: $(du -sh "$VESALIUS_CACHE_DIR" | cut -f1)"
  (cd "$VESALIUS_CACHE_DIR" && find . -type f -printf '%s %p\n' | sort -k2) > "$OUT/cache-files.txt"
}
trap save_cache EXIT

BUILD_ROOT=${BUILD_ROOT:-/work/main}
[ -e "$BUILD_ROOT" ] || { mkdir -p "$(dirname "$BUILD_ROOT")" && ln -s "$PWD" "$BUILD_ROOT"; }
if [ "${AUTOTUNE_LOG:-0}" = 1 ]; then
  printf '[autotune]\ncache = { file = "%s" }\n[autotune.logger]\nfile = "%s"\nlevel = "minimal"\n[compilation]\ncache = { file = "%s" }\n' \
    "$VESALIUS_CACHE_DIR/cubecl" "$OUT/autotune.log" "$VESALIUS_CACHE_DIR/cubecl" > cubecl.toml
fi
unpack vesalius || { echo "no vesalius in $BIN"; exit 2; }
unpack cubecl-cache.tar && tar -C "$VESALIUS_CACHE_DIR" -xf "$WORK/cubecl-cache.tar" && echo "cache restored: $(du -sh "$VESALIUS_CACHE_DIR" | cut -f1)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
echo "start $(date -u +%T), $(left) s"

# A run: TAG LIMIT COMMAND…; appends one JSON line to results.jsonl.
run() {
  local tag=$1 lim=$2; shift 2
  local t=$(date +%s%N)
  timeout "$lim" "$@" > "$WORK/o" 2> "$WORK/e"; local rc=$?
  local ms=$((($(date +%s%N) - t) / 1000000))
  local line; line=$(grep -h '^{' "$WORK/o" | tail -1)
  if [ $rc -eq 0 ] && [ -n "$line" ]; then echo "{\"tag\":\"$tag\",\"wall_ms\":$ms,\"r\":$line}"
  else echo "{\"tag\":\"$tag\",\"rc\":$rc,\"wall_ms\":$ms,\"err\":$(tail -c 800 "$WORK/e" | json_str)}"; fi | tee -a "$OUT/results.jsonl"
}

TESTS=0; unpack nets-it && TESTS=1
# FIRST_TESTS: a test-name filter run before the workloads (up to 90 s), e.g. a failure to read first.
if [ $TESTS = 1 ] && [ -n "${FIRST_TESTS:-}" ]; then
  (cd crates/nets && timeout 90 "$WORK/nets-it" "$FIRST_TESTS" --nocapture 2>&1) > "$OUT/nets-it-first.txt"
  grep -E "^test .*(ok|FAILED)$|^test result|panicked|^thread|disagree" -A3 "$OUT/nets-it-first.txt" | tail -30
fi
RESERVE=$((TESTS * 120 + 10))
for w in ${WL//,/ }; do
  lim=$(($(left) - RESERVE)); [ $lim -lt 20 ] && { echo "no time for $w"; continue; }
  run "vesalius $w" "$lim" "$WORK/vesalius" --backend cuda bench --in-process --only "$w"
  lim=$(($(left) - RESERVE)); [ $lim -lt 15 ] && continue
  run "torch $w" "$((lim < 60 ? lim : 60))" python3 xtask/torch_cuda.py xtask/torch_bench.py --only "$w"
done
echo "workloads done $(date -u +%T), $(left) s"

if [ $TESTS = 1 ] && [ "$(left)" -gt 30 ]; then
  (cd crates/nets && timeout $(($(left) - 10)) "$WORK/nets-it" --nocapture 2>&1) > "$OUT/nets-it.txt"
  grep -E "^test .*(ok|FAILED)$|^test result|panicked|^thread" "$OUT/nets-it.txt" | tail -60
fi
echo "end $(date -u +%T), $(left) s"
