#!/usr/bin/env bash
# Semi-automatic labelling with a simulated annotator (docs/WORKFLOW.md): grey/white-matter segmentation of axial
# slices of the MNI152 2009a T1. A pool of unlabelled slices; each round `vesalius label suggest` ranks the pool,
# the annotator "corrects" the first K pre-labels by revealing the true label maps, `vesalius label accept` adds them
# and the next run starts from the previous network. Test Dice on held-out slices after every round, for each
# ranking method. Usage: scripts/label-simulation.sh [WORKDIR] (needs target/release/vesalius or VESALIUS=…).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
V=${VESALIUS:-$ROOT/target/release/vesalius}
W=${1:-/tmp/label-simulation}
METHODS=${METHODS:-random entropy tta mc-dropout}
ROUNDS=${ROUNDS:-4}
K=${K:-2}
FX=$ROOT/fixtures/mni152
mkdir -p "$W/pool" "$W/truth" "$W/test"
slice() { # volume, z, out
  "$V" convert "$1" "$3" --slice "2:$2" > /dev/null
}
# Pool: slices 30–90 and 136–166 every 4 (24 slices); test: 100–124 every 6 (5 slices), at least 10 mm from any
# pool slice; the two slices labelled at the start are fixed.
POOL="$(seq 30 4 90) $(seq 136 4 166)"
for z in $POOL; do
  slice "$FX/mni152_t1.nii.gz" "$z" "$W/pool/t1_z$z.nii.gz"
  slice "$FX/mni152_tissue_labels.nii.gz" "$z" "$W/truth/t1_z$z.nii.gz"
done
TEST=""
for z in $(seq 100 6 124); do
  slice "$FX/mni152_t1.nii.gz" "$z" "$W/test/t1_z$z.nii.gz"
  slice "$FX/mni152_tissue_labels.nii.gz" "$z" "$W/test/label_z$z.nii.gz"
  TEST="$TEST  { id = \"test_z$z\", image = [\"$W/test/t1_z$z.nii.gz\"], label = \"$W/test/label_z$z.nii.gz\" },
"
done
cat > "$W/round0.toml" <<TOML
task = "segmentation"

[data]
cases = [
  { id = "t1_z50", image = ["$W/pool/t1_z50.nii.gz"], label = "$W/truth/t1_z50.nii.gz" },
  { id = "t1_z152", image = ["$W/pool/t1_z152.nii.gz"], label = "$W/truth/t1_z152.nii.gz" },
]
test = [
$TEST]
channel_names = ["T1"]
labels = { other = 0, grey_matter = 1, white_matter = 2 }
slab = { axis = 0, start = 150, end = 197 }

[plan]
target_spacing = [1.0, 1.0]
patch = [96, 96]
batch = 4
features = [8, 16, 32]
dropout = 0.1

[train]
epochs = ${EPOCHS:-20}
iterations = ${ITERATIONS:-25}
lr = 0.003
seed = ${SEED:-0}

[[augment.transforms]]
type = "rand_affine"
prob = 0.5
rotate = [10.0]
scale = 0.1
[[augment.transforms]]
type = "rand_gamma"
prob = 0.3
gamma = [0.8, 1.25]
[[augment.transforms]]
type = "rand_flip"
prob = 0.5
axes = [0]
TOML
"$V" train "$W/round0.toml" --out "$W/run-round0" --quiet > "$W/round0.log"
"$V" evaluate --run "$W/run-round0" > /dev/null
for method in $METHODS; do
  prev_recipe=$W/round0.toml
  prev_run=$W/run-round0
  for r in $(seq 1 "$ROUNDS"); do
    out=$W/$method/round$r
    mkdir -p "$out/labels"
    "$V" label suggest --run "$prev_run" --pool "$W/pool" -n "$K" --method "$method" --seed "$(( ${SEED:-0} * 100 + r ))" -o "$out/suggest" > "$out/suggest.log"
    for f in "$out"/suggest/t1_z*.nii.gz; do
      cp "$W/truth/$(basename "$f")" "$out/labels/"
    done
    "$V" label accept --recipe "$prev_recipe" --run "$prev_run" --pool "$W/pool" --labels "$out/labels" -o "$out/recipe.toml" > /dev/null
    "$V" train "$out/recipe.toml" --out "$out/run" --quiet > "$out/train.log"
    "$V" evaluate --run "$out/run" > /dev/null
    cut -d, -f2 "$out/suggest/suggestions.csv" | sed -n "2,$((K + 1))p" | xargs -n1 basename | tr '\n' ' ' > "$out/chosen.txt"
    prev_recipe=$out/recipe.toml
    prev_run=$out/run
  done
done
# Test Dice of every run (metrics.json: the 5 test slices, 95 % intervals over slices).
python3 - "$W" "$METHODS" "$ROUNDS" "$K" <<'PY'
import json, os, sys
w, methods, rounds, k = sys.argv[1], sys.argv[2].split(), int(sys.argv[3]), int(sys.argv[4])
def dice(run):
    m = json.load(open(os.path.join(run, "metrics.json")))["mean"]
    return [m[c]["dice"] for c in ("grey_matter", "white_matter")]
def fmt(d):
    return f"{d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]"
rows = ["method,round,labelled,dice_grey,dice_grey_low,dice_grey_high,dice_white,dice_white_low,dice_white_high,chosen"]
g, wm = dice(os.path.join(w, "run-round0"))
print(f"{'start':<11} labelled  2  grey {fmt(g)}  white {fmt(wm)}")
for method in methods:
    for r in range(1, rounds + 1):
        out = os.path.join(w, method, f"round{r}")
        g, wm = dice(os.path.join(out, "run"))
        chosen = open(os.path.join(out, "chosen.txt")).read().split()
        print(f"{method:<11} labelled {2 + k * r:2d}  grey {fmt(g)}  white {fmt(wm)}  chose {' '.join(chosen)}")
        rows.append(",".join([method, str(r), str(2 + k * r)] + [f"{d[x]:.4f}" for d in (g, wm) for x in ("value", "ci_low", "ci_high")] + [" ".join(chosen)]))
open(os.path.join(w, "results.csv"), "w").write("\n".join(rows) + "\n")
PY
