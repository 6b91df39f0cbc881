#!/usr/bin/env bash
# The GPU check: one script, under 8 minutes on one large GPU, that writes $OUT/gpu.json (default ./gpu_check).
#
#   bash benchmarks/gpu_check.sh [OUT]
#
# 1. the gpu-marked tests;
# 2. feature extraction with the UNI architecture (ViT-L/16, random weights) in bfloat16, without and with
#    torch.compile: tiles/s, bins/s, peak GPU memory;
# 3. the whole-slide training benchmark (benchmarks/train.py: 4,235 spots, 1,000 genes, 1,029 features,
#    434,190 bins; 60 epochs, 5 states) on cuda, stage by stage;
# 4. a HistexModel fitted on three toy sections on cuda, saved, loaded and predicting a fourth (seconds, Pearson).
# Each step has its own time limit and its own entry in gpu.json; a step that fails records its error and the
# others still run. Python is $PYTHON, else .venv/bin/python, else python3; histex is installed from this folder
# (without dependencies) when that Python lacks it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-${OUT:-gpu_check}}
mkdir -p "$OUT"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
"$PY" -c "import histex" 2>/dev/null || "$PY" -m pip install -q --no-deps -e . >"$OUT/install.log" 2>&1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
start=$(date +%s)

step() {  # step NAME SECONDS COMMAND...: run with a time limit, keep its output and exit status
  local name=$1 limit=$2
  shift 2
  local t0=$(date +%s)
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 )) s"
  echo "{\"rc\": $rc, \"seconds\": $(( $(date +%s) - t0 ))}" >"$OUT/$name.status.json"
}

"$PY" -c "import torch; print(torch.__version__, torch.cuda.get_device_name(0))" >"$OUT/device.log" 2>&1

step tests 100 "$PY" -m pytest -m gpu -q -p no:cacheprovider tests
step features 70 "$PY" benchmarks/features.py --model uni --random-weights --device cuda --precision bfloat16 \
  --tiles 4096 --json
step features_compiled 110 "$PY" benchmarks/features.py --model uni --random-weights --device cuda \
  --precision bfloat16 --tiles 4096 --compile --json
step train 200 "$PY" benchmarks/train.py --device cuda --out "$OUT/train"
step model 80 "$PY" - "$OUT" <<'EOF'
import json, sys, time
from pathlib import Path

import torch

import histex as hx
from histex._bench import load_family

out = Path(sys.argv[1])
sections = load_family("toy", toy_size_um=1600, n_genes=60)
for sdata in sections:
    hx.pp.extract_features(sdata, show_progress=False)
a, b, c, d = sections
result = {}
t = time.perf_counter()
model = hx.HistexModel(epochs=60, n_states=5).fit([a, b, c], device="cuda", show_progress=False)
result["fit_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
folder = model.save(out / "model", overwrite=True)
result["save_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
loaded = hx.HistexModel.load(folder, device="cuda")
loaded.predict(d, key_added="many", show_progress=False)
result["load_predict_s"] = round(time.perf_counter() - t, 2)
t = time.perf_counter()
loaded.predict(d, key_added="he_only", use_spots=False, show_progress=False)
result["predict_he_only_s"] = round(time.perf_counter() - t, 2)
for key in ("many", "he_only"):
    scores = hx.metrics.score(d.tables[key], d.tables["truth"])
    result[f"pearson_{key}"] = round(float(hx.metrics.summarise(scores)["pearson"]), 4)
result["device"] = d.tables["many"].uns["histex"]["params"]["device"]
result["peak_gpu_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
print("JSON " + json.dumps(result))
EOF

"$PY" - "$OUT" "$start" <<'EOF'
import json, re, sys, time
from pathlib import Path

out, start = Path(sys.argv[1]), float(sys.argv[2])
report = {"device": (out / "device.log").read_text().strip(), "steps": {}}
for name in ("tests", "features", "features_compiled", "train", "model"):
    status = json.loads((out / f"{name}.status.json").read_text()) if (out / f"{name}.status.json").is_file() else {}
    log = (out / f"{name}.log").read_text(errors="replace") if (out / f"{name}.log").is_file() else ""
    entry = dict(status)
    found = [line[5:] for line in log.splitlines() if line.startswith("JSON ")]
    if found:
        entry["result"] = json.loads(found[-1])
    if name == "tests":
        counts = r"\d+ (passed|failed|skipped|deselected|errors?)"
        entry["summary"] = next((l for l in reversed(log.splitlines()) if re.search(counts, l)), "")
    if name == "train" and (out / "train" / "train.json").is_file():
        entry["result"] = json.loads((out / "train" / "train.json").read_text())
    if status.get("rc"):
        entry["log_tail"] = log[-1500:]
    report["steps"][name] = entry
report["total_s"] = round(time.time() - start, 1)
(out / "gpu.json").write_text(json.dumps(report, indent=1))
print(json.dumps(report, indent=1)[:6000])
EOF
