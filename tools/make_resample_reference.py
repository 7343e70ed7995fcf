#!/usr/bin/env python3
"""Generate Pillow reference outputs for tests/io/resample_test.cpp in tests/data/io/resample.

Inputs are deterministic pseudo-random images (hard cases for rounding: pixels are uncorrelated
with their neighbours), resized with Image.resize((w, h), filter) for every filter and a set of
sizes: downscaling and upscaling, odd sizes, one axis only, and to 1x1. Files are raw pixel
bytes, rows top to bottom, channels interleaved; float images are little-endian float32.
manifest.txt lists one case per line:

    <kind> <filter> <width> <height> <file>

where kind is rgb, rgba, gray or float, and the input of each kind is input_<kind>.raw with
the size given by the "input" lines.

Run with a Python that has Pillow, for example Debian 12's python3-pil (Pillow 9.4):
    /usr/bin/python3 tools/make_resample_reference.py
"""

import pathlib
import struct

import PIL
from PIL import Image

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "io" / "resample"

FILTERS = {
    "box": Image.Resampling.BOX,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

CASES = {
    # kind: (Pillow mode, input size, output sizes)
    "rgb": ("RGB", (37, 23), [(17, 11), (5, 3), (1, 1), (12, 23), (37, 8), (53, 29), (40, 50),
                              (80, 9)]),
    "rgba": ("RGBA", (11, 7), [(5, 3), (17, 13), (11, 4), (23, 7)]),
    "gray": ("L", (13, 9), [(6, 4), (29, 20), (13, 2)]),
    "float": ("F", (13, 9), [(6, 4), (29, 20), (13, 5), (4, 9)]),
}


class Lcg:
    """A 32-bit linear congruential generator, so the inputs do not depend on Python's RNG."""

    def __init__(self, seed):
        self.state = seed

    def next(self):
        self.state = (self.state * 1664525 + 1013904223) % 2**32
        return self.state >> 8


def make_input(kind, mode, size):
    rng = Lcg(seed=len(kind) * 7919)
    count = size[0] * size[1]
    if mode == "F":
        values = [(rng.next() % 35000) / 100.0 - 50.0 for _ in range(count)]  # -50 .. 300
        return Image.frombytes("F", size, struct.pack(f"<{count}f", *values))
    bands = len(mode)
    data = bytearray(rng.next() % 256 for _ in range(count * bands))
    if mode == "RGBA":
        for i in range(0, len(data), 4):  # include fully transparent and opaque pixels
            if data[i + 3] < 40:
                data[i + 3] = 0
            elif data[i + 3] > 215:
                data[i + 3] = 255
    return Image.frombytes(mode, size, bytes(data))


def raw_bytes(image):
    if image.mode == "F":
        return image.tobytes("raw", "F;32F")  # little-endian float32
    return image.tobytes()


def main():
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    manifest = [f"# Pillow {PIL.__version__}: kind filter width height file",
                "# input lines: input kind - width height file"]
    for kind, (mode, size, outputs) in CASES.items():
        image = make_input(kind, mode, size)
        name = f"input_{kind}.raw"
        (OUT_DIR / name).write_bytes(raw_bytes(image))
        manifest.append(f"input {kind} - {size[0]} {size[1]} {name}")
        for filter_name, resample in FILTERS.items():
            for width, height in outputs:
                out = image.resize((width, height), resample)
                name = f"{kind}_{filter_name}_{width}x{height}.raw"
                (OUT_DIR / name).write_bytes(raw_bytes(out))
                manifest.append(f"{kind} {filter_name} {width} {height} {name}")
    (OUT_DIR / "manifest.txt").write_text("\n".join(manifest) + "\n")
    print(f"wrote {len(manifest) - 2} files to {OUT_DIR}")


if __name__ == "__main__":
    main()
