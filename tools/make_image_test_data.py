#!/usr/bin/env python3
"""Generate the small PNG and JPEG files in tests/data/io/image.

PNG files are written byte by byte by this script (every color type, bit depth, tRNS,
Adam7 interlacing, text and EXIF chunks), so their content is exactly known. Pixel values
follow formulas that tests/io/image_read_test.cpp recomputes:

    value(x, y, c) = (40 x + 50 y + 70 c) mod 256      8-bit samples
    low(x, y, c)   = (7 x + 13 y + 3 c) mod 256        low byte of 16-bit samples
    alpha(x, y)    = (30 x + 20 y + 15) mod 256

JPEG files are encoded with Pillow; the EXIF segments are built here. Pillow's own decodes
are stored next to them as raw bytes, so the C++ tests can check that our decoder matches
Pillow without Pillow installed.

Run with a Python that has Pillow, for example Debian 12's python3-pil (Pillow 9.4):
    /usr/bin/python3 tools/make_image_test_data.py
The script checks its PNG files and EXIF transposes against Pillow before writing.
"""

import io
import pathlib
import struct
import zlib

from PIL import Image, ImageOps

OUT_DIR = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "io" / "image"
WIDTH, HEIGHT = 7, 5

COLOR_GRAY, COLOR_RGB, COLOR_PALETTE, COLOR_GRAY_ALPHA, COLOR_RGBA = 0, 2, 3, 4, 6
ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def value(x, y, c):
    return (40 * x + 50 * y + 70 * c) % 256


def low(x, y, c):
    return (7 * x + 13 * y + 3 * c) % 256


def alpha(x, y):
    return (30 * x + 20 * y + 15) % 256


def chunk(kind, data):
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def pack_row(samples, bit_depth):
    """Pack one scanline of samples (ints) MSB first, padding the last byte."""
    if bit_depth == 16:
        return b"".join(struct.pack(">H", s) for s in samples)
    if bit_depth == 8:
        return bytes(samples)
    per_byte = 8 // bit_depth
    out = bytearray()
    for i in range(0, len(samples), per_byte):
        byte = 0
        group = samples[i:i + per_byte]
        for j, s in enumerate(group):
            byte |= s << (8 - bit_depth * (j + 1))
        out.append(byte)
    return bytes(out)


def scanlines(pixels, width, height, bit_depth, interlaced):
    """Filter-type-0 scanlines of `pixels[y][x]` (a tuple of samples per pixel)."""
    def rows_of(xs, ys):
        data = b""
        for y in ys:
            samples = [s for x in xs for s in pixels[y][x]]
            data += b"\x00" + pack_row(samples, bit_depth)
        return data

    if not interlaced:
        return rows_of(range(width), range(height))
    data = b""
    for x0, y0, dx, dy in ADAM7:
        xs, ys = range(x0, width, dx), range(y0, height, dy)
        if len(xs) and len(ys):
            data += rows_of(xs, ys)
    return data


def png_bytes(pixels, color_type, bit_depth, interlaced=False, before_idat=(), after_idat=(),
              width=WIDTH, height=HEIGHT):
    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, int(interlaced))
    raw = scanlines(pixels, width, height, bit_depth, interlaced)
    out = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
    out += b"".join(before_idat)
    out += chunk(b"IDAT", zlib.compress(raw, 9))
    out += b"".join(after_idat)
    return out + chunk(b"IEND", b"")


def pattern(channels, bit_depth, with_alpha):
    """Pixels following the formulas above; alpha, when present, is the last channel."""
    color_channels = channels - 1 if with_alpha else channels
    rows = []
    for y in range(HEIGHT):
        row = []
        for x in range(WIDTH):
            samples = [value(x, y, c) for c in range(color_channels)]
            if with_alpha:
                samples.append(alpha(x, y))
            if bit_depth == 16:
                samples = [s * 256 + low(x, y, c) for c, s in enumerate(samples)]
            row.append(tuple(samples))
        rows.append(row)
    return rows


def low_depth_gray(bit_depth):
    levels = 1 << bit_depth
    multiplier = {1: 1, 2: 2, 4: 3}[bit_depth]
    return [[((x + multiplier * y) % levels,) for x in range(WIDTH)] for y in range(HEIGHT)]


def palette_png(bit_depth, entries, trns_entries, interlaced=False):
    plte = bytes(b for i in range(entries) for b in ((37 * i) % 256, (91 * i) % 256,
                                                     (53 * i) % 256))
    chunks = [chunk(b"PLTE", plte)]
    if trns_entries:
        chunks.append(chunk(b"tRNS", bytes((29 * i) % 256 for i in range(trns_entries))))
    pixels = [[((x + WIDTH * y) % entries,) for x in range(WIDTH)] for y in range(HEIGHT)]
    return png_bytes(pixels, COLOR_PALETTE, bit_depth, interlaced, before_idat=chunks)


def tiff_orientation(orientation, big_endian):
    """A TIFF structure whose IFD0 contains a Make tag, the Orientation tag and a third tag."""
    e = ">" if big_endian else "<"
    header = (b"MM" if big_endian else b"II") + struct.pack(e + "HI", 42, 8)
    entries = [
        struct.pack(e + "HHI4s", 0x010F, 2, 4, b"Cam\x00"),  # Make, ASCII, stored inline
        struct.pack(e + "HHIHH", 0x0112, 3, 1, orientation, 0),  # Orientation, SHORT
        struct.pack(e + "HHII", 0x011A, 5, 1, 0),  # XResolution (offset unused by readers)
    ]
    return header + struct.pack(e + "H", len(entries)) + b"".join(entries) + b"\x00" * 4


def jpeg_with_exif(jpeg, tiff):
    """Insert an APP1 Exif segment right after SOI."""
    payload = b"Exif\x00\x00" + tiff
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    assert jpeg[:2] == b"\xff\xd8"
    return jpeg[:2] + segment + jpeg[2:]


def text_chunk(key, text):
    return chunk(b"tEXt", key.encode("latin-1") + b"\x00" + text.encode("latin-1"))


def ztxt_chunk(key, text):
    return chunk(b"zTXt", key.encode("latin-1") + b"\x00\x00" +
                 zlib.compress(text.encode("latin-1")))


def itxt_chunk(key, text):
    return chunk(b"iTXt", key.encode("latin-1") + b"\x00\x00\x00" + b"en\x00" + b"\x00" +
                 text.encode("utf-8"))


def check_png_with_pillow(name, data, expect_rgb):
    """Assert that Pillow decodes `data` to `expect_rgb` (rows of RGB tuples)."""
    im = Image.open(io.BytesIO(data)).convert("RGB")
    got = [[im.getpixel((x, y)) for x in range(im.width)] for y in range(im.height)]
    assert got == expect_rgb, name


def rgb_of(pixels, has_alpha, scale=lambda s: s):
    def to_rgb(p):
        color = p[:-1] if has_alpha else p
        color = tuple(scale(s) for s in color)
        return color * 3 if len(color) == 1 else color
    return [[to_rgb(p) for p in row] for row in pixels]


def write_pngs(files):
    def add(name, data, expect_rgb=None):
        if expect_rgb is not None:
            check_png_with_pillow(name, data, expect_rgb)
        files[name] = data

    for depth in (1, 2, 4):
        px = low_depth_gray(depth)
        factor = 255 // ((1 << depth) - 1)
        add(f"gray{depth}.png", png_bytes(px, COLOR_GRAY, depth),
            rgb_of(px, False, lambda s: s * factor))
    add("gray8.png", png_bytes(pattern(1, 8, False), COLOR_GRAY, 8),
        rgb_of(pattern(1, 8, False), False))
    # Pillow clips 16-bit gray to 255 instead of taking the high byte, so no Pillow check.
    add("gray16.png", png_bytes(pattern(1, 16, False), COLOR_GRAY, 16))
    high = lambda s: s >> 8  # noqa: E731
    for depth in (8, 16):
        scale = high if depth == 16 else (lambda s: s)
        px = pattern(2, depth, True)
        add(f"graya{depth}.png", png_bytes(px, COLOR_GRAY_ALPHA, depth), rgb_of(px, True, scale))
        px = pattern(3, depth, False)
        add(f"rgb{depth}.png", png_bytes(px, COLOR_RGB, depth), rgb_of(px, False, scale))
        px = pattern(4, depth, True)
        add(f"rgba{depth}.png", png_bytes(px, COLOR_RGBA, depth), rgb_of(px, True, scale))

    # tRNS on gray and RGB: the color of pixel (2, 1) becomes transparent.
    px = pattern(1, 8, False)
    add("gray8_trns.png", png_bytes(px, COLOR_GRAY, 8, before_idat=[
        chunk(b"tRNS", struct.pack(">H", value(2, 1, 0)))]), rgb_of(px, False))
    px = pattern(3, 8, False)
    add("rgb8_trns.png", png_bytes(px, COLOR_RGB, 8, before_idat=[
        chunk(b"tRNS", struct.pack(">HHH", *(value(2, 1, c) for c in range(3))))]),
        rgb_of(px, False))

    palette = lambda i: ((37 * i) % 256, (91 * i) % 256, (53 * i) % 256)  # noqa: E731
    add("palette4.png", palette_png(4, 16, 0),
        [[palette((x + WIDTH * y) % 16) for x in range(WIDTH)] for y in range(HEIGHT)])
    add("palette8_trns.png", palette_png(8, 35, 20),
        [[palette((x + WIDTH * y) % 35) for x in range(WIDTH)] for y in range(HEIGHT)])

    px = pattern(3, 8, False)
    add("interlaced_rgb8.png", png_bytes(px, COLOR_RGB, 8, interlaced=True), rgb_of(px, False))
    px = pattern(4, 16, True)
    add("interlaced_rgba16.png", png_bytes(px, COLOR_RGBA, 16, interlaced=True),
        rgb_of(px, True, high))
    px = low_depth_gray(1)
    add("interlaced_gray1.png", png_bytes(px, COLOR_GRAY, 1, interlaced=True),
        rgb_of(px, False, lambda s: s * 255))

    write_png_metadata_files(files, add)


def write_png_metadata_files(files, add):
    px = pattern(3, 8, False)
    expect = rgb_of(px, False)
    add("text_chunks.png", png_bytes(
        px, COLOR_RGB, 8,
        before_idat=[text_chunk("Title", "Caf\u00e9 test"), ztxt_chunk("Comment", "zipped text"),
                     itxt_chunk("Prompt", "\u732b\u304c\u5ea7\u308b")],
        after_idat=[text_chunk("Software", "tools/make_image_test_data.py")]), expect)

    # EXIF orientation in the three places Pillow 9.4 reads for PNG.
    add("orientation6_exif_chunk.png", png_bytes(px, COLOR_RGB, 8, before_idat=[
        chunk(b"eXIf", tiff_orientation(6, big_endian=True))]))
    raw_hex = (b"Exif\x00\x00" + tiff_orientation(3, big_endian=False)).hex()
    raw_profile = f"\nexif\n{len(raw_hex) // 2:8d}\n" + "\n".join(
        raw_hex[i:i + 72] for i in range(0, len(raw_hex), 72)) + "\n"
    add("orientation3_raw_profile.png", png_bytes(px, COLOR_RGB, 8, before_idat=[
        ztxt_chunk("Raw profile type exif", raw_profile)]))
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF><rdf:Description '
           'tiff:Orientation="8"/></rdf:RDF></x:xmpmeta>')
    add("orientation8_xmp.png", png_bytes(px, COLOR_RGB, 8, before_idat=[
        itxt_chunk("XML:com.adobe.xmp", xmp)]))
    for name, orientation in (("orientation6_exif_chunk.png", 6),
                              ("orientation3_raw_profile.png", 3), ("orientation8_xmp.png", 8)):
        im = Image.open(io.BytesIO(files[name]))
        assert im.getexif().get(0x0112) == orientation, name
        assert ImageOps.exif_transpose(im).size == ((WIDTH, HEIGHT) if orientation == 3
                                                    else (HEIGHT, WIDTH)), name

    # Damaged and oversized files.
    noise = bytes((i * i * 7919 + (i >> 3) * 104729) % 251 for i in range(64 * 64 * 3))
    big = [[tuple(noise[(y * 64 + x) * 3:(y * 64 + x) * 3 + 3]) for x in range(64)]
           for y in range(64)]
    whole = png_bytes(big, COLOR_RGB, 8, width=64, height=64)
    idat_at = whole.index(b"IDAT")
    idat_length = struct.unpack(">I", whole[idat_at - 4:idat_at])[0]
    files["truncated.png"] = whole[:idat_at + 4 + idat_length // 2]  # inside the IDAT data
    files["bad_crc.png"] = files["rgb8.png"][:29] + b"\x00\x00\x00\x00" + files["rgb8.png"][33:]
    for name, (w, h) in (("huge_side.png", (40000, 10)), ("huge_area.png", (20000, 20000))):
        ihdr = struct.pack(">IIBBBBB", w, h, 8, COLOR_RGB, 0, 0, 0)
        files[name] = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) +
                       chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))
    files["not_an_image.txt"] = b"This is a text file, not an image.\n"


def photo_pixels(width, height):
    """A smooth gradient with mild texture: realistic JPEG content with exact decodes to check."""
    im = Image.new("RGB", (width, height))
    for y in range(height):
        for x in range(width):
            t = (x * 13 + y * 29) % 17
            im.putpixel((x, y), (min(255, 6 * x + t), min(255, 9 * y + 2 * t),
                                 (x * y + 3 * t) % 256))
    return im


def quadrants(width, height):
    """Four flat blocks: red top-left, green top-right, blue bottom-left, white bottom-right."""
    im = Image.new("RGB", (width, height))
    colors = [[(255, 0, 0), (0, 255, 0)], [(0, 0, 255), (255, 255, 255)]]
    for y in range(height):
        for x in range(width):
            im.putpixel((x, y), colors[2 * y // height][2 * x // width])
    return im


def transpose_reference(im, orientation):
    """The transposes documented in src/io/image_exif.h, written independently of Pillow."""
    w, h = im.size
    swap = orientation >= 5
    out = Image.new(im.mode, (h, w) if swap else (w, h))
    source = {
        1: lambda x, y: (x, y), 2: lambda x, y: (w - 1 - x, y),
        3: lambda x, y: (w - 1 - x, h - 1 - y), 4: lambda x, y: (x, h - 1 - y),
        5: lambda x, y: (y, x), 6: lambda x, y: (y, h - 1 - x),
        7: lambda x, y: (w - 1 - y, h - 1 - x), 8: lambda x, y: (w - 1 - y, x),
    }[orientation]
    for y in range(out.height):
        for x in range(out.width):
            out.putpixel((x, y), im.getpixel(source(x, y)))
    return out


def jpeg_bytes(im, **options):
    buffer = io.BytesIO()
    im.save(buffer, "JPEG", **options)
    return buffer.getvalue()


def write_jpegs(files):
    photo = jpeg_bytes(photo_pixels(37, 23), quality=90)
    files["photo.jpg"] = photo
    files["photo.rgb"] = Image.open(io.BytesIO(photo)).convert("RGB").tobytes()
    progressive = jpeg_bytes(photo_pixels(37, 23), quality=85, progressive=True, subsampling=1)
    files["progressive.jpg"] = progressive
    files["progressive.rgb"] = Image.open(io.BytesIO(progressive)).convert("RGB").tobytes()
    gray = jpeg_bytes(photo_pixels(37, 23).convert("L"), quality=90)
    files["gray.jpg"] = gray
    files["gray.gray"] = Image.open(io.BytesIO(gray)).tobytes()
    cmyk = jpeg_bytes(photo_pixels(21, 13).convert("CMYK"), quality=90)
    files["cmyk.jpg"] = cmyk
    cmyk_image = Image.open(io.BytesIO(cmyk))
    assert cmyk_image.mode == "CMYK"
    files["cmyk.rgb"] = cmyk_image.convert("RGB").tobytes()

    files["truncated.jpg"] = photo[:len(photo) // 2]
    sof = photo.index(b"\xff\xc0")
    # SOF0: marker, length (2), precision (1), height (2), width (2)
    files["huge_side.jpg"] = photo[:sof + 5] + struct.pack(">HH", 23, 40000) + photo[sof + 9:]

    upright = jpeg_bytes(quadrants(48, 32), quality=95)
    decoded = Image.open(io.BytesIO(upright)).convert("RGB")
    for orientation in range(1, 9):
        tiff = tiff_orientation(orientation, big_endian=orientation % 2 == 0)
        data = jpeg_with_exif(upright, tiff)
        im = Image.open(io.BytesIO(data))
        assert im.getexif().get(0x0112) == orientation
        expected = transpose_reference(decoded, orientation)
        assert ImageOps.exif_transpose(im).convert("RGB").tobytes() == expected.tobytes()
        files[f"orientation{orientation}.jpg"] = data


def main():
    files = {}
    write_pngs(files)
    write_jpegs(files)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        (OUT_DIR / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
