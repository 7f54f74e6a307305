#!/usr/bin/env bash
# Nsight Systems capture of a few training steps, and its summary as markdown tables.
#
#   profiles/nsys.sh OUT_DIR [python -m tritongpt.profiles.capture options]
#   profiles/nsys.sh prof/triton --backend triton --batch 8 --warmup 10 --steps 5
#
# The steps run under `nsys profile --capture-range=cudaProfilerApi`: profiles.capture calls
# cudaProfilerStart after the warm-up steps (torch.compile, Triton autotuning) and
# cudaProfilerStop after the captured ones, so only those are recorded (CUDA + NVTX traces).
# Writes OUT_DIR/capture.nsys-rep (open it in the Nsight Systems GUI), the `nsys stats` CSVs,
# and OUT_DIR/summary.md: time per kernel and per NVTX range, per step.
set -euo pipefail

if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: profiles/nsys.sh OUT_DIR [python -m tritongpt.profiles.capture options]" >&2
  exit 2
fi
if ! command -v nsys >/dev/null 2>&1; then
  echo "profiles/nsys.sh: Nsight Systems (nsys) is not installed or not on PATH." >&2
  echo "Install it from NVIDIA's Nsight Systems page, or use the torch.profiler fallback:" >&2
  echo "  python -m tritongpt.profiles.torch_profile --out OUT_DIR [same options]" >&2
  exit 127
fi

out=$1
shift
python=${PYTHON:-python}
# the number of captured steps, for per-step figures (profiles.capture's default: 5; 2 with --smoke)
steps=5
args=("$@")
for a in "$@"; do [ "$a" = --smoke ] && steps=2; done
for ((i = 0; i < ${#args[@]}; i++)); do
  case ${args[i]} in
    --steps=*) steps=${args[i]#--steps=} ;;
    --steps) steps=${args[i + 1]:-5} ;;
  esac
done

mkdir -p "$out"
nsys profile \
  --trace=cuda,nvtx \
  --capture-range=cudaProfilerApi --capture-range-end=stop \
  --sample=none --cpuctxsw=none \
  --force-overwrite=true \
  --output "$out/capture" \
  "$python" -m tritongpt.profiles.capture "$@"

report="$out/capture.nsys-rep"
if [ ! -f "$report" ]; then
  echo "profiles/nsys.sh: nsys wrote no $report (did the steps reach cudaProfilerStart?)" >&2
  exit 1
fi

nsys stats --force-export=true --report cuda_gpu_kern_sum,nvtx_sum --format csv \
  --output "$out/stats" "$report"
gpu_ranges=()
# the GPU projection of NVTX ranges exists in newer nsys only; without it the host times remain
if nsys stats --force-export=false --report nvtx_gpu_proj_sum --format csv --output "$out/stats" "$report" \
    && [ -f "$out/stats_nvtx_gpu_proj_sum.csv" ]; then
  gpu_ranges=(--gpu-ranges "$out/stats_nvtx_gpu_proj_sum.csv")
else
  echo "profiles/nsys.sh: this nsys has no nvtx_gpu_proj_sum report; NVTX ranges show host time only" >&2
fi

"$python" -m tritongpt.profiles.nsys_table --steps "$steps" \
  --kernels "$out/stats_cuda_gpu_kern_sum.csv" \
  --ranges "$out/stats_nvtx_sum.csv" ${gpu_ranges[@]+"${gpu_ranges[@]}"} > "$out/summary.md"
cat "$out/summary.md"
echo "written: $report, $out/summary.md"
