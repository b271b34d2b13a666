#!/usr/bin/env bash
# One call of the GPU machine (issue 15), sized for a 15-minute lease and a 10-minute command: record the device,
# run the GPU benchmarks (at most BENCH_S seconds), then the next part of the full profile's reference run
# (python -m theorems.reference: only the checks no stored part has finished; interrupted after PART_S seconds,
# as Ctrl-C, so the finished checks are reported).  Everything comes back under $OUT (at most 8 files):
#   device.txt  bench.json  bench.log  reference.log  <run>/{verdicts.json,summary.md,pytest.log}
# Back here: copy $OUT/<run>/ into reports/reference/full-h100/parts/, run
#   python -m theorems.reference merge reports/reference/full-h100
# and commit.  Usage, from the repository root on the device machine:
#   bash reports/reference/device.sh COMMIT [PART_S=300] [BENCH_S=100]
set -u
commit=${1:?the commit this copy was made from}
part_s=${2:-300}
bench_s=${3:-100}
device=${DEVICE:-cuda}                               # DEVICE=cpu REFERENCE=/tmp/ref: a smoke test off the GPU
reference=${REFERENCE:-reports/reference/full-h100}
export PYTHONUNBUFFERED=1 THEOREMS_SOURCE_COMMIT=$commit
python3 -m pip install -q --no-deps --no-build-isolation -e . > "$OUT/device.txt" 2>&1 || { cat "$OUT/device.txt"; exit 1; }
{ nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
  nproc; } >> "$OUT/device.txt" 2>&1
timeout -s INT "$bench_s" python3 -m pytest checks/bench --benchmark-only -n 0 -p no:cacheprovider \
  --device "$device" --benchmark-json "$OUT/bench.json" -q > "$OUT/bench.log" 2>&1
python3 -m theorems.reference run "$reference" --device "$device" --time-limit "$part_s" \
  --export "$OUT" -- -n auto -q > "$OUT/reference.log" 2>&1
tail -n 25 "$OUT/bench.log"; tail -n 40 "$OUT/reference.log"
