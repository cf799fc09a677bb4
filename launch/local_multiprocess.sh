#!/usr/bin/env bash
# Starts N processes of main.py on this machine that form one multi-process JAX job on CPU.
#
# Usage: launch/local_multiprocess.sh N D [--dry-run] [--port=P] [--log_dir=DIR] -- [main.py args...]
#   N               number of processes (>= 1); process i gets --process_id=i
#   D               fake CPU devices per process (>= 1), so the job has N*D devices
#   --dry-run       print the command of every process (one line each, environment first) and exit
#   --port=P        coordinator port on 127.0.0.1 (default: a free port the OS picks)
#   --log_dir=DIR   process i writes DIR/process_i.log (default: process 0 writes to this
#                   terminal, the others to process_i.log in a new temporary directory)
# Options may come before or after N and D. Everything after `--` reaches main.py unchanged,
# followed by --coordinator_address=127.0.0.1:P --num_processes=N --process_id=i. Each process
# runs with JAX_PLATFORMS=cpu, JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo and XLA_FLAGS with
# --xla_force_host_platform_device_count=D (replacing any device count already in XLA_FLAGS).
# Relative paths in the arguments are relative to the current directory, as for main.py itself.
#
# The script waits for all processes. When one fails it stops the others and exits with that
# process's status, naming it and showing the tail of its log; INT, TERM or an exit for any
# other reason stops every process it started (each runs in its own process group, so whatever
# a process spawned goes too).
#
# Environment: PYTHON, the interpreter (default: python). RETRIEVAL_JAX_MAIN, a Python file run
# instead of main.py (a hook for tests and debugging). KILL_GRACE_SECONDS (default 10): how long
# stopped processes get between SIGTERM and SIGKILL.
#
# Example: bash launch/local_multiprocess.sh 2 4 -- --config=configs/dpr.py:smoke --workdir=/tmp/mp_smoke
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"; }
die() { echo "local_multiprocess.sh: $*" >&2; echo "Run with --help for the usage." >&2; exit 2; }
# `wait -n -p` (which process finished first) arrived in bash 5.1.
((BASH_VERSINFO[0] * 100 + BASH_VERSINFO[1] >= 501)) || die "needs bash >= 5.1, this is $BASH_VERSION"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
python=${PYTHON:-python}
main=${RETRIEVAL_JAX_MAIN:-$repo/main.py}
grace=${KILL_GRACE_SECONDS:-10}

dry_run=0
port=""
log_dir=""
positional=()
while (($#)); do
  case $1 in
    --) shift; break ;;
    --dry-run) dry_run=1 ;;
    --port=*) port=${1#*=} ;;
    --log_dir=*) log_dir=${1#*=} ;;
    --port | --log_dir) die "write $1=VALUE" ;;
    -h | --help) usage; exit 0 ;;
    -[0-9]*) positional+=("$1") ;;  # a negative N or D: reported below
    -*) die "unknown option '$1' (arguments for main.py go after --)" ;;
    *) positional+=("$1") ;;
  esac
  shift
done
main_args=("$@")

((${#positional[@]} == 2)) || die "expected N (processes) and D (devices per process) before --, got ${#positional[@]} argument(s): ${positional[*]:-none}"
n=${positional[0]}
d=${positional[1]}
[[ $n =~ ^[0-9]+$ ]] && ((10#$n >= 1)) || die "N (number of processes) must be an integer >= 1, got '$n'"
[[ $d =~ ^[0-9]+$ ]] && ((10#$d >= 1)) || die "D (devices per process) must be an integer >= 1, got '$d'"
n=$((10#$n))
d=$((10#$d))
[[ $grace =~ ^[0-9]+$ ]] || die "KILL_GRACE_SECONDS must be a whole number of seconds, got '$grace'"
if [[ -n $port ]]; then
  [[ $port =~ ^[0-9]+$ ]] && ((10#$port >= 1 && 10#$port <= 65535)) || die "--port must be an integer in 1..65535, got '$port'"
  port=$((10#$port))
else
  # The OS picks a free port; it is released before the coordinator binds it, a tiny race.
  port=$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])') ||
    die "could not pick a free port with '$python' (set PYTHON or pass --port=P)"
fi

# Keep the caller's other XLA flags; only the device count is ours.
read -ra inherited_flags <<<"${XLA_FLAGS:-}"
xla_flags=""
for flag in "${inherited_flags[@]}"; do
  [[ $flag == --xla_force_host_platform_device_count=* ]] || xla_flags+="$flag "
done
xla_flags+="--xla_force_host_platform_device_count=$d"
env_assignments=(JAX_PLATFORMS=cpu "XLA_FLAGS=$xla_flags" JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo)

# shellcheck source=launch/shell_words.sh
source "$(dirname "${BASH_SOURCE[0]}")/shell_words.sh"  # shown

command_of() {  # command_of I: sets `cmd` to process I's command line (without the environment)
  cmd=("$python" "$main" "${main_args[@]}" "--coordinator_address=127.0.0.1:$port"
    "--num_processes=$n" "--process_id=$1")
}

if ((dry_run)); then
  for ((i = 0; i < n; i++)); do
    command_of "$i"
    shown "${env_assignments[@]}" "${cmd[@]}"
  done
  exit 0
fi

explicit_logs=0
if [[ -n $log_dir ]]; then
  explicit_logs=1
  mkdir -p "$log_dir"
elif ((n > 1)); then
  log_dir=$(mktemp -d "${TMPDIR:-/tmp}/local_multiprocess.XXXXXX")
fi

declare -a pids=()     # pid of process i (also its process group id)
declare -A index_of=() # pid -> i, for the processes not yet waited for

stop_all() {  # TERM every process group still running, KILL after the grace period, reap all.
  local pid waited=0
  ((${#index_of[@]})) || return 0
  for pid in "${!index_of[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  # Wait for the processes we started (bash reaps them as they exit); the groups could hold
  # unreaped zombies of their children, which would look alive to `kill -0 -- -pgid`.
  while ((waited < grace * 10)); do
    local alive=0
    for pid in "${!index_of[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    ((alive)) || break
    sleep 0.1
    waited=$((waited + 1))
  done
  # KILL whatever is left in the groups, such as children that outlived their parent.
  for pid in "${!index_of[@]}"; do kill -KILL -- "-$pid" 2>/dev/null || true; done
  for pid in "${!index_of[@]}"; do wait "$pid" 2>/dev/null || true; done
  index_of=()
}
trap 'stop_all' EXIT
trap 'echo "local_multiprocess.sh: interrupted, stopping all processes" >&2; stop_all; exit 130' INT
trap 'echo "local_multiprocess.sh: terminated, stopping all processes" >&2; stop_all; exit 143' TERM

for ((i = 0; i < n; i++)); do
  command_of "$i"
  log=""
  if ((i > 0)) || ((explicit_logs)); then log="$log_dir/process_$i.log"; fi
  # Job control on while starting: the process gets its own process group, so stopping it
  # stops whatever it spawned; off again so bash prints no job notices.
  set -m
  if [[ -n $log ]]; then
    env "${env_assignments[@]}" "${cmd[@]}" </dev/null >"$log" 2>&1 &
  else
    env "${env_assignments[@]}" "${cmd[@]}" </dev/null &
  fi
  pids[i]=$!
  set +m
  index_of[$!]=$i
done
echo "local_multiprocess.sh: started $n processes (pids ${pids[*]}), coordinator 127.0.0.1:$port, $d CPU devices each" >&2
if ((explicit_logs)); then
  echo "local_multiprocess.sh: logs in $log_dir/process_<i>.log" >&2
elif ((n > 1)); then
  echo "local_multiprocess.sh: process 0 writes here; processes 1..$((n - 1)) write to $log_dir/process_<i>.log" >&2
fi

while ((${#index_of[@]})); do
  status=0
  finished=""
  wait -n -p finished "${!index_of[@]}" || status=$?
  [[ -n $finished ]] || break
  i=${index_of[$finished]}
  unset "index_of[$finished]"
  if ((status != 0)); then
    stop_all
    echo "local_multiprocess.sh: process $i (pid $finished) failed with exit status $status; stopped the others" >&2
    if ((i > 0)) || ((explicit_logs)); then
      echo "--- last 20 lines of $log_dir/process_$i.log ---" >&2
      tail -n 20 "$log_dir/process_$i.log" >&2 || true
    else
      echo "(process 0 wrote to this terminal, see above)" >&2
    fi
    exit "$status"
  fi
done
echo "local_multiprocess.sh: all $n processes finished" >&2
