#!/usr/bin/env bash
# Scores candidate realistic weights (e.g. a whole-network adversarial run's EMA) against the
# faithful preset, the shipped network's sharpest dial setting (w 3, LoRA 3) and the GAN peer, x4: on the 10 training images that `train --holdout 10` keeps
# out (the set to choose by), and for the report only on Set5 and Set14. Each row is
# PSNR-Y / GMSD / HF ratio / pattern by the reference scorer and scripts/pattern_ratio.py.
# Usage: scripts/candidate.sh WEIGHTS_DIR [GUIDANCE... (default 1 2 3)] >table.md
#        SETS=holdout scripts/candidate.sh ...   (the held-out column only: to choose among
#        snapshots without looking at the test sets; a third of the time)
#        REFS= scripts/candidate.sh ...   (the candidate's rows only; REFS names the reference
#        rows to keep, default "faithful dial gans")
#        CAND_ARGS="--grain-cut true" scripts/candidate.sh ...   (more `upscale` flags for the
#        candidate's rows only)
# Needs: python3 with numpy, pillow, scipy, opencv-python-headless; node (for the peer).
set -euo pipefail
cd "$(dirname "$0")/.."
CAND=${1:?usage: scripts/candidate.sh WEIGHTS_DIR [GUIDANCE...]}
shift
WS=${*:-1 2 3}
SHARED=${SHARED:-../shared}
TOOLS=$SHARED/tools
BIN=${BIN:-target/release/flowmapsr}
[ -x "$BIN" ] || cargo build --release --bin flowmapsr
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
# The held-out images exactly as `train --holdout 10` picks them (scripts/holdout.py).
python3 scripts/holdout.py "$SHARED/data/train" "$W/hr/holdout"
ln -s "$(realpath "$SHARED/data/eval/Set5")" "$W/hr/Set5"
ln -s "$(realpath "$SHARED/data/eval/Set14")" "$W/hr/Set14"
SETS=${SETS:-holdout Set5 Set14}
up() { # set name args...
  local set=$1 name=$2
  shift 2
  "$BIN" upscale "$W/$set/lr" -o "$W/$set/$name" --scale 4 "$@" 2>/dev/null
  for f in "$W/$set/$name"/*_x4.png; do mv "$f" "${f%_x4.png}.png"; done
}
REFS=${REFS-faithful dial gans}
has() { case " $REFS " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }
ROWS=""
for r in faithful dial; do has $r && ROWS="$ROWS $r"; done
for set in $SETS; do
  python3 "$TOOLS/sr_score.py" make-lr "$W/hr/$set" "$W/$set/lr" --scale 4 >/dev/null
  if has faithful; then up "$set" faithful --preset faithful; fi
  if has dial; then up "$set" dial --preset faithful --guidance 3 --lora 3; fi
  # A row's folder has no dot (upscale takes "cand_w1.5" for a file name): 1.5 is cand_w1p5.
  # shellcheck disable=SC2086 # CAND_ARGS is a list of flags
  for g in $WS; do up "$set" "cand_w${g/./p}" --weights "$CAND" --guidance "$g" ${CAND_ARGS:-}; done
  if has gans; then
    python3 "$TOOLS/upscalerjs_peer/peer.py" gans "$W/$set/lr" "$W/$set/gans" >/dev/null 2>&1
  fi
done
for g in $WS; do ROWS="$ROWS cand_w${g/./p}"; done
if has gans; then ROWS="$ROWS gans"; fi
python3 - "$W" "$TOOLS" "$CAND" "$SETS" "$ROWS" "${CAND_ARGS:-}" <<'PY'
import subprocess, sys
w, tools, cand, sets, rows, cand_args = sys.argv[1:]
sys.path.insert(0, "scripts")
import pattern_ratio

def score(set_, m):
    out = subprocess.run([sys.executable, f"{tools}/sr_score.py", "score", f"{w}/{set_}/{m}",
                          f"{w}/hr/{set_}", "--scale", "4"], capture_output=True, text=True, check=True)
    mean = [l for l in out.stdout.splitlines() if l.startswith("MEAN")][0].split()
    v = dict(zip(mean[1::2], mean[2::2]))
    pat = pattern_ratio.pattern_axes(f"{w}/{set_}/{m}", f"{w}/hr/{set_}")[0]
    return f"{float(v['PSNR']):.3f} / {float(v['GMSD']):.4f} / {float(v['HF']):.3f} / {pat:.2f}"

label = {"faithful": "`--preset faithful`",
         "dial": "`--guidance 3 --lora 3` (the shipped network's sharpest dial setting)",
         "gans": "GAN peer (idealo RRDN `gans`)"}
sets = sets.split()
print("| x4: PSNR-Y / GMSD / HF ratio / pattern | " + " | ".join(
    "held-out (choose by)" if s == "holdout" else f"{s} (report)" for s in sets) + " |")
print("|---|" + "---|" * len(sets))
for m in rows.split():
    name = label.get(m) or (f"`--weights {cand} --guidance {m[6:].replace('p', '.')}"
                            + (f" {cand_args}" if cand_args else "") + "`")
    print(f"| {name} | " + " | ".join(score(s, m) for s in sets) + " |")
PY
