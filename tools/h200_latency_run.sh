#!/usr/bin/env bash
# One device call for issue #15 targets 4 and 5 (network latency, cold start) on the H200.
# Run from the folder holding streamer/, engines/, tools/ with PYTHONPATH set and OUT exported;
# MEDIA = folder of the test videos, SAMPLES = the repository's samples/. Each part has its own
# time limit so the results of the parts before it always come back.
# The committed run (docs/benchmarks/h200-latency/) was made when the default depthwise route was
# still cuDNN, so its cases without STREAMER_TORCH_DEPTHWISE ran cuDNN; here both are explicit.
set -u
MEDIA=${MEDIA:-../../.media/media}
SAMPLES=${SAMPLES:-../../samples}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
log() { echo "[$(date -u +%H:%M:%S)] $*"; }
{
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version(), "triton", triton.__version__)'
  nproc
} > "$OUT/environment.txt" 2>&1
FRAMES="--frames $MEDIA/bikes.mp4:12 --frames $MEDIA/carphone_pristine.mp4:8 --frames $MEDIA/bigbuckbunny.mp4:12"
log "perf_network alexnet"
timeout 150 python3 tools/perf_network.py --model alexnet --weights random --runs 300 --warmup 50 \
  --images "$SAMPLES/images/*.jpg" $FRAMES \
  --variants ${NET_VARIANTS:-graph-fp32,graph-fp16,fused-fp16,fused-fp16:fc=cublas,fused-fp16:fc=cublaslt,fused-fp16:act=cudnn,fused-fp16:conv1=direct,fused-fp16:cudnn_benchmark=0,fused-fp16:pool=torch+act=torch+fc=cublas} \
  --profile ${NET_PROFILE:-graph-fp16,fused-fp16,fused-fp16:fc=cublas,fused-fp16:act=cudnn} \
  --backend-timing cuda_graphs,fused --source "$MEDIA/bikes.mp4" --source-frames 100 --source-repeats 5 \
  --out "$OUT/net_alexnet.json" 2>&1 | grep -v "^    " 
log "perf_network efficientnet_lite0 (accuracy, real weights)"
[[ -n ${SKIP_LITE0:-} ]] || timeout 60 python3 tools/perf_network.py --model efficientnet_lite0 --weights imagenet --runs 100 --warmup 20 \
  --images "$SAMPLES/images/*.jpg" $FRAMES --variants graph-fp16,eager-fp16 --out "$OUT/net_lite0.json" 2>&1 | grep -v "^    "
log "first use"
for spec in ${FIRST_USE:-efficientnet_lite0/fp16/b8 efficientnet_lite0/fp16/b8@native alexnet/fp16/b1}; do
  case_spec=${spec%@*}; dw=cudnn; [[ $spec == *@native ]] && dw=native
  STREAMER_TORCH_DEPTHWISE=$dw timeout 40 python3 tools/cold_start.py --first-use "$case_spec" >> "$OUT/first_use.jsonl" 2>> "$OUT/first_use.err"
done
tail -c 600 "$OUT/first_use.jsonl"
log "cold start"
L=efficientnet_lite0; A=alexnet; N=STREAMER_TORCH_DEPTHWISE=native; C=STREAMER_TORCH_DEPTHWISE=cudnn
timeout ${COLD_LIMIT:-150} python3 tools/cold_start.py --source "$MEDIA/bikes.mp4" --max-frames 8 --timeout 45 --budget ${COLD_BUDGET:-110} \
  --case $L/torch/fp16/cuda_graphs/b8/$C --case $L/torch/fp16/cuda_graphs/b8/$N \
  --case $L/torch/fp16/eager/$C --case $L/torch/fp16/eager/$N \
  --case $A/torch/fp16/fused --case $A/torch/fp16/cuda_graphs --case $A/torch/fp16/eager \
  --case $L/torch/fp32/eager --case $L/torch/fp32/cuda_graphs --case $A/torch/fp32/eager --case $A/torch/fp32/cuda_graphs \
  --case $L/onnxruntime/fp32/eager --case $A/onnxruntime/fp32/eager --case $L/onnxruntime/fp32/eager \
  --case $A/tensorrt/fp16/eager --case $A/torch2trt/fp16/eager --case $L/tensorrt/fp16/eager --case $L/torch2trt/fp16/eager \
  --case $L/torch/fp16/cuda_graphs/b8/$C --case $L/torch/fp16/cuda_graphs/b8/$N --case $A/torch/fp16/fused \
  --out "$OUT/cold.json" 2>&1 | grep -v '^{' | tail -30
log "done"
