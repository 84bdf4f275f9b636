#!/usr/bin/env python3
"""Links the 10 images `train --holdout 10` keeps out (native train/data.rs): file i * n / 10,
i = 0..9, of the sorted images of T91 then SunHays80.

Usage: scripts/holdout.py TRAIN_DIR OUT_DIR   (TRAIN_DIR: ../shared/data/train)
"""
import os
import sys

EXTS = {"png", "jpg", "jpeg", "webp"}


def holdout(train, out):
    files = []
    for d in ["T91", "SunHays80"]:
        p = os.path.join(train, d)
        files += sorted(os.path.join(p, f) for f in os.listdir(p)
                        if f.rsplit(".", 1)[-1].lower() in EXTS)
    os.makedirs(out, exist_ok=True)
    for i in range(10):
        f = files[i * len(files) // 10]
        os.symlink(os.path.abspath(f), os.path.join(out, os.path.basename(f)))
    return out


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    holdout(*sys.argv[1:])
