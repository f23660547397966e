#!/bin/bash
# The device call behind this folder (run from the repository root of the device's copy, with the branch's
# code under .dev/encode; $OUT collects the results). DEV=cpu PREC=fp32 runs the same steps on a CPU-only box.
set -u
ROOT=$PWD
DEV=${DEV:-cuda}
PREC=${PREC:-fp16}
M=$ROOT/.media/media
L=/tmp/loops
mkdir -p "$L" "$OUT"
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
VIDEOS=${VIDEOS:-"$M/carphone_pristine.mp4:8 $M/bikes.mp4:4 $M/bigbuckbunny.mp4:4 $M/bigbuckbunny_1080p.mp4:2"}
MODELS=${MODELS:-alexnet,efficientnet_lite0}
date -u +%FT%TZ; nproc; nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null
# 0. The videos looped by stream copy (the same real frames, repeated) for runs long enough to time.
cd "$ROOT/.dev/encode" && PYTHONPATH=$ROOT/.dev/encode:/tmp/site $PY - "$M" "$L" <<'PYEOF'
import sys
from pathlib import Path
from streamer.bench.files import loop_video
for name, n in [("carphone_pristine", 8), ("bikes", 4), ("bigbuckbunny", 4), ("bigbuckbunny_1080p", 2)]:
    print(name, n, "loops:", loop_video(Path(sys.argv[1]) / f"{name}.mp4", Path(sys.argv[2]) / f"{name}.mp4", n), "frames")
PYEOF
# 1. Target 1: every video x {alexnet, efficientnet_lite0} x fp16 x batch {1,8}, torch + CUDA graphs, ceiling in the same run.
cd "$ROOT/.dev/encode" && PYTHONPATH=$ROOT/.dev/encode:/tmp/site $PY -m streamer.bench.files \
  $VIDEOS \
  --model $MODELS --backend torch --device $DEV --precision $PREC --batch 1,8 ${GRAPHS---cuda-graphs} \
  --repeats 2 --one-thread-passes 1 --one-thread-frames 132 --json "$OUT/gpu.json" 2>"$OUT/gpu.err" | tee "$OUT/gpu.log"
# 2. Target 2: the same host pinned to 2 cores, CUDA hidden: onnxruntime efficientnet_lite0, pipeline vs network alone.
cd "$ROOT/.dev/encode" && CUDA_VISIBLE_DEVICES= PYTHONPATH=$ROOT/.dev/encode:/tmp/site taskset -c 0,1 $PY -m streamer.bench.files \
  "$M/bikes.mp4" "$M/carphone_pristine.mp4:2" --model efficientnet_lite0 --backend onnxruntime --device cpu --precision fp32 \
  --batch 1,8 --threads 2 --network --repeats 1 --one-thread-passes 1 --one-thread-frames 132 --json "$OUT/cpu2.json" 2>"$OUT/cpu2.err" | tee "$OUT/cpu2.log"
[ -n "${SKIP34:-}" ] && exit 0
# 3. Encode-only against x264's frame threads (the sink's default is the CPUs allowed, at most 16), first 264 frames.
cd "$ROOT/.dev/encode" && PYTHONPATH=$ROOT/.dev/encode:/tmp/site $PY - "$L" "$OUT/threads.json" <<'PYEOF' 2>"$OUT/threads.err" | tee "$OUT/threads.log"
import json, sys, tempfile, time
from pathlib import Path
import cv2
from streamer.sinks import VideoFileSink, VideoOptions
out = {}
for name in ("bigbuckbunny",):
    cap = cv2.VideoCapture(str(Path(sys.argv[1]) / f"{name}.mp4"))
    frames = []
    while len(frames) < 264:
        ok, im = cap.read()
        if not ok:
            break
        frames.append(im)
    h, w = frames[0].shape[:2]
    for threads in (8, 16, 24, 32):
        fps = []
        for r in range(1):
            path = Path(tempfile.mkdtemp()) / "t.mp4"
            t0 = time.perf_counter()
            sink = VideoFileSink(path, overwrite=True, options=VideoOptions(threads=threads)).open((w, h), 25.0)
            for im in frames:
                sink.write(im, "")
            sink.finalize()
            fps.append(len(frames) / (time.perf_counter() - t0))
        out[f"{name} threads={threads}"] = fps
        print(name, "threads", threads, "encode FPS", [round(f, 1) for f in fps], flush=True)
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1))
PYEOF
# 4. The old ceiling: main's code (swscale conversion per frame) on the same looped files, first 132 frames.
cd "$ROOT" && PYTHONPATH=$ROOT:/tmp/site $PY - "$L" "$OUT/old-ceiling.json" <<'PYEOF' 2>"$OUT/old.err" | tee "$OUT/old.log"
import json, sys, tempfile
from pathlib import Path
import streamer
from streamer.bench.codec import decode_encode
print("old code from", streamer.__file__)
out = {}
for name in ("carphone_pristine", "bikes", "bigbuckbunny", "bigbuckbunny_1080p"):
    r = decode_encode(Path(sys.argv[1]) / f"{name}.mp4", 5, Path(tempfile.mkdtemp()), max_frames=132)
    out[name] = r
    print(name, "old ceiling", round(r["bound_fps"], 1), r["bound_by"], "decode", round(r["decode_fps"]["p50"], 1), "encode", round(r["encode_fps"]["p50"], 1), flush=True)
    Path(sys.argv[2]).write_text(json.dumps(out, indent=1, default=str))
PYEOF
date -u +%FT%TZ
