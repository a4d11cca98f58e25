#!/usr/bin/env bash
# Semi-automatic labelling of a classifier with a simulated annotator (docs/WORKFLOW.md): brain-tissue
# classification of 28×28 axial patches of the MNI152 2009a T1, written as PNG files by `vesalius samples`. The
# training slab's patches are the pool; a few per class are labelled at the start; each round `vesalius label
# suggest` ranks the pool, the annotator "corrects" the first K pre-labels by revealing the true classes, `vesalius
# label accept` adds them to the manifest and the next run starts from the previous network. Test accuracy and AUC
# (patches of another slab, never in the pool, never used for selection) after every round, for each method.
# Usage: scripts/label-simulation-classes.sh [WORKDIR] (needs target/release/vesalius or VESALIUS=…).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=${VESALIUS:-$ROOT/target/release/vesalius}
W=${1:-/tmp/label-simulation-classes}
METHODS=${METHODS:-random entropy tta mc-dropout}
ROUNDS=${ROUNDS:-4}
K=${K:-40}
START=${START:-10}
SEED=${SEED:-0}
FX=$ROOT/fixtures/mni152
mkdir -p "$W/pool"
# The patches of the shipped tissue recipe's slabs (train 15–62: the pool; validation 128–140; test 90–100).
cat > "$W/patches.toml" <<TOML
name = "patches"
seed = 42
[data]
kind = "volume-patches"
image = "$FX/mni152_t1.nii.gz"
labels = "$FX/mni152_tissue_labels.nii.gz"
mask = "$FX/mni152_brain_mask.nii.gz"
classes = ["outside brain", "other brain", "grey matter", "white matter"]
patch = 28
per_class = ${PER_CLASS:-250}
seed = 42
slabs = { train = [15, 62], test = [90, 100], val = [128, 140] }
[model]
arch = "mlp"
[train]
epochs = 1
batch_size = 32
optimizer = { kind = "adam", lr = 0.001 }
TOML
"$V" samples "$W/patches.toml" -o "$W/all" > "$W/samples.log"
# Round 0: START labelled training patches per class (the first of each class), all validation and test patches.
awk -F, -v start="$START" 'NR == 1 { print; next }
  $4 == "train" { if (n[$2]++ < start) print; next }
  { print }' "$W/all/manifest.csv" > "$W/all/round0.csv"
awk -F, -v start="$START" 'NR > 1 && $4 == "train" { if (n[$2]++ >= start) print $1 }' "$W/all/manifest.csv" |
  while read -r f; do cp "$W/all/$f" "$W/pool/"; done
awk -F, 'NR > 1 && $4 == "train" { sub("^train/", "", $1); print $1 "," $2 }' "$W/all/manifest.csv" > "$W/truth.csv"
cat > "$W/round0.toml" <<TOML
name = "tissue-labelling"
seed = $SEED
[data]
kind = "csv"
path = "$W/all/round0.csv"
[model]
arch = "mlp"
in_channels = 1
input_size = 28
[train]
epochs = ${EPOCHS:-20}
batch_size = 32
optimizer = { kind = "adam", lr = 0.001 }
select = "auc"
augment = { flip_horizontal = 0.5, intensity_scale = 0.1, intensity_shift = 0.05 }
[eval]
bootstrap = 500
TOML
"$V" train "$W/round0.toml" --out "$W/run-round0" --quiet > "$W/round0.log"
for method in $METHODS; do
  prev_recipe=$W/round0.toml
  prev_run=$W/run-round0
  for r in $(seq 1 "$ROUNDS"); do
    out=$W/$method/round$r
    mkdir -p "$out"
    "$V" label suggest --run "$prev_run" --pool "$W/pool" -n "$K" --method "$method" --seed "$(( SEED * 100 + r ))" -o "$out/suggest" > "$out/suggest.log"
    # The annotator: every pre-label replaced by the true class.
    awk -F, 'NR == FNR { truth[$1] = $2; next }
      FNR == 1 { print; next }
      { n = split($1, parts, "/"); print $1 "," truth[parts[n]] }' "$W/truth.csv" "$out/suggest/labels.csv" > "$out/labels.csv"
    "$V" label accept --recipe "$prev_recipe" --run "$prev_run" --pool "$W/pool" --labels "$out/labels.csv" -o "$out/recipe.toml" > /dev/null
    "$V" train "$out/recipe.toml" --out "$out/run" --quiet > "$out/train.log"
    # How many of the pre-labels the annotator had to change.
    paste -d, <(cut -d, -f2 "$out/suggest/labels.csv") <(cut -d, -f2 "$out/labels.csv") | awk -F, 'NR > 1 && $1 != $2 { c++ } END { print c + 0 }' > "$out/corrected.txt"
    prev_recipe=$out/recipe.toml
    prev_run=$out/run
  done
done
# Test metrics of every run (metrics.json: the test patches, 95 % bootstrap intervals).
python3 - "$W" "$METHODS" "$ROUNDS" "$K" "$START" <<'PY'
import json, os, sys
w, methods, rounds, k, start = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
def metrics(run):
    m = json.load(open(os.path.join(run, "metrics.json")))["metrics"]
    return m["accuracy"], m["auc"]
def fmt(d):
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
rows = ["method,round,labelled,accuracy,accuracy_low,accuracy_high,auc,auc_low,auc_high,corrected"]
acc, auc = metrics(os.path.join(w, "run-round0"))
print(f"{'start':<11} labelled {4 * start:4d}  accuracy {fmt(acc)}  auc {fmt(auc)}")
for method in methods:
    for r in range(1, rounds + 1):
        out = os.path.join(w, method, f"round{r}")
        acc, auc = metrics(os.path.join(out, "run"))
        corrected = open(os.path.join(out, "corrected.txt")).read().strip()
        print(f"{method:<11} labelled {4 * start + k * r:4d}  accuracy {fmt(acc)}  auc {fmt(auc)}  pre-labels corrected {corrected}/{k}")
        rows.append(",".join([method, str(r), str(4 * start + k * r)] + [f"{d[x]:.4f}" for d in (acc, auc) for x in ("value", "ci_low", "ci_high")] + [corrected]))
open(os.path.join(w, "results.csv"), "w").write("\n".join(rows) + "\n")
PY
