#!/usr/bin/env bash
# Runs one wlsft_jax experiment on a Cloud TPU VM (a single host such as v4-8 / v5litepod-8, or a
# pod slice such as v4-32): creates the TPU (or reuses it), installs this checkout on every
# worker, then starts the same `python -m wlsft_jax.main` on all workers at once. JAX finds the
# other workers itself (`jax.distributed.initialize()` with no arguments on Cloud TPU).
#
#   export TPU_NAME=wlsft-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32
#   export WORKDIR=gs://MY_BUCKET/wlsft/flyp_imagenet          # shared by all workers
#   export TFDS_DATA_DIR=gs://MY_BUCKET/datasets               # see launch/prepare_data.md
#   launch/tpu_pod.sh --config=configs/flyp_clip.py:imagenet --config.init.path=gs://MY_BUCKET/clip-vit-base-patch16
#
# With no arguments it runs the embedded default (configs/flyp_clip.py), which needs no data.
# To evaluate finished runs' checkpoints over alphas and datasets instead of training, use
# launch/sweep.py (README: "Sweeping checkpoints"); it reads and writes gs:// paths as well.
#
# Preemption / restarts: rerun the same command. A preempted TPU (spot or maintenance) is
# deleted and created again, the code is reinstalled, and every stage resumes from its last
# checkpoint in $WORKDIR (finished stages are read back, not retrained). On a maintenance
# event orbax also saves a checkpoint just before the VM stops.
#
# Variables (defaults in brackets):
#   TPU_NAME, ZONE, WORKDIR      required; WORKDIR must be gs:// when the slice has >1 worker
#   ACCELERATOR_TYPE             [v4-8]  e.g. v4-32, v5litepod-8, v5litepod-16
#   RUNTIME_VERSION              [tpu-ubuntu2204-base]  (v5e: v2-alpha-tpuv5-lite)
#   PROJECT                      [gcloud's default project]
#   SPOT                         [0]  1 = spot (preemptible) capacity
#   TFDS_DATA_DIR                [unset]  datasets folder, local to the VMs or gs://
#   JAX_VERSION                  [0.10.2]  must match setup.py's pin
#   CONFIG                       [configs/flyp_clip.py]  used when no --config= is given
#
# Not run in CI (it needs a Google Cloud project with TPU quota); `bash -n` checks the syntax.
set -euo pipefail

: "${TPU_NAME:?set TPU_NAME, e.g. wlsft-v4-8}"
: "${ZONE:?set ZONE, e.g. us-central2-b (v4) or us-west4-a (v5e)}"
: "${WORKDIR:?set WORKDIR to a gs:// folder, e.g. gs://MY_BUCKET/wlsft/run1}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"
SPOT="${SPOT:-0}"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
CONFIG="${CONFIG:-configs/flyp_clip.py}"
REMOTE_DIR="wlsft_jax"  # in each worker's home directory

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
gcloud_tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$ZONE")
if [[ -n "${PROJECT:-}" ]]; then
  where+=(--project="$PROJECT")
fi

# --- Create, reuse or recreate the TPU ------------------------------------------------------
state="$("${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" --format='value(state)' \
  2>/dev/null || true)"
case "$state" in
  READY)
    echo "Reusing TPU $TPU_NAME ($ACCELERATOR_TYPE)." ;;
  PREEMPTED|TERMINATED|STOPPED)
    echo "TPU $TPU_NAME is $state: deleting it and creating it again."
    "${gcloud_tpu[@]}" delete "$TPU_NAME" "${where[@]}" --quiet
    state="" ;;
  "") ;;
  *)
    echo "TPU $TPU_NAME is in state $state; wait until it is READY (or delete it) and rerun." >&2
    exit 1 ;;
esac
if [[ -z "$state" ]]; then
  create_flags=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  if [[ "$SPOT" == 1 ]]; then
    create_flags+=(--spot)
  fi
  "${gcloud_tpu[@]}" create "$TPU_NAME" "${where[@]}" "${create_flags[@]}"
fi

workers="$("${gcloud_tpu[@]}" describe "$TPU_NAME" "${where[@]}" \
  --format='value(networkEndpoints.len())')"
if [[ "${workers:-1}" -gt 1 && "$WORKDIR" != gs://* ]]; then
  echo "WORKDIR=$WORKDIR: a $workers-worker slice needs a folder all workers share (gs://...)." >&2
  exit 1
fi

# --- Install this checkout on every worker ----------------------------------------------------
archive="$(mktemp -t wlsft_jax.XXXXXX.tar.gz)"
trap 'rm -f "$archive"' EXIT
tar -C "$repo_root" --exclude=./.git --exclude=./workdir --exclude='*.pyc' -czf "$archive" .
"${gcloud_tpu[@]}" scp "$archive" "$TPU_NAME:~/wlsft_jax.tar.gz" "${where[@]}" --worker=all
"${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="
  set -euo pipefail
  rm -rf ~/$REMOTE_DIR && mkdir -p ~/$REMOTE_DIR && tar -C ~/$REMOTE_DIR -xzf ~/wlsft_jax.tar.gz
  python3 -m pip install --quiet --upgrade pip
  python3 -m pip install --quiet -e ~/$REMOTE_DIR 'jax[tpu]==$JAX_VERSION'
"

# --- Run on all workers -------------------------------------------------------------------------
args=("$@")
if [[ ! " ${args[*]-} " =~ " --config=" ]]; then
  args=(--config="$CONFIG" "${args[@]}")
fi
quoted_args="$(printf '%q ' "${args[@]}")"
tfds_env=""
if [[ -n "${TFDS_DATA_DIR:-}" ]]; then
  tfds_env="TFDS_DATA_DIR=$(printf '%q' "$TFDS_DATA_DIR")"
fi
"${gcloud_tpu[@]}" ssh "$TPU_NAME" "${where[@]}" --worker=all --command="
  set -euo pipefail
  cd ~/$REMOTE_DIR
  $tfds_env python3 -m wlsft_jax.main $quoted_args \
    --workdir=$(printf '%q' "$WORKDIR") --config.distributed.initialize=True \
    2>&1 | tee -a ~/wlsft_jax_run.log
"
echo "Done. Report: $WORKDIR/report/ ; logs: ~/wlsft_jax_run.log on each worker."
