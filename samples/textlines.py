"""Rendered English text lines with known content, for the OCR samples.

Everything comes from inside installed packages: phrases from CPython's own
``pydoc_data`` help text, fonts from matplotlib's wheel (DejaVu and STIX). Each
line gets a random font, size, ink/paper colours, a small tilt, blur, sensor
noise and JPEG compression, so calibration and evaluation see realistic variety.
Everything is drawn from a seeded ``random.Random``: same seed, same images.
"""
from __future__ import annotations

import io
import math
import random
import re
from pathlib import Path

import numpy as np

FONT_FILES = (
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSerif.ttf",
    "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf", "STIXGeneral.ttf", "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
)


def fonts() -> list[Path]:
    import matplotlib

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    found = [folder / name for name in FONT_FILES if (folder / name).exists()]
    if not found:
        raise SystemExit(f"no fonts found in {folder}: is matplotlib installed?")
    return found


def vocabulary() -> list[str]:
    """Words of the Python help topics, in reading order (so phrases read like text)."""
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics))
    return re.findall(r"[A-Za-z][A-Za-z0-9'\-]*[.,;:]?", text)


def phrase(rng: random.Random, words: list[str], max_chars: int) -> str:
    """A run of 1-5 consecutive words that fits in ``max_chars``."""
    while True:
        start = rng.randrange(len(words) - 6)
        taken = words[start:start + rng.randint(1, 5)]
        while taken and len(" ".join(taken)) > max_chars:
            taken.pop()
        text = " ".join(taken)
        if len(text) >= 3:
            return text


def draw(rng: random.Random, text: str, font_files: list[Path]):
    """One text line as a PIL RGB image, tightly framed."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    font = ImageFont.truetype(str(rng.choice(font_files)), rng.randint(24, 40))
    left, top, right, bottom = font.getbbox(text)
    dark_paper = rng.random() < 0.15
    paper = rng.randint(10, 70) if dark_paper else rng.randint(175, 250)
    ink = rng.randint(185, 250) if dark_paper else rng.randint(5, 80)
    paper_rgb = tuple(int(np.clip(paper + rng.randint(-15, 15), 0, 255)) for _ in range(3))
    ink_rgb = tuple(int(np.clip(ink + rng.randint(-15, 15), 0, 255)) for _ in range(3))
    pad_x, pad_y = rng.randint(3, 14), rng.randint(2, 9)
    image = Image.new("RGB", (right - left + 2 * pad_x, bottom - top + 2 * pad_y), paper_rgb)
    ImageDraw.Draw(image).text((pad_x - left, pad_y - top), text, font=font, fill=ink_rgb)
    if rng.random() < 0.5:
        image = image.rotate(rng.uniform(-2.5, 2.5), resample=Image.BILINEAR, fillcolor=paper_rgb)
    if rng.random() < 0.5:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.2, 1.1)))
    if rng.random() < 0.5:
        pixels = np.asarray(image, dtype=np.float32)
        noise = np.random.default_rng(rng.randrange(1 << 30)).normal(0.0, rng.uniform(2, 9), pixels.shape)
        image = Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.5:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=rng.randint(35, 90))
        image = Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return image


def to_model_input(image, height: int, width: int) -> np.ndarray:
    """PaddleOCR's line preprocessing: height fixed, aspect kept, right-padded, BGR in [-1, 1]."""
    from PIL import Image

    scaled_width = min(width, int(math.ceil(height * image.width / image.height)))
    pixels = np.asarray(image.resize((scaled_width, height), Image.BILINEAR), dtype=np.float32)
    chw = pixels[:, :, ::-1].transpose(2, 0, 1) / 127.5 - 1.0  # the models were trained on cv2's BGR
    out = np.zeros((3, height, width), np.float32)
    out[:, :, :scaled_width] = chw
    return out


def natural_input(image, height: int) -> np.ndarray:
    """The same preprocessing at the line's natural width: height fixed, aspect kept, no padding."""
    from PIL import Image

    width = max(1, int(math.ceil(height * image.width / image.height)))
    pixels = np.asarray(image.resize((width, height), Image.BILINEAR), dtype=np.float32)
    return np.ascontiguousarray(pixels[:, :, ::-1].transpose(2, 0, 1) / 127.5 - 1.0)


def package_file(package: str, relative: str) -> Path:
    """A file shipped inside an installed package (the sample models come from a wheel)."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit(f"the package {package!r} is not installed; see this sample's README")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.exists():
        raise SystemExit(f"{path} not found in the installed {package!r}")
    return path
