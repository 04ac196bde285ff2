"""Make the text-recognition sample's model and data (seeded; about 10 s on 2 cores).

Writes into ``data/`` beside this file:
  model.onnx    PP-OCRv4 text-line recogniser (CTC), copied from the rapidocr-onnxruntime wheel
  charset.txt   the CTC alphabet, one symbol a line, index 0 = blank (from the model's metadata)
  eval.npz      x: (N, 3, 48, 320) line images, text: (N,) the strings drawn on them
  calib.npz     x: (M, 3, 48, 320) other lines, for calibration only
  natural_eval.npz, natural_calib.npz   the same lines at their natural width (height 48, no padding),
                side by side: pixels (3, 48, total width), offsets (N + 1,) where each line starts, text
                (the natural-width variant of the sample, spec_natural_width.json)
"""
from __future__ import annotations

import argparse
import random
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from textlines import draw, fonts, natural_input, package_file, phrase, to_model_input, vocabulary  # noqa: E402

HEIGHT, WIDTH = 48, 320
MODEL = "models/ch_PP-OCRv4_rec_infer.onnx"


def make_lines(seed: int, count: int, words: list[str], font_files: list[Path]
               ) -> tuple[np.ndarray, list[str], list[np.ndarray]]:
    """Padded line images, their texts, and the same lines at their natural width."""
    rng = random.Random(seed)
    images = np.empty((count, 3, HEIGHT, WIDTH), np.float32)
    texts, natural = [], []
    for i in range(count):
        text = phrase(rng, words, max_chars=18)
        image = draw(rng, text, font_files)
        images[i] = to_model_input(image, HEIGHT, WIDTH)
        natural.append(natural_input(image, HEIGHT))
        texts.append(text)
    return images, texts, natural


def save_natural(path: Path, lines: list[np.ndarray], texts: list[str]) -> None:
    offsets = np.cumsum([0] + [line.shape[2] for line in lines])
    np.savez(path, pixels=np.concatenate(lines, axis=2), offsets=offsets, text=np.array(texts))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    parser.add_argument("--eval", type=int, default=400, help="evaluation lines")
    parser.add_argument("--calib", type=int, default=150, help="calibration lines")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    model_path = args.out / "model.onnx"
    shutil.copyfile(package_file("rapidocr_onnxruntime", MODEL), model_path)
    meta = {p.key: p.value for p in onnx.load(str(model_path), load_external_data=False).metadata_props}
    symbols = ["<blank>"] + meta["character"].splitlines() + [" "]
    (args.out / "charset.txt").write_text("\n".join(symbols) + "\n", encoding="utf-8")
    words, font_files = vocabulary(), fonts()
    x, texts, natural = make_lines(args.seed, args.eval, words, font_files)
    np.savez(args.out / "eval.npz", x=x, text=np.array(texts))
    save_natural(args.out / "natural_eval.npz", natural, texts)
    calib, calib_texts, natural = make_lines(args.seed + 1, args.calib, words, font_files)
    np.savez(args.out / "calib.npz", x=calib)
    save_natural(args.out / "natural_calib.npz", natural, calib_texts)
    print(f"wrote {args.out}: model.onnx, charset.txt ({len(symbols)} symbols), eval.npz {x.shape}, "
          f"calib.npz {calib.shape}")


if __name__ == "__main__":
    main()
