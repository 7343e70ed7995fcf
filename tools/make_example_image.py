#!/usr/bin/env python3
"""Draws examples/landscape.png, the project's own example photo for `ethereal edit`.

A procedural scene (sky gradient, sun, hills, a house with a red roof, a tree) drawn with the
standard library only, so the repository carries no third-party image.
Run: python3 tools/make_example_image.py [output.png]
"""
import math
import struct
import sys
import zlib

WIDTH, HEIGHT = 640, 480


def lerp(a, b, t):
    t = min(1.0, max(0.0, t))
    return tuple(int(round(x + (y - x) * t)) for x, y in zip(a, b))


def pixel(x, y):
    # Sky: deep blue at the top to pale blue at the horizon.
    color = lerp((40, 90, 170), (190, 220, 245), y / (HEIGHT * 0.6))
    # Sun with a soft halo.
    d = math.hypot(x - 500, y - 90)
    if d < 40:
        color = (255, 230, 120)
    elif d < 70:
        color = lerp((255, 230, 120), color, (d - 40) / 30)
    # Two hills.
    far = 300 + 40 * math.sin(x / 90.0)
    near = 360 + 30 * math.sin(x / 60.0 + 1.3)
    if y > far:
        color = lerp((90, 140, 80), (60, 110, 60), min(1.0, (y - far) / 120))
    if y > near:
        color = lerp((70, 150, 60), (40, 100, 35), min(1.0, (y - near) / 120))
    # House: walls, roof, door, window.
    if 180 <= x <= 300 and 300 <= y <= 390:
        color = (235, 225, 200)
        if 225 <= x <= 255 and 340 <= y <= 390:
            color = (110, 70, 40)
        if 265 <= x <= 290 and 320 <= y <= 345:
            color = (120, 170, 220)
    if 300 >= y >= 240 and abs(x - 240) <= (y - 240) * 1.2 + 4:
        color = (180, 50, 40)
    # Tree: trunk and round crown.
    if 420 <= x <= 436 and 330 <= y <= 400:
        color = (100, 70, 40)
    if math.hypot(x - 428, y - 300) < 45:
        color = (40, 120 + int(20 * math.sin(x / 7.0) * math.cos(y / 5.0)), 50)
    return color


def write_png(path):
    rows = bytearray()
    for y in range(HEIGHT):
        rows.append(0)  # filter type: none
        for x in range(WIDTH):
            rows.extend(pixel(x, y))

    def chunk(kind, data):
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", WIDTH, HEIGHT, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
    png += chunk(b"tEXt", b"Description\x00Procedural landscape drawn by tools/make_example_image.py")
    png += chunk(b"IDAT", zlib.compress(bytes(rows), 9)) + chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(png)


if __name__ == "__main__":
    write_png(sys.argv[1] if len(sys.argv) > 1 else "examples/landscape.png")
