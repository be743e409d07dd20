#!/usr/bin/env python3
"""Makes JPEG (and a few PNG) test images and OpenCV's decoding of them, for checking that
beit-seg decodes bit-identically to `cv2.imdecode(buf, cv2.IMREAD_COLOR)`.

    $V/bin/python scripts/check_jpeg.py OUT_DIR        # writes OUT_DIR/<case>.<jpg|png> + <case>.npy
    BEIT_SEG_IMAGE_CHECK_DIR=OUT_DIR cargo test --release --test image matches_cv2 -- --nocapture

Each `<case>.npy` is cv2.imdecode's uint8 H×W×3 BGR output; a case that cv2 refuses gets a
`<case>.refused` marker instead. The cases: Pillow and cv2 encodes in 4:2:0 / 4:2:2 / 4:4:4 /
4:1:1-like subsampling, progressive, optimised Huffman tables, restart intervals, greyscale,
CMYK (Adobe inverted), odd sizes from 1x1 up, many qualities, EXIF orientations 1-8, and every
JPEG under fixtures/pipeline-*/; PNGs: RGB, RGBA, LA, L, 4-bit palette, 1-bit, 16-bit, eXIf 1-8.  With `--tests DIR` it writes the small committed set that
tests/image.rs checks (tests/data/jpeg/).
"""
import argparse
import glob
import io
import os
import shutil

import cv2
import numpy as np
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smooth_image(rng, h, w):
    """A natural-looking RGB image: smooth gradients plus noise plus a few sharp edges."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    base = np.stack([
        128 + 100 * np.sin(x / max(w, 1) * 6.3 + c) * np.cos(y / max(h, 1) * 4.1 - c) for c in range(3)
    ], axis=-1)
    base += rng.normal(0, 18, size=(h, w, 3))
    base[(x.astype(int) // 7 + y.astype(int) // 5) % 3 == 0] += 60
    return np.clip(base, 0, 255).astype(np.uint8)


def exif_with_orientation(o):
    ex = Image.Exif()
    ex[0x0112] = o
    return ex.tobytes()


def pil_jpeg(rgb, **kw):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", **kw)
    return buf.getvalue()


def cases(rng):
    """Yields (name, encoded bytes)."""
    sizes = [(1, 1), (1, 7), (3, 5), (5, 3), (8, 8), (9, 9), (16, 16), (17, 33), (33, 17), (31, 47), (64, 48),
             (100, 75), (129, 131)]
    for h, w in sizes:
        rgb = smooth_image(rng, h, w)
        for sub, name in [(2, "420"), (1, "422"), (0, "444")]:
            for q in (75, 95):
                yield f"pil_{name}_q{q}_{h}x{w}", pil_jpeg(rgb, quality=q, subsampling=sub)
        yield f"pil_prog_420_{h}x{w}", pil_jpeg(rgb, quality=85, subsampling=2, progressive=True)
        yield f"pil_prog_444_{h}x{w}", pil_jpeg(rgb, quality=90, subsampling=0, progressive=True)
        yield f"pil_opt_420_{h}x{w}", pil_jpeg(rgb, quality=80, subsampling=2, optimize=True)
        bgr = rgb[..., ::-1].copy()
        for q in (50, 90):
            ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, q])
            assert ok
            yield f"cv2_q{q}_{h}x{w}", enc.tobytes()
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, 85, cv2.IMWRITE_JPEG_RST_INTERVAL, 2])
        assert ok
        yield f"cv2_rst2_{h}x{w}", enc.tobytes()
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_OPTIMIZE, 1])
        assert ok
        yield f"cv2_prog_{h}x{w}", enc.tobytes()
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_411])
        assert ok
        yield f"cv2_411_{h}x{w}", enc.tobytes()
        ok, enc = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_440])
        assert ok
        yield f"cv2_440_{h}x{w}", enc.tobytes()
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format="JPEG", quality=85)
        yield f"pil_grey_{h}x{w}", buf.getvalue()
        buf = io.BytesIO()
        Image.fromarray(grey).save(buf, format="JPEG", quality=85, progressive=True)
        yield f"pil_grey_prog_{h}x{w}", buf.getvalue()
        buf = io.BytesIO()
        Image.fromarray(rgb).convert("CMYK").save(buf, format="JPEG", quality=90)
        yield f"pil_cmyk_{h}x{w}", buf.getvalue()
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG")
        yield f"png_rgb_{h}x{w}", buf.getvalue()
    rgb = smooth_image(rng, 7, 11)
    for o in range(1, 9):
        yield f"pil_exif{o}_7x11", pil_jpeg(rgb, quality=90, exif=exif_with_orientation(o))
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format="PNG", exif=exif_with_orientation(o))
        yield f"png_exif{o}_7x11", buf.getvalue()
    rgb = smooth_image(rng, 13, 19)
    for mode in ("RGBA", "LA", "L", "P", "1"):
        buf = io.BytesIO()
        im = Image.fromarray(rgb)
        im = im.convert("RGBA").copy() if mode == "RGBA" else im.convert(mode)
        im.save(buf, format="PNG", **({"bits": 4} if mode == "P" else {}))
        yield f"png_{mode}_13x19", buf.getvalue()
    ok, enc = cv2.imencode(".png", (rgb[..., ::-1].astype(np.uint16) * 257 + 3))
    assert ok
    yield "png_16bit_13x19", enc.tobytes()
    rgb = smooth_image(rng, 240, 320)
    for q in (10, 30, 60, 98, 100):
        yield f"pil_420_q{q}_240x320", pil_jpeg(rgb, quality=q, subsampling=2)
    for path in sorted(glob.glob(os.path.join(ROOT, "fixtures", "pipeline-*", "**", "*"), recursive=True)):
        if os.path.isfile(path):
            with open(path, "rb") as f:
                data = f.read()
            if data[:3] == b"\xff\xd8\xff":
                rel = os.path.relpath(path, os.path.join(ROOT, "fixtures")).replace(os.sep, "_")
                yield "fixture_" + os.path.splitext(rel)[0], data


# The small set committed under tests/data/jpeg/ (a few KB).
TEST_SET = ["pil_420_q75_17x33", "pil_prog_420_9x9", "cv2_rst2_9x9", "pil_grey_3x5", "pil_cmyk_5x3",
            "pil_exif6_7x11", "png_exif8_7x11", "cv2_411_1x7", "pil_422_q95_3x5"]


def write_case(out, name, data):
    ext = "png" if data[:4] == b"\x89PNG" else "jpg"
    with open(os.path.join(out, f"{name}.{ext}"), "wb") as f:
        f.write(data)
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        open(os.path.join(out, f"{name}.refused"), "w").close()
    else:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, (name, img.shape)
        np.save(os.path.join(out, f"{name}.npy"), np.ascontiguousarray(img))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--tests", action="store_true", help="write only the small committed test set")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(20261201)
    n = 0
    for name, data in cases(rng):
        if args.tests and name not in TEST_SET:
            continue
        write_case(args.out, name, data)
        n += 1
    print(f"{n} cases written to {args.out} (cv2 {cv2.__version__})")


if __name__ == "__main__":
    main()
