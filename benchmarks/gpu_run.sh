#!/usr/bin/env bash
# One GPU run of every measurement, prepared to fit a short lease on a machine without network.
#
#   benchmarks/gpu_run.sh                      # on the GPU machine, from the checkout
#   PROVIDER=cpu benchmarks/gpu_run.sh          # the same steps at CPU size (a dry run of this script)
#
# Environment (all optional):
#   OUT         where the bundle and logs go (default ./gpu-out); at most a few files, one .tar.gz
#   STAGE       folder(s) holding the staged onnxruntime-gpu parts p1/part, p2/part, ... (default
#               .gpu-stage; parts copied ahead into /tmp/ort-stage by earlier calls are used too)
#   BUDGET      seconds for benchmarks/suite.py (default 420)
#   SUITE_ARGS  extra suite arguments, e.g. "--only layers-large headline-1 headline-2" or "--models DIR"
#   PROVIDER    cuda (default) or cpu
#   SITE        where onnxruntime-gpu is unpacked and put on PYTHONPATH (default /tmp/site)
#
# Steps, each under its own `timeout`: unpack onnxruntime-gpu into /tmp/site (skipped when it is
# there already or PROVIDER=cpu), record the machine (nvidia-smi, versions, the provider probe),
# run the suite, and pack results + logs into $OUT/gpu-run.tar.gz.  The suite rewrites its
# results after every step, so a step stopped by its timeout still leaves what finished.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-out}
STAGE=${STAGE:-.gpu-stage}
BUDGET=${BUDGET:-420}
PROVIDER=${PROVIDER:-cuda}
SUITE_ARGS=${SUITE_ARGS:-}
PY=${PYTHON:-python3}
WORK=${WORK:-/tmp/gpu-run}
SITE=${SITE:-/tmp/site}
mkdir -p "$OUT" "$WORK/results"
LOG="$WORK/results/gpu_run.log"
: > "$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG"; }
started=$(date +%s)

# 1. onnxruntime-gpu, staged in parts (cat p1 p2 ... | xz -d | tar -x)
if [ "$PROVIDER" != cpu ] && [ ! -d "$SITE/onnxruntime" ]; then
  parts=$(ls -1 /tmp/ort-stage/p*/part "$STAGE"/p*/part 2>/dev/null | awk -F/ '{print $(NF-1)" "$0}' \
          | sort -V -u -k1,1 | cut -d' ' -f2)
  if [ -z "$parts" ]; then
    say "no staged onnxruntime parts in $STAGE or /tmp/ort-stage: using the onnxruntime installed here, if any"
  else
    say "unpacking onnxruntime from $(echo "$parts" | wc -l) parts into $SITE"
    mkdir -p "$SITE"
    if command -v xz >/dev/null; then
      cat $parts | timeout 180 xz -d | timeout 180 tar -x -C "$SITE" 2>>"$LOG" || say "unpacking failed (exit $?)"
    else
      cat $parts | timeout 180 "$PY" -c "import lzma,sys,shutil; shutil.copyfileobj(lzma.open(sys.stdin.buffer), sys.stdout.buffer)" \
        | timeout 180 tar -x -C "$SITE" 2>>"$LOG" || say "unpacking failed (exit $?)"
    fi
  fi
fi
if [ "$PROVIDER" != cpu ] && [ -d "$SITE/onnxruntime" ]; then
  export PYTHONPATH=$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1

# 2. the machine: GPU, driver, versions, whether onnxruntime's CUDA provider and PyTorch's CUDA work
{
  echo "## nvidia-smi"; timeout 30 nvidia-smi 2>&1 || echo "nvidia-smi: not available"
  echo "## clocks"; timeout 30 nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.max.mem,memory.total --format=csv 2>&1 || true
  echo "## python"; timeout 60 "$PY" - <<'EOF' 2>&1
import importlib, platform
print("python", platform.python_version(), platform.platform())
for name in ["numpy", "onnx", "onnxruntime", "torch", "timm", "transformers", "torchaudio"]:
    try:
        module = importlib.import_module(name)
        print(name, getattr(module, "__version__", "?"), getattr(module, "__file__", ""))
    except Exception as exc:  # noqa: BLE001
        print(name, "not importable:", type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
try:
    import torch
    print("torch.cuda", torch.cuda.is_available(), torch.version.cuda, torch.backends.cudnn.version(),
          torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
except Exception as exc:  # noqa: BLE001
    print("torch.cuda: no", exc)
try:
    import onnxruntime as ort
    print("onnxruntime providers", ort.get_available_providers())
except Exception as exc:  # noqa: BLE001
    print("onnxruntime: no", exc)
EOF
} > "$WORK/results/machine.txt" 2>&1
say "machine: $(grep -m1 -E '^torch.cuda' "$WORK/results/machine.txt")"

# 3. the suite (its own budget; the timeout stops it 90 s past that)
quick=""
[ "$PROVIDER" = cpu ] && quick="--quick"
say "suite: --provider $PROVIDER --budget $BUDGET $quick $SUITE_ARGS"
# shellcheck disable=SC2086
timeout $((BUDGET + 90)) "$PY" benchmarks/suite.py --provider "$PROVIDER" --budget "$BUDGET" $quick $SUITE_ARGS \
  --out "$WORK/results/suite" >>"$LOG" 2>&1
say "suite exit $? after $(( $(date +%s) - started )) s"

# 4. one bundle: results, logs, the machine (no models)
tar -C "$WORK" --exclude='*.onnx' --exclude='*.onnx.data' -czf "$OUT/gpu-run.tar.gz" results
cp "$LOG" "$OUT/gpu_run.log"
say "bundle: $OUT/gpu-run.tar.gz ($(du -h "$OUT/gpu-run.tar.gz" | cut -f1))"
cp "$LOG" "$OUT/gpu_run.log"
