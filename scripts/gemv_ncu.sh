#!/usr/bin/env bash
# Nsight Compute on the sparse GEMV (and cuBLAS) at Llama-3-8B shapes, M = 1: one profile per
# case, the 3rd of 5 calls in the NVTX range "probe" (compiled before it), clocks left alone (--clock-control none,
# as the device notes ask), caches flushed before the kernel (ncu's default). Prints the
# SpeedOfLight, Occupancy, LaunchStats, WarpStateStats and MemoryWorkloadAnalysis sections.
#
#   bash scripts/gemv_ncu.sh gate_up:0.5 gate_up:0.5:chunk-front cublas:gate_up:0.5
#
# A case is SHAPE:SPARSITY[:PATTERN] (benchmarks/gemv_pattern_probe.py), or cublas:SHAPE:SP.
set -u
for case in "$@"; do
  extra=()
  if [[ $case == cublas:* ]]; then
    case=${case#cublas:}
    extra=(--cublas)
  fi
  echo "=== ncu $case ${extra[*]}"
  ncu --clock-control none --nvtx --nvtx-include "probe/" --launch-skip 2 --launch-count 1 \
    --section SpeedOfLight --section Occupancy --section LaunchStats \
    --section WarpStateStats --section MemoryWorkloadAnalysis \
    --metrics dram__bytes_read.sum,lts__t_sector_hit_rate.pct,gpu__time_duration.sum \
    python3 benchmarks/gemv_pattern_probe.py --ncu "$case" "${extra[@]}" 2>&1 \
    | grep -v "^==PROF==" 
done
