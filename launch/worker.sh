#!/usr/bin/env bash
# Runs on each worker VM of a TPU slice; the launcher (launch/tpu.py) calls it on all workers at
# once through `gcloud compute tpus tpu-vm ssh --worker=all`.
#
#   worker.sh setup REQUIREMENTS VENV       Python 3.11 venv with the pinned set plus jax[tpu]
#   worker.sh start LOGDIR LOGURL -- CMD..  start CMD detached from ssh; one log per worker, copied
#                                           to LOGURL/ as it grows when that is a gs:// folder
#   worker.sh stop LOGDIR [GRACE_S]         TERM the job (it may checkpoint), then KILL its whole
#                                           process group after GRACE_S
#   worker.sh alive LOGDIR                  one line: "bertjax-worker ID running PID|exited CODE|none
#                                           tree=SYNC_ID"
#   worker.sh logs LOGDIR LINES [follow]    this worker's log tail, each line prefixed by the worker
#
# BERTJAX_WORKER overrides the worker id read from the VM metadata (tests, non-TPU machines).
set -euo pipefail

SELF=$(readlink -f "$0")

die() {
  echo "worker.sh: $*" >&2
  exit 1
}

worker_id() {
  if [[ -n "${BERTJAX_WORKER:-}" ]]; then
    echo "$BERTJAX_WORKER"
    return
  fi
  local id=""
  # The same metadata key JAX reads to find its process id on a TPU VM.
  id=$(curl -sf -m 5 -H 'Metadata-Flavor: Google' \
    http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number) || id=""
  if [[ -n "$id" ]]; then echo "$id"; else hostname; fi
}

job_running() {
  local pidfile=$1/job.pid
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

upload() {
  local file=$1 url=$2
  [[ "$url" == gs://* ]] || return 0
  if command -v gcloud >/dev/null; then
    gcloud storage cp --quiet "$file" "$url" >/dev/null 2>&1 || true
  elif command -v gsutil >/dev/null; then
    gsutil -q cp "$file" "$url" >/dev/null 2>&1 || true
  fi
}

cmd_setup() {
  local req=$1 venv=$2
  [[ -f "$req" ]] || die "setup: $req not found; copy the tree first (launch.tpu sync)"
  local jaxver
  jaxver=$(sed -n 's/^jax==\([0-9][0-9.]*\).*/\1/p' "$req" | head -n 1)
  [[ -n "$jaxver" ]] || die "setup: $req pins no jax==VERSION"
  # The images ship an older Python than the pinned jax needs; uv fetches a 3.11 build if needed.
  local uv
  uv=$(command -v uv || true)
  if [[ -z "$uv" ]]; then
    if ! python3 -m pip --version >/dev/null 2>&1; then
      sudo -n apt-get update -qq && sudo -n apt-get install -y -qq python3-pip
    fi
    python3 -m pip install --user --quiet uv ||
      python3 -m pip install --user --quiet --break-system-packages uv
    uv=$HOME/.local/bin/uv
  fi
  if [[ ! -x "$venv/bin/python" ]]; then
    "$uv" venv --quiet --seed --python 3.11 "$venv"
  fi
  "$uv" pip install --quiet --python "$venv/bin/python" -r "$req" "jax[tpu]==$jaxver"
  # JAX warns that TPU start-up and shutdown are much slower on v5e and newer without these.
  local thp=/sys/kernel/mm/transparent_hugepage/enabled
  if [[ -f "$thp" ]] && ! grep -q '\[always\]' "$thp"; then
    echo always | sudo -n tee "$thp" >/dev/null 2>&1 || echo "worker.sh: could not enable transparent hugepages" >&2
  fi
  "$venv/bin/python" -c 'import jax, flax, optax, orbax.checkpoint, tensorflow
print("bertjax-setup ok: jax", jax.__version__, "flax", flax.__version__)'
}

cmd_start() {
  local logdir=$1 logurl=$2
  shift 2
  [[ "${1:-}" == "--" ]] && shift
  (($# > 0)) || die "start: no command given"
  mkdir -p "$logdir"
  if job_running "$logdir"; then
    die "a job is already running here (pid $(cat "$logdir/job.pid")); stop it first (launch.tpu stop, or run --replace)"
  fi
  local w stamp log
  w=$(worker_id)
  stamp=$(date -u +%Y%m%dT%H%M%SZ)
  log=$logdir/worker-$w.log
  # Keep earlier attempts: after a crash the first log says why.
  [[ -f "$log" ]] && mv "$log" "$logdir/worker-$w.before-$stamp.log"
  rm -f "$logdir/exit_code" "$logdir/job.child"
  # setsid: its own process group, so stop can signal the job and everything it started; nohup and
  # the redirections: the job survives the ssh session that started it.
  setsid nohup bash "$SELF" _supervise "$log" "${logurl:+$logurl/worker-$w.$stamp.log}" \
    "$logdir" -- "$@" </dev/null >/dev/null 2>&1 &
  echo $! >"$logdir/job.pid"
  echo "bertjax-worker $w started pid $! log $log"
}

cmd_supervise() {
  local log=$1 url=$2 logdir=$3
  shift 3
  [[ "${1:-}" == "--" ]] && shift
  # A trapped (not ignored) TERM: the job still gets the default or its own handler, and this
  # wrapper, if the whole group is signalled, lives on to record the exit code and copy the log.
  trap 'true' TERM
  {
    echo "[launch] $(date -u +%FT%TZ) worker $(worker_id) on $(hostname): $*"
    # The settings that decide how JAX and the TPU runtime start, as this job got them.
    echo "[launch] env: $(env | grep -E '^(JAX|TPU|XLA|LIBTPU|TF_CPP|PYTHONUNBUFFERED)[A-Z_]*=' | sort | tr '\n' ' ')"
  } >>"$log"
  "$@" >>"$log" 2>&1 &
  local job=$! up="" code=0
  # stop signals the job alone, so the wait below normally runs uninterrupted to the exit status.
  echo "$job" >"$logdir/job.child"
  if [[ "$url" == gs://* ]]; then
    (while sleep "${BERTJAX_LOG_UPLOAD_S:-120}"; do upload "$log" "$url"; done) &
    up=$!
  fi
  until wait "$job"; do
    code=$?
    kill -0 "$job" 2>/dev/null || break
    code=0
  done
  [[ -n "$up" ]] && { kill "$up" 2>/dev/null || true; }
  echo "[launch] $(date -u +%FT%TZ) exit code $code" >>"$log"
  upload "$log" "$url"
  echo "$code" >"$logdir/exit_code"
}

cmd_stop() {
  local logdir=$1 grace=${2:-60} w pid i
  w=$(worker_id)
  if ! job_running "$logdir"; then
    echo "bertjax-worker $w no job running"
    return 0
  fi
  pid=$(cat "$logdir/job.pid")
  # TERM to the job alone (it may checkpoint); its supervisor then records the exit code.
  if [[ -f "$logdir/job.child" ]]; then
    kill -TERM "$(cat "$logdir/job.child")" 2>/dev/null || true
  else
    kill -TERM -- "-$pid" 2>/dev/null || true
  fi
  for ((i = 0; i < grace; i++)); do
    job_running "$logdir" || break
    sleep 1
  done
  if job_running "$logdir"; then
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
    echo "bertjax-worker $w killed pid $pid after ${grace}s"
  else
    echo "bertjax-worker $w stopped pid $pid"
  fi
}

cmd_alive() {
  local logdir=$1 w tree state
  w=$(worker_id)
  # Which synced tree this worker holds: every worker of a job must run the same code.
  tree=$(cat "$(dirname "$SELF")/../.launch-sync" 2>/dev/null || echo "?")
  if job_running "$logdir"; then
    state="running $(cat "$logdir/job.pid")"
  elif [[ -f "$logdir/exit_code" ]]; then
    state="exited $(cat "$logdir/exit_code")"
  elif [[ -f "$logdir/job.pid" ]]; then
    state="exited killed"
  else
    state="none"
  fi
  echo "bertjax-worker $w $state tree=$tree"
}

cmd_logs() {
  local logdir=$1 lines=${2:-50} follow=${3:-} w log
  w=$(worker_id)
  log=$logdir/worker-$w.log
  if [[ ! -f "$log" ]]; then
    echo "[worker $w] no log at $log"
    return 0
  fi
  if [[ "$follow" == "follow" ]]; then
    tail -n "$lines" -F "$log" | sed -u "s/^/[worker $w] /"
  else
    tail -n "$lines" "$log" | sed "s/^/[worker $w] /"
  fi
}

verb=${1:-}
(($# > 0)) && shift
case "$verb" in
setup) cmd_setup "$@" ;;
start) cmd_start "$@" ;;
_supervise) cmd_supervise "$@" ;;
stop) cmd_stop "$@" ;;
alive) cmd_alive "$@" ;;
logs) cmd_logs "$@" ;;
*) die "unknown verb '$verb'; use setup, start, stop, alive or logs" ;;
esac
