"""Make the text-direction sample's model and data (seeded; about 10 s on 2 cores).

Writes into ``data/`` beside this file:
  model.onnx   PP-OCR mobile v2.0 text-direction classifier, copied from the
               rapidocr-onnxruntime wheel (class 0 = upright, 1 = rotated 180°)
  eval.npz     x: (N, 3, 48, 192) line images, y: (N,) labels, half rotated by 180°
  calib.npz    x: (M, 3, 48, 192) other lines for calibration only (no overlap)
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textlines import draw, fonts, package_file, phrase, to_model_input, vocabulary  # noqa: E402

HEIGHT, WIDTH = 48, 192
MODEL = "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"


def make_lines(seed: int, count: int, words: list[str], font_files: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    rng = random.Random(seed)
    images = np.empty((count, 3, HEIGHT, WIDTH), np.float32)
    labels = np.empty(count, np.int64)
    for i in range(count):
        image = draw(rng, phrase(rng, words, max_chars=22), font_files)
        labels[i] = rotated = rng.random() < 0.5
        images[i] = to_model_input(image.rotate(180) if rotated else image, HEIGHT, WIDTH)
    return images, labels


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--eval", type=int, default=1000, help="evaluation lines")
    parser.add_argument("--calib", type=int, default=200, help="calibration lines")
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(package_file("rapidocr_onnxruntime", MODEL), args.out / "model.onnx")
    words, font_files = vocabulary(), fonts()
    x, y = make_lines(args.seed, args.eval, words, font_files)
    np.savez(args.out / "eval.npz", x=x, y=y)
    calib, _ = make_lines(args.seed + 1, args.calib, words, font_files)
    np.savez(args.out / "calib.npz", x=calib)
    print(f"wrote {args.out}: model.onnx, eval.npz {x.shape} ({y.mean():.0%} rotated), calib.npz {calib.shape}")


if __name__ == "__main__":
    main()
