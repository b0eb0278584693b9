#!/usr/bin/env bash
# Runs one wlsft_jax experiment on NVIDIA GPUs: one process drives all GPUs of its host, and
# hosts join through jax.distributed.
#
# One host, one or several GPUs (the mesh spans every local GPU):
#   launch/gpu.sh --config=configs/flyp_clip.py
#   WORKDIR=/data/runs/flyp TFDS_DATA_DIR=/data/datasets \
#     launch/gpu.sh --config=configs/flyp_clip.py:imagenet --config.init.path=/data/clip-vit-base-patch16
#
# Several hosts: run the same command on every host, with the same COORDINATOR_ADDRESS (host 0
# and a free port), NUM_PROCESSES (the number of hosts) and each host's PROCESS_ID (0..N-1);
# WORKDIR must be a folder every host sees (NFS / Lustre / gs://):
#   host0$ COORDINATOR_ADDRESS=host0:12345 NUM_PROCESSES=2 PROCESS_ID=0 WORKDIR=/shared/run1 launch/gpu.sh --config=...
#   host1$ COORDINATOR_ADDRESS=host0:12345 NUM_PROCESSES=2 PROCESS_ID=1 WORKDIR=/shared/run1 launch/gpu.sh --config=...
# Under SLURM (one task per host) set DISTRIBUTED=1 instead: JAX reads the rest from SLURM.
#   srun --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 env DISTRIBUTED=1 WORKDIR=/shared/run1 launch/gpu.sh --config=...
#
# Preemption / restarts: rerun the same command (on every host). Every stage resumes from its
# last checkpoint in WORKDIR; finished stages are read back, not retrained. Resuming mid-stage
# needs the same number of processes (each saved its own data position); a finished stage's
# checkpoint loads on any number.
#
# Variables (defaults in brackets):
#   WORKDIR               [./workdir/<config name>]  where checkpoints and the report go
#   TFDS_DATA_DIR         [unset]  datasets folder (see launch/prepare_data.md)
#   COORDINATOR_ADDRESS, NUM_PROCESSES, PROCESS_ID   multi-host (all three, or none)
#   DISTRIBUTED           [0]  1 = jax.distributed.initialize() with auto-detection (SLURM, ...)
#   CUDA_VISIBLE_DEVICES  [all]  restrict the GPUs this process uses
#   INSTALL               [0]  1 = pip install this checkout with CUDA jax first
#   JAX_VERSION           [0.10.2]  must match setup.py's pin
#   CONFIG                [configs/flyp_clip.py]  used when no --config= is given
#
# Not run in CI (no GPU there); `bash -n` checks the syntax.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"
JAX_VERSION="${JAX_VERSION:-0.10.2}"
CONFIG="${CONFIG:-configs/flyp_clip.py}"

if [[ "${INSTALL:-0}" == 1 ]]; then
  python -m pip install -e . "jax[cuda12]==$JAX_VERSION"
fi

args=("$@")
if [[ ! " ${args[*]-} " =~ " --config=" ]]; then
  args=(--config="$CONFIG" "${args[@]}")
fi
if [[ -n "${WORKDIR:-}" ]]; then
  args+=(--workdir="$WORKDIR")
fi

multi_host=("${COORDINATOR_ADDRESS:-}" "${NUM_PROCESSES:-}" "${PROCESS_ID:-}")
set_count=0
for value in "${multi_host[@]}"; do
  [[ -n "$value" ]] && set_count=$((set_count + 1))
done
if [[ "$set_count" == 3 ]]; then
  args+=(--config.distributed.initialize=True
         --config.distributed.coordinator_address="$COORDINATOR_ADDRESS"
         --config.distributed.num_processes="$NUM_PROCESSES"
         --config.distributed.process_id="$PROCESS_ID")
elif [[ "$set_count" != 0 ]]; then
  echo "Set all of COORDINATOR_ADDRESS, NUM_PROCESSES and PROCESS_ID for a multi-host run," \
       "or none of them (one host)." >&2
  exit 1
elif [[ "${DISTRIBUTED:-0}" == 1 ]]; then
  args+=(--config.distributed.initialize=True)
fi

# Let XLA take most of the GPU memory up front (JAX's default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}"
exec python -m wlsft_jax.main "${args[@]}"
