#!/usr/bin/env bash
# The GPU measurements owed by issue 15, one prepared script (docs/benchmarks.md, "owed").
#
#   bash bertjax/bench/gpu.sh hf|sweep|profile|all OUT_DIR
#
# hf:      bench --compare=hf for Base 128 x 256 (HF eager and torch.compile), Base 512 x 32 and
#          Large 128 x 128 (torch.compile).
# sweep:   the largest batch that fits, Base at 128 and at 512, for remat none, dots and full.
# profile: a jax.profiler trace of the Base 128 x 256 step, summarised per op class.
# Every bench call prints JSON lines (a failed run is a row with "failed": true and exits 1);
# they are appended to OUT_DIR/bench.jsonl with a header line per call, and the log of each call
# goes to OUT_DIR/<name>.log. A call that fails or times out does not stop the script.
#
# The GPU machines have jax, flax, optax, torch and transformers but neither TensorFlow (bench
# never imports it) nor ml_collections: when .whl/ holds a carried ml-collections wheel it is
# installed to /tmp/site first. Each stage fits in one device call of at most 10 minutes on one
# H100/H200 by the per-call timeouts below; `all` needs about twice that.
set -u -o pipefail

stage="${1:-all}"
out="${2:-${OUT:-/tmp/bench_gpu}}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi

bench() {  # bench NAME TIMEOUT_S ARGS...: one bench call, its rows kept whatever happens
  local name="$1" limit="$2"
  shift 2
  echo "{\"call\": \"$name\", \"args\": \"$*\", \"utc\": \"$(date -u +%FT%TZ)\"}" >>"$out/bench.jsonl"
  timeout "$limit" python3 -m bertjax bench "$@" 2>"$out/$name.log" | tee -a "$out/bench.jsonl"
  local rc=${PIPESTATUS[0]}
  echo "{\"call\": \"$name\", \"exit\": $rc}" >>"$out/bench.jsonl"
  [ "$rc" -eq 0 ] || tail -n 3 "$out/$name.log"
}

base=(--config=configs/bert_base.py)
base512=(--config=configs/bert_base.py:512)
large=(--config=configs/bert_large.py)
run_hf() {
  # BERT's recipe on both sides (attention dropout 0.1: "auto" runs xla attention while training),
  # then ours with attention dropout off, which lets "auto" pick cuDNN's fused attention.
  bench base128_hf 240 "${base[@]}" --config.train.batch_size=256 --compare=hf --steps=20
  bench base128_cudnn 90 "${base[@]}" --config.train.batch_size=256 \
    --config.model.attention_dropout=0.0 --steps=20
  bench base512_hf 150 "${base512[@]}" --config.train.batch_size=32 --compare=hf \
    --hf_modes=compile --steps=20
  bench large128_hf 180 "${large[@]}" --config.train.batch_size=128 --compare=hf \
    --hf_modes=compile --steps=20
}
run_sweep() {
  local remat
  for remat in none dots full; do
    bench "sweep128_$remat" 120 "${base[@]}" --config.model.remat="$remat" --steps=5 \
      --warmup=1 --batch_sweep=256,512,1024,2048
    bench "sweep512_$remat" 100 "${base512[@]}" --config.model.remat="$remat" --steps=5 \
      --warmup=1 --batch_sweep=32,64,128,256
  done
}
run_profile() {
  bench base128_profile 150 "${base[@]}" --config.train.batch_size=256 --steps=5 \
    --profile_dir="$out/profile"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c 'import jax, torch, transformers; print(jax.__version__, jax.devices(), torch.__version__, transformers.__version__)'
} >"$out/machine.txt" 2>&1
case "$stage" in
  hf) run_hf ;;
  sweep) run_sweep ;;
  profile) run_profile ;;
  all) run_hf; run_profile; run_sweep ;;
  *) echo "usage: bash bertjax/bench/gpu.sh hf|sweep|profile|all OUT_DIR" >&2; exit 2 ;;
esac
echo "rows in $out/bench.jsonl"
