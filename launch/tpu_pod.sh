#!/usr/bin/env bash
# Runs main.py on every worker of a Cloud TPU VM (pod slice): ship the code, optionally install
# it, then start the same command on all workers at once.
#
# Usage: launch/tpu_pod.sh --tpu=NAME --zone=ZONE [--project=P] [--repo_dir=DIR] [--sync|--no-sync]
#            [--install] [--python=CMD] [--dry-run] -- [main.py args...]
#   --tpu, --zone   the TPU VM and its zone (required); --project: the gcloud project
#   --repo_dir=DIR  where the code lives on the workers (default: ~/retrieval_jax, `~` is the
#                   worker's home)
#   --sync          (default) pack this repository's files -- tracked and untracked ones, without
#                   what .gitignore excludes (runs/, caches) and without .git -- into one tarball,
#                   copy it to every worker and unpack it into DIR (files deleted here stay there)
#   --no-sync       the code is already on the workers
#   --install       on every worker: CMD -m pip install -e . "jax[tpu]" in DIR
#   --python=CMD    the workers' interpreter (default: python3, the only one TPU VM images have)
#   --dry-run       print the commands (each gcloud line runnable as printed) and run nothing
# Everything after `--` reaches main.py, followed by --distributed=true: on a TPU slice JAX finds
# the coordinator, the process count and each process id by itself. Each argument is quoted
# (printf %q) for the workers' shell, so overrides with spaces or quotes arrive unchanged.
#
# Why a tarball of `git ls-files`: it ships exactly the code you see (uncommitted edits and new
# files included), never checkpoints, data or .git, and costs one small copy per worker;
# `scp --recurse` of the directory would copy all of runs/ to every worker, `git archive HEAD`
# would miss uncommitted edits.
#
# Example: bash launch/tpu_pod.sh --tpu=my-v4-32 --zone=us-central2-b --install -- \
#            --config=configs/ance.py --workdir=gs://my-bucket/ance
set -euo pipefail

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p;}' "${BASH_SOURCE[0]}"; }
die() { echo "tpu_pod.sh: $*" >&2; echo "Run with --help for the usage." >&2; exit 2; }

# No dirname: nothing outside bash runs before the gcloud check.
script_dir=.
[[ ${BASH_SOURCE[0]} != */* ]] || script_dir=${BASH_SOURCE[0]%/*}
repo=$(cd "$script_dir/.." && pwd)
tpu=""
zone=""
project=""
repo_dir="~/retrieval_jax"
remote_python=python3
sync=1
install=0
dry_run=0
while (($#)); do
  case $1 in
    --) shift; break ;;
    --tpu=*) tpu=${1#*=} ;;
    --zone=*) zone=${1#*=} ;;
    --project=*) project=${1#*=} ;;
    --repo_dir=*) repo_dir=${1#*=} ;;
    --python=*) remote_python=${1#*=} ;;
    --sync) sync=1 ;;
    --no-sync) sync=0 ;;
    --install) install=1 ;;
    --dry-run) dry_run=1 ;;
    --tpu | --zone | --project | --repo_dir | --python) die "write $1=VALUE" ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (arguments for main.py go after --)" ;;
  esac
  shift
done
main_args=("$@")

[[ -n $tpu ]] || die "--tpu=NAME is required"
[[ -n $zone ]] || die "--zone=ZONE is required"
[[ -n $repo_dir ]] || die "--repo_dir must not be empty"
[[ -n $remote_python ]] || die "--python must not be empty"
if ((!dry_run)); then
  command -v gcloud >/dev/null 2>&1 ||
    die "gcloud not found on PATH: install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install) or use --dry-run"
fi

# DIR for the workers' shell: a leading ~ stays unquoted so that it expands there.
case $repo_dir in
  "~") remote_dir="~" ;;
  "~/"*) remote_dir="~/$(printf '%q' "${repo_dir#\~/}")" ;;
  *) remote_dir=$(printf '%q' "$repo_dir") ;;
esac
quoted() { local line; line=$(printf '%q ' "$@"); echo "${line% }"; }  # for the workers' bash
# shellcheck source=launch/shell_words.sh
source "$(dirname "${BASH_SOURCE[0]}")/shell_words.sh"  # shown

gcloud_flags=("--zone=$zone")
[[ -z $project ]] || gcloud_flags+=("--project=$project")
gcloud_flags+=(--worker=all)
tarball="${TMPDIR:-/tmp}/retrieval_jax_${tpu}.tar.gz"
remote_tarball=/tmp/retrieval_jax_repo.tar.gz

run() {  # run CMD...: print it (dry run) or run it
  if ((dry_run)); then
    shown "$@"
  else
    echo "+ $(shown "$@")" >&2
    "$@"
  fi
}
on_workers() { run gcloud compute tpus tpu-vm ssh "$tpu" "${gcloud_flags[@]}" "--command=$1"; }

pack() {  # the tracked and untracked (not ignored) files that exist, into $tarball
  (cd "$repo" && git ls-files -z --cached --others --exclude-standard |
    while IFS= read -r -d '' f; do [[ -e $f ]] && printf '%s\0' "$f"; done |
    tar -czf "$tarball" --null -T -)
}

if ((sync)); then
  if ((dry_run)); then
    echo "# pack the files of $repo listed by 'git ls-files --cached --others --exclude-standard' into $tarball"
  else
    git -C "$repo" rev-parse --is-inside-work-tree >/dev/null 2>&1 ||
      die "$repo is not a git work tree: copy the code yourself and use --no-sync"
    trap 'rm -f "$tarball"' EXIT
    pack
  fi
  run gcloud compute tpus tpu-vm scp "$tarball" "$tpu:$remote_tarball" "${gcloud_flags[@]}"
  on_workers "mkdir -p $remote_dir && tar -xzf $remote_tarball -C $remote_dir && rm -f $remote_tarball"
fi
if ((install)); then
  on_workers "cd $remote_dir && $(quoted "$remote_python") -m pip install -e . \"jax[tpu]\""
fi
on_workers "cd $remote_dir && $(quoted "$remote_python" main.py "${main_args[@]}" --distributed=true)"
