#!/usr/bin/env bash
# A short run on a lent GPU (docs/training.md): a CUDA smoke run, a probe of the training step,
# a fine-tune sized to the time left (by default the release recipe's batch-64 stage), and the
# kernel caches saved for the next run. Run on the device machine from the repo root with `.gpu/` carried:
#   .gpu/flowmapsr.xz   `cargo build --release -p flowmapsr --no-default-features --features
#                       wgpu,cuda` (the shipped weights read from weights/, not compiled in),
#                       stripped and packed by `xz -9e`: 10.4 MB (flowmapsr.gz is also read), so
#                       that tree, data, caches and binary stay under the 64 MiB a call carries
#                       (.cargo/config.toml builds it for the device's CUDA 13.0)
#   .gpu/data/train/{T91,SunHays80}   copies of ../shared/data/train
#   .gpu/cubecl-cache.tgz (optional)  the caches an earlier run brought back (see below)
# LIMIT must be the call's timeout_s: everything here ends 30 s before it, and whatever the run
# has by then is already under $OUT (the latest checkpoint's EMA weights are copied as they come).
# $OUT gets: log.txt, train_config.json, model.bin + config.json (final EMA weights, when the
# schedule finished), ema.bin (latest checkpoint's EMA weights), ema-STEP.bin for each step in
# SNAP, cubecl-cache.tgz.
# PROBE=0 trains the config's own schedule (a constant-lr adversarial run, say) until the time is
# up, with no probe; ARGS adds train arguments (e.g. ARGS="--holdout 10": those images stay out of
# training, and a config whose val_every exceeds its steps validates nowhere, here least of all).
# RESUME=DIR goes on from a packed run (`flowmapsr pack`, e.g. checkpoints/gl43) instead of INIT:
# no smoke run (weights/ need not travel) and no probe, the config's schedule until the time is
# up, and the latest checkpoint packed again into $OUT/pack/ (model.bin, ema.bin, disc.bin,
# optim_d.bin, state.json: the files of DIR's ckpt-STEP, the step in state.json; nothing else
# comes back, as a call returns 8 files at most).
#
# Measured on an H200: burn's CUDA kernels are autotuned and JIT-compiled per shape on first
# use, 6-22 s per kernel: the first 20 training steps took 195 s, the first Set5 validation 100 s,
# then 0.11-0.16 s/step at batch 32 x 128 px. Hence: autotune level "minimal", the PTX and autotune
# caches kept in target/ and brought back, no validation on the device (eval runs on the CPU here).
# Cold, at batch 64, the first 30 steps at batch 64 still took 374 s; with the caches restored
# the first steps cost nothing extra, then 0.24-0.28 s/step. Keep .gpu/cubecl-cache.tgz.
set -uo pipefail
T0=$(date +%s)
LIMIT=${LIMIT:?set LIMIT to the call\'s timeout_s}
HARD=$((T0 + LIMIT - 30))
# CONFIG: a training config, or a staged one with STAGE naming the stage to run.
CONFIG=${CONFIG:-configs/release.json} STAGE=${STAGE:-batch64-a}
OUT=${OUT:-/tmp/gpu_out}
# SET: extra "key=int" overrides of $CONFIG (e.g. SET="batch=64"); SMOKE=0 skips the inference
# smoke run (its JIT costs ~80 s of a cold device; the probe is a smoke run of training too).
SET=${SET:-} SMOKE=${SMOKE:-1} INIT=${INIT:-weights} ARGS=${ARGS:-} SNAP=${SNAP:-} RESUME=${RESUME:-}
# Overridable only to dry-run the script's plumbing on a CPU machine.
DEVICE=${DEVICE:-cuda} PROBE=${PROBE:-60}
if [ -n "$RESUME" ]; then
  [ -f "$RESUME/latest" ] && [ -d "$RESUME/base" ] || { echo "RESUME=$RESUME: not a packed run"; exit 1; }
  SMOKE=0 PROBE=0 SNAP=""
fi
mkdir -p "$OUT"
exec > >(tee "$OUT/log.txt") 2>&1
el() { echo $(($(date +%s) - T0)); }
left() { echo $((HARD - $(date +%s))); }
# cfg DST key=int...: $CONFIG with those top-level fields replaced, written to DST.
cfg() {
  python3 -c 'import json, sys
c = json.load(open(sys.argv[1]))
if "stages" in c:
    c = next(s for s in c["stages"] if s["name"] == sys.argv[3])
    c.pop("name"); c.pop("stop_after", None)
c.update((k, int(v)) for k, v in (a.split("=") for a in sys.argv[4:]))
json.dump(c, open(sys.argv[2], "w"), indent=2)' "$CONFIG" "$1" "$STAGE" "${@:2}"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
NVRTC=$(ls /usr/local/cuda/lib64/libnvrtc.so* /usr/local/cuda/targets/*/lib/libnvrtc.so* \
  /opt/torch/.venv/lib/python3*/site-packages/nvidia/*/lib/libnvrtc.so* 2>/dev/null | head -1)
[ -n "$NVRTC" ] || NVRTC=$(find / -xdev -name 'libnvrtc.so*' 2>/dev/null | grep -v stub | head -1)
echo "nvrtc: ${NVRTC:-none found}"
[ -n "$NVRTC" ] && export LD_LIBRARY_PATH="$(dirname "$NVRTC"):${LD_LIBRARY_PATH:-}"
BIN=/tmp/flowmapsr
if [ -f .gpu/flowmapsr.xz ]; then
  # Python's lzma: the device image need not have xz.
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    .gpu/flowmapsr.xz "$BIN"
else
  gzip -dc .gpu/flowmapsr.gz >"$BIN"
fi && chmod +x "$BIN" || exit 1
export RUST_LOG=info,cubecl_runtime=warn
# cubecl reads ./cubecl.toml; "target" puts its caches under ./target (the repo root has Cargo.toml).
trap 'rm -f cubecl.toml' EXIT
cat >cubecl.toml <<'EOF'
[autotune]
level = "minimal"
cache = "target"

[compilation]
cache = "target"
EOF
mkdir -p target
[ -f .gpu/cubecl-cache.tgz ] && tar -xzf .gpu/cubecl-cache.tgz -C target && echo "caches restored"
# Only cubecl's folders (autotune/, cuda/ PTX): a dry run in a checkout must not tar the build.
save_caches() {
  local d
  d=$(cd target && ls -d autotune cuda 2>/dev/null)
  [ -n "$d" ] && tar -czf "$OUT/cubecl-cache.tgz" -C target $d && echo "caches saved: $d"
}

if [ "$SMOKE" = 1 ]; then
  echo "== [$(el) s] smoke: bench, one 128 px tile x4, NFE 1, $DEVICE"
  if ! timeout 150 "$BIN" bench --device $DEVICE --tile 128 --reps 10; then
    echo "$DEVICE smoke run failed"
    save_caches
    exit 1
  fi
fi

DATA=".gpu/data/train/T91 .gpu/data/train/SunHays80"
if [ "$PROBE" -gt 0 ]; then
  echo "== [$(el) s] probe: $PROBE real steps (data loading included)"
  cfg /tmp/probe.json $SET steps=$PROBE log_every=$((PROBE / 2)) ckpt_every=1000000
  timeout $(($(left) - 60)) "$BIN" train --config /tmp/probe.json --init "$INIT" --data $DATA \
    --out /tmp/probe --device $DEVICE $ARGS 2>&1 | tee /tmp/probe.log
  save_caches
  SPS=$(grep -o '[0-9.]* s/step' /tmp/probe.log | tail -1 | cut -d' ' -f1)
  [ -n "$SPS" ] || { echo "no s/step in the probe"; exit 1; }
  # 45 s for the start, the final save and the copies; 15% for checkpoints and slower steps.
  BUDGET=$(($(left) - 45))
  STEPS=$(python3 -c "print(max(100, int($BUDGET / ($SPS * 1.15)) // 100 * 100))")
  echo "== [$(el) s] ${SPS} s/step, ${BUDGET} s to train: ${STEPS} steps"
  cfg "$OUT/train_config.json" $SET steps=$STEPS ckpt_every=$((STEPS / 10 > 100 ? STEPS / 10 : 100))
else
  echo "== [$(el) s] no probe: the config's schedule until $(left) s from now"
  cfg "$OUT/train_config.json" $SET
fi
if [ -n "$RESUME" ]; then
  rm -rf /tmp/run && cp -r "$RESUME" /tmp/run || exit 1
  START=(--resume)
else
  START=(--init "$INIT")
fi
# The latest checkpoint's EMA weights, copied as checkpoints appear (a kill loses at most one);
# a resumed run brings back its pack instead.
WATCH=
if [ -z "$RESUME" ]; then
  (while sleep 5; do
    d=/tmp/run/$(cat /tmp/run/latest 2>/dev/null) && cp "$d/ema.bin" "$OUT/.ema.tmp" 2>/dev/null &&
      mv "$OUT/.ema.tmp" "$OUT/ema.bin" && cp "$d/state.json" "$OUT/state.json" 2>/dev/null
    # The first checkpoint at or past each step in SNAP is kept as ema-STEP.bin (its own step).
    n=${d##*/ckpt-}
    for s in $SNAP; do
      [ -n "$n" ] && [ "$n" -ge "$s" ] 2>/dev/null && [ ! -f "$OUT/.snap-$s" ] &&
        cp "$d/ema.bin" "$OUT/.snap.tmp" 2>/dev/null && mv "$OUT/.snap.tmp" "$OUT/ema-$n.bin" &&
        touch "$OUT/.snap-$s"
    done
  done) &
  WATCH=$!
fi
# A resumed run stops early enough to pack (a few seconds).
STOP=10
[ -n "$RESUME" ] && STOP=30
timeout $(($(left) - STOP)) "$BIN" train --config "$OUT/train_config.json" \
  "${START[@]}" --data $DATA --out /tmp/run --device $DEVICE $ARGS
echo "train exit $?"
[ -n "$WATCH" ] && kill $WATCH
if [ -n "$RESUME" ]; then
  rm -rf /tmp/pack
  "$BIN" pack --config "$OUT/train_config.json" --run /tmp/run -o /tmp/pack &&
    mkdir -p "$OUT/pack" && cp /tmp/pack/"$(cat /tmp/pack/latest)"/* "$OUT/pack/" &&
    echo "packed: $(cat /tmp/pack/latest)"
else
  cp /tmp/run/final/model.bin /tmp/run/final/config.json "$OUT/" 2>/dev/null
  rm -f "$OUT"/.snap-*
  d=/tmp/run/$(cat /tmp/run/latest 2>/dev/null) && cp "$d/ema.bin" "$d/state.json" "$OUT/" 2>/dev/null
fi
save_caches
ls -la "$OUT"
echo "== [$(el) s] done"
