#!/usr/bin/env bash
# The fidelity <-> realism trade-off of the guidance- and LoRA-trained weights (docs/guidance.md):
# w in {1, 1.5, 2, 3} x LoRA scale in {0, 1, 2, 3} x NFE in {1, 2}, x4 on Set5 and Set14
# (`flowmapsr eval --json`: PSNR-Y, SSIM-Y, GMSD, HF ratio), bicubic for reference, and
# side-by-side crops (HR | bicubic | fidelity w=1 LoRA 0 | realism: the sharpest setting within
# 1.5 dB of fidelity | grain: the stochastic mode at a source-noise temperature) under
# docs/img/tradeoff/. Also the stochastic mode at temperatures {0.25, 0.5, 0.75} x w {1, 3} (LoRA 0,
# NFE 1, seed 0), and the fidelity setting without the LR projection (`--projection off`; every
# other row has it, as `flowmapsr` does by default), and each setting's pattern ratio
# (scripts/pattern_ratio.py: > 1 = more energy at some scale of 2 to 5 px than the HR photos, such
# as alternating rows, per-pixel noise or a 3-5 px hatching, which the HF ratio counts as detail). Writes
# docs/tradeoff.md. Settings the weights do not support (w above their w_max, LoRA without an
# adapter) are listed as such, not scored.
# Usage: WEIGHTS=runs/pipeline/adversarial/final scripts/tradeoff.sh
#        (env: SHARED=../shared, SETS="Set5 Set14", OUT=runs/tradeoff; REPORT_ONLY=1 rewrites the
#        report from $OUT's rows and saved images without scoring again)
set -euo pipefail
cd "$(dirname "$0")/.."
S=${SHARED:-../shared}
W=${WEIGHTS:?set WEIGHTS to a folder with config.json + model.bin (+ lora.json + lora.bin)}
BIN=${BIN:-target/release/flowmapsr}
# The crops at the end need Pillow: fail now, not after the scoring.
python3 -c "import PIL, numpy, scipy, cv2" 2>/dev/null || { echo "tradeoff.sh: python3 needs Pillow and numpy (crops, pattern ratio), scipy and OpenCV (the scorer's GMSD and HF ratio in the texture bound): pip install pillow numpy scipy opencv-python-headless" >&2; exit 1; }
[ -x "$BIN" ] || cargo build --release --bin flowmapsr
OUT=${OUT:-runs/tradeoff}
mkdir -p "$OUT" docs/img/tradeoff
rows="$OUT/rows.jsonl"
SETS=${SETS:-Set5 Set14}
if [ -n "${REPORT_ONLY:-}" ]; then
  [ -s "$rows" ] || { echo "tradeoff.sh: REPORT_ONLY needs $rows from an earlier run" >&2; exit 1; }
  SETS=""
else
  : >"$rows"
fi
# score TAG FIELDS EVAL_ARGS...: one `flowmapsr eval` row of set $set tagged with FIELDS (JSON
# members naming the setting), or an "unsupported" row with the reason when the weights refuse it.
score() {
  local tag=$1 fields=$2 out why
  shift 2
  if out=$("$BIN" eval --data "$S/data/eval/$set" --scale 4 --weights "$W" --json --save "$OUT/$tag" \
    "$@" 2>"$OUT/$tag.err"); then
    echo "$out" | python3 -c 'import sys,json;d=json.load(sys.stdin);d.update(json.loads("{"+sys.argv[1]+"}"),set=sys.argv[2],method="model");print(json.dumps(d))' \
      "$fields" "$set" >>"$rows"
  else
    why=$(grep -o 'guidance w[^"]*\|LoRA scale[^"]*\|no LoRA adapter[^"]*' "$OUT/$tag.err" | head -1)
    echo "{\"set\":\"$set\",$fields,\"method\":\"model\",\"unsupported\":\"${why:-failed, see $OUT/$tag.err}\"}" >>"$rows"
  fi
}
for set in $SETS; do
  "$BIN" eval --data "$S/data/eval/$set" --scale 4 --method bicubic --json --save "$OUT/$set-bicubic" \
    | python3 -c "import sys,json;d=json.load(sys.stdin);d.update(set='$set',w='-',lora='-',nfe='-',method='bicubic');print(json.dumps(d))" >>"$rows"
  for w in 1 1.5 2 3; do
    for l in 0 1 2 3; do
      for n in 1 2; do
        score "$set-w$w-l$l-n$n" "\"w\":$w,\"lora\":$l,\"nfe\":$n" --steps "$n" --guidance "$w" --lora "$l"
      done
    done
  done
  score "$set-raw" '"w":1,"lora":0,"nfe":1,"projection":false' --projection off
  for w in 1 3; do
    for t in 0.25 0.5 0.75; do
      score "$set-w$w-t$t" "\"w\":$w,\"lora\":0,\"nfe\":1,\"temperature\":$t" \
        --guidance "$w" --mode stochastic --temperature "$t" --seed 0
    done
  done
done
python3 - "$rows" "$OUT" "$S" "$W" <<'EOF'
import json, sys, os
from PIL import Image
sys.path.insert(0, "scripts")
import pattern_ratio  # the "pattern" column (scripts/pattern_ratio.py)
rows = [json.loads(l) for l in open(sys.argv[1])]
out, shared, weights = sys.argv[2], sys.argv[3], sys.argv[4]
def tag(r):
    s = r["set"]
    if r["method"] == "bicubic": return f"{s}-bicubic"
    if r.get("projection") is False: return f"{s}-raw"
    if r.get("temperature") is not None: return f"{s}-w{r['w']:g}-t{r['temperature']:g}"
    return f"{s}-w{r['w']:g}-l{r['lora']:g}-n{r['nfe']:g}"
def pattern(r, f):
    return f(os.path.join(out, tag(r)), os.path.join(shared, "data", "eval", r["set"]))
for r in rows:
    if "unsupported" not in r:
        r["pattern"], r["local"] = pattern(r, pattern_ratio.pattern), pattern(r, pattern_ratio.local_pattern)
fmt_p = lambda r: "-" if r.get("pattern") is None else f"{r['pattern']:.2f}"
fmt_l = lambda r: "-" if r.get("local") is None else f"{r['local']:.2f}"
md = ["# Fidelity <-> realism trade-off", "",
      f"`WEIGHTS={weights} scripts/tradeoff.sh` (x4, `flowmapsr eval`, standard protocol; "
      "HF ratio 1 = as sharp as the HR photos). Every row has the LR projection (the result made "
      "consistent with the input, `flowmapsr`'s default, no network call) except the one marked "
      "\"no projection\". Rows the weights cannot run are marked. Pattern: the outputs' energy "
      "at fine scales over the HR photos' (five bands of period from 2 to 5 px, along rows and "
      "along columns, the largest of the ten ratios), averaged over the set; above 1 the output has "
      "more energy at some fine scale than the photos (a 2-px pattern such as alternating rows, "
      "per-pixel noise, a 3-5 px hatching), which the HF ratio counts as detail. Local: the same "
      "in 32-px windows against the photo's own windows (90th percentile over windows, "
      "scripts/pattern_ratio.py), which sees texture drawn on one region (skin, plumage) where the "
      "photo has less; a diagnostic, not part of the gate.", ""]
sets = list(dict.fromkeys(r["set"] for r in rows))
for s in sets:
    md += [f"## {s}", "", "| w | LoRA | NFE | PSNR-Y | SSIM-Y | GMSD | HF ratio | pattern | local |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["set"] != s or r.get("temperature") is not None: continue
        if "unsupported" in r:
            md.append(f"| {r['w']} | {r['lora']} | {r['nfe']} | {r['unsupported']} | | | | | |"); continue
        name = "bicubic" if r["method"] == "bicubic" else f"{r['w']} (no projection)" if r.get("projection") is False else r["w"]
        md.append(f"| {name} | {r['lora']} | {r['nfe']} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} | {r['gmsd']:.4f} | {r['hf_ratio']:.3f} | {fmt_p(r)} | {fmt_l(r)} |")
    md += ["", f"Stochastic mode on {s} (LoRA 0, NFE 1, seed 0): the source x0 + temperature x sigma_0 x noise.", "",
           "| w | temperature | PSNR-Y | SSIM-Y | GMSD | HF ratio | pattern | local |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["set"] != s or r.get("temperature") is None: continue
        if "unsupported" in r:
            md.append(f"| {r['w']} | {r['temperature']} | {r['unsupported']} | | | | | |"); continue
        md.append(f"| {r['w']} | {r['temperature']} | {r['psnr_y']:.3f} | {r['ssim_y']:.4f} | {r['gmsd']:.4f} | {r['hf_ratio']:.3f} | {fmt_p(r)} | {fmt_l(r)} |")
    md.append("")
def pick(s):
    """Set s's scored model rows, its deterministic ones (projected), its bicubic row and its
    fidelity row (w 1, LoRA 0, NFE 1)."""
    ok = [r for r in rows if r["set"] == s and r["method"] == "model" and "unsupported" not in r]
    det = [r for r in ok if r.get("temperature") is None and r.get("projection") is not False]
    bic = next((r for r in rows if r["set"] == s and r["method"] == "bicubic"), None)
    fid = next((r for r in det if r["w"] == 1 and r["lora"] == 0 and r["nfe"] == 1), None)
    return ok, det, bic, fid
# The dial's gate (HF ratio within PSNR and GMSD bounds), computed from the rows above (not asserted by hand).
md += ["## Gate", "",
       "Some setting with HF ratio >= 0.8, GMSD <= bicubic's and PSNR-Y at most 1.5 dB below the "
       "fidelity setting (w 1, LoRA 0, NFE 1); HF ratio rising with w (LoRA 0) and with LoRA "
       "(w 1), NFE 1. The deterministic settings (w, LoRA, NFE) and the stochastic ones (grain: "
       "temperature) are judged apart: the HF ratio of the grain rows is source noise the model "
       "passes through, not detail it restores. A setting passes only if its pattern ratio is at most 1 "
       "too: more energy at a fine scale than the HR photos have (2-px stripes, per-pixel "
       "noise, hatching) is an artifact, not the sharpness of a photograph.", "",
       "| set | fidelity PSNR-Y | bicubic GMSD | best HF within the PSNR and GMSD bounds, deterministic (pattern) | best HF with pattern <= 1 too | passes | with grain (stochastic), pattern <= 1 | passes | HF vs w | HF vs LoRA |",
       "|---|---|---|---|---|---|---|---|---|---|"]
for s in sets:
    ok, det, bic, fid = pick(s)
    if not (bic and fid): continue
    inb = lambda rs: [r for r in rs if r["psnr_y"] >= fid["psnr_y"] - 1.5 and r["gmsd"] <= bic["gmsd"]]
    clean = lambda rs: [r for r in rs if r.get("pattern") is not None and r["pattern"] <= 1.0]
    best = max(inb(det), key=lambda r: r["hf_ratio"], default=None)
    best_clean = max(clean(inb(det)), key=lambda r: r["hf_ratio"], default=None)
    grain = max(clean(inb([r for r in ok if r.get("temperature") is not None])), key=lambda r: r["hf_ratio"], default=None)
    hf = lambda w, l: next((r["hf_ratio"] for r in det if r["w"] == w and r["lora"] == l and r["nfe"] == 1), None)
    seq_w = [h for h in (hf(w, 0) for w in (1, 1.5, 2, 3)) if h is not None]
    seq_l = [h for h in (hf(1, l) for l in (0, 1, 2, 3)) if h is not None]
    mono = lambda q: ("rises" if all(b > a for a, b in zip(q, q[1:])) else "not monotone") + " (" + ", ".join(f"{h:.3f}" for h in q) + ")" if len(q) > 1 else "n/a"
    dd = lambda r: f"{r['hf_ratio']:.3f} (w {r['w']}, LoRA {r['lora']}, NFE {r['nfe']}; pattern {fmt_p(r)})" if r else "none"
    desc, cdesc = dd(best), dd(best_clean)
    gdesc = f"{grain['hf_ratio']:.3f} (w {grain['w']}, temperature {grain['temperature']}, PSNR-Y {grain['psnr_y']:.3f}, GMSD {grain['gmsd']:.4f})" if grain else "none"
    yes = lambda r: "yes" if r and r["hf_ratio"] >= 0.8 else "no"
    md.append(f"| {s} | {fid['psnr_y']:.3f} | {bic['gmsd']:.4f} | {desc} | {cdesc} | {yes(best_clean)} | {gdesc} | {yes(grain)} | "
              f"{mono(seq_w)} | {mono(seq_l)} |")
md.append("")
# How far the gate is from what any texture could do (scripts/texture_bound.py), per set.
os.environ.setdefault("SR_SCORE", os.path.join(shared, "tools", "sr_score.py"))
import texture_bound
md += ["## Texture bound", "",
       "What a texture can buy within the PSNR bound (`scripts/texture_bound.py` on the fidelity "
       "setting's outputs): detail whose phase the LR image cannot tell adds its whole energy to "
       "the error, so 1.5 dB allows a texture of at most 0.413 x the fidelity MSE, whatever draws "
       "it, and its HF ratio depends on where that energy sits (the Laplacian weighs a frequency "
       "(u, v) by (2 cos 2 pi u + 2 cos 2 pi v - 4)^2, up to 64 at the 1-px checkerboard). "
       "Checkerboard: all of it at the finest frequency (an artifact, pattern far above 1). "
       "Photo spectrum: at each frequency at most 0.95 x the photo's own power less the output's, "
       "the finest frequencies first: the most any texture as a photograph has it can give; it is "
       "a bound (it is handed each photo's spectrum), and a random-phase texture drawn with it is "
       "scored like the rows above (its PSNR-Y misses the budget by its chance correlation with the "
       "missing detail). Missing detail's spectrum: the texture shaped like what the "
       "fidelity output lacks. Last column: the best deterministic row within the PSNR and GMSD "
       "bounds, against the photo-spectrum bound at that row's own PSNR drop.", "",
       "| set | fidelity HF | checkerboard | photo spectrum | missing detail's spectrum | drawn photo-spectrum texture: PSNR-Y / GMSD / HF / pattern | best row: HF of the bound at its PSNR-Y |",
       "|---|---|---|---|---|---|---|"]
reading, where = [], []
for s in sets:
    ok, det, bic, fid = pick(s)
    if not (bic and fid): continue
    fdir, hdir = os.path.join(out, tag(fid)), os.path.join(shared, "data", "eval", s)
    b = texture_bound.means(texture_bound.per_image(fdir, hdir))
    inb = [r for r in det if r["psnr_y"] >= fid["psnr_y"] - 1.5 and r["gmsd"] <= bic["gmsd"]]
    best = max(inb, key=lambda r: r["hf_ratio"], default=None)
    gain = lambda hf, bound: 100 * (hf - b["hf0"]) / max(bound - b["hf0"], 1e-9)
    if best:
        at = texture_bound.means(texture_bound.per_image(fdir, hdir, drop=max(fid["psnr_y"] - best["psnr_y"], 0.0)))
        bdesc = (f"{best['hf_ratio']:.3f} (w {best['w']}, LoRA {best['lora']}, NFE {best['nfe']}; "
                 f"{fid['psnr_y'] - best['psnr_y']:.2f} dB under) of {at['capped']:.3f}: "
                 f"{gain(best['hf_ratio'], at['capped']):.0f}% of the bound's gain over fidelity")
        ad = texture_bound.added(os.path.join(out, tag(best)), fdir, hdir)
        where.append(f"{s}: {ad['freq']:.3f} cycles/px, gain {ad['geff']:.1f}, {ad['cost']:.2f} of its "
                     f"energy added to the error (corr {ad['corr']:.3f} with the missing detail); "
                     f"the bound's texture {b['freq']:.3f} cycles/px, gain {b['geff']:.1f}")
    else:
        bdesc = "none"
    reading.append(f"{s}: HF 0.8 is {gain(0.8, b['capped']):.0f}% of the bound's gain at 1.5 dB")
    md.append(f"| {s} | {b['hf0']:.3f} | {b['checker']:.3f} | {b['capped']:.3f} | {b['residual']:.3f} | "
              f"{b['psnr']:.3f} / {b['gmsd']:.4f} / {b['hf']:.3f} / {b['pattern']:.2f} | {bdesc} |")
md += ["", "Gain over the fidelity setting: " + "; ".join(reading) + " (a texture drawn by a "
       "network, which is not handed the photo's spectrum, gets less than the bound). The bound is "
       "for detail the LR image cannot tell (exact when the fidelity output is the conditional "
       "mean); detail it does tell, which a stronger fidelity model restores with PSNR rising, is "
       "outside it.", "",
       "Where the best row's added detail (its output less the fidelity output) sits: mean "
       "frequency, mean Laplacian gain (HF per unit of energy) and the error it adds per unit of "
       "its energy: " + "; ".join(where) + ".", ""]
# Side by side: the fidelity setting and the sharpest one within 1.5 dB of it, per set.
for s in sets:
    ok, det, _, fid = pick(s)
    if not fid: continue
    near = lambda rs: [r for r in rs if r["psnr_y"] >= fid["psnr_y"] - 1.5]
    real = max(near(det), key=lambda r: r["hf_ratio"])
    grainy = max(near([r for r in ok if r.get("temperature") is not None]), key=lambda r: r["hf_ratio"], default=None)
    md += [f"Realism setting on {s}: w {real['w']}, LoRA {real['lora']}, NFE {real['nfe']} "
           f"(HF {real['hf_ratio']:.3f}, PSNR-Y {real['psnr_y']:.3f})"
           + (f"; grain setting: w {grainy['w']}, temperature {grainy['temperature']} "
              f"(HF {grainy['hf_ratio']:.3f}, PSNR-Y {grainy['psnr_y']:.3f})" if grainy else ""), ""]
    hr_dir = os.path.join(shared, "data", "eval", s)
    for f in sorted(os.listdir(hr_dir))[:2]:
        stem = os.path.splitext(f)[0]
        hr = Image.open(os.path.join(hr_dir, f)).convert("RGB")
        ims = [hr]
        for d in [f"{s}-bicubic", tag(fid), tag(real)] + ([tag(grainy)] if grainy else []):
            p = os.path.join(out, d, stem + ".png")
            ims.append(Image.open(p).convert("RGB") if os.path.exists(p) else hr)
        c = 96; x, y = hr.width // 2 - c // 2, hr.height // 2 - c // 2
        crops = [im.crop((x, y, x + c, y + c)).resize((3 * c, 3 * c), Image.NEAREST) for im in ims]
        strip = Image.new("RGB", (len(crops) * (3 * c + 10) - 10, 3 * c))
        for i, cr in enumerate(crops): strip.paste(cr, (i * (3 * c + 10), 0))
        # Named after the set and the image, never an image's own file name: these are crops
        # of our outputs, not data.
        name = f"docs/img/tradeoff/{s}-{stem}-crops.png"
        strip.save(name)
        md.append(f"![{stem}: HR | bicubic | fidelity | realism" + (" | grain" if grainy else "")
                  + f"](img/tradeoff/{s}-{stem}-crops.png)")
    md.append("")
open("docs/tradeoff.md", "w").write("\n".join(md) + "\n")
print("wrote docs/tradeoff.md")
EOF
