//! Image decoding against OpenCV: every image of a directory of `<case>.<jpg|png>` +
//! `<case>.npy` pairs (the `npy` is `cv2.imdecode(buf, cv2.IMREAD_COLOR)`'s output, written by
//! `scripts/check_jpeg.py`) must decode bit-identically; and malformed files must give an
//! error naming the file, never a panic.
//!
//! The committed set is `tests/data/jpeg/` (a few KB); the full check (hundreds of images:
//! subsamplings, progressive, restart intervals, grey, CMYK, EXIF 1-8, odd sizes, the pipeline
//! fixtures' JPEGs) runs with `BEIT_SEG_IMAGE_CHECK_DIR=DIR` after
//! `$V/bin/python scripts/check_jpeg.py DIR`.

use std::path::{Path, PathBuf};

use beit_seg::array::{read_npy, AnyArray};
use beit_seg::data::image::{self, decode_bgr, decode_label, read_bgr};
use ndarray::{Array2, Array3};

fn test_data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/jpeg").join(name)
}

/// Decodes every image of `dir` and compares it with cv2's output; returns
/// (identical, refused by both) counts and panics with the list of mismatches.
fn compare_dir(dir: &Path) -> (usize, usize) {
    let mut images: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("jpg" | "png")))
        .collect();
    images.sort();
    let (mut same, mut refused, mut bad) = (0, 0, Vec::new());
    for img_path in &images {
        let ours = read_bgr(img_path);
        if img_path.with_extension("refused").exists() {
            match ours {
                Err(_) => refused += 1,
                Ok(a) => bad.push(format!("{}: cv2 refuses it, we decode {:?}", img_path.display(), a.dim())),
            }
            continue;
        }
        let want = match read_npy(&img_path.with_extension("npy")).unwrap() {
            AnyArray::U8(a) => a.into_dimensionality::<ndarray::Ix3>().unwrap(),
            other => panic!("{}: dtype {}", img_path.display(), other.dtype_name()),
        };
        match ours {
            Err(e) => bad.push(format!("{e}")),
            Ok(a) if a.dim() != want.dim() => {
                bad.push(format!("{}: shape {:?}, cv2 {:?}", img_path.display(), a.dim(), want.dim()))
            }
            Ok(a) if a != want => {
                let diff = a.iter().zip(want.iter()).filter(|(x, y)| x != y).count();
                let max = a.iter().zip(want.iter()).map(|(&x, &y)| (x as i32 - y as i32).abs()).max().unwrap_or(0);
                bad.push(format!("{}: {diff} of {} values differ (max {max})", img_path.display(), a.len()));
            }
            Ok(_) => same += 1,
        }
    }
    println!("{}: {} images, {same} bit-identical to cv2, {refused} refused by both", dir.display(), images.len());
    assert!(bad.is_empty(), "{} of {} images differ from cv2:\n{}", bad.len(), images.len(), bad.join("\n"));
    (same, refused)
}

#[test]
fn decodes_the_committed_images_like_cv2() {
    assert!(image::jpeg_decoder_is_exact());
    assert!(image::jpeg_decoder_warning().is_none());
    let (same, _) = compare_dir(&test_data(""));
    assert_eq!(same, 9, "tests/data/jpeg has 9 cases");
}

/// The full check: `BEIT_SEG_IMAGE_CHECK_DIR=DIR cargo test --release --test image
/// matches_cv2 -- --nocapture` after `scripts/check_jpeg.py DIR`; a no-op without it.
#[test]
fn matches_cv2_on_a_generated_directory() {
    if let Some(dir) = std::env::var_os("BEIT_SEG_IMAGE_CHECK_DIR") {
        let (same, _) = compare_dir(Path::new(&dir));
        assert!(same > 0);
    }
}

#[test]
fn exif_orientation_is_applied() {
    // 7x11 stored, orientation 6 (90° clockwise): cv2 gives 11x7.
    let img = read_bgr(&test_data("pil_exif6_7x11.jpg")).unwrap();
    assert_eq!(img.dim(), (11, 7, 3));
    let png = read_bgr(&test_data("png_exif8_7x11.png")).unwrap();
    assert_eq!(png.dim(), (11, 7, 3));
}

fn jpeg_bytes() -> Vec<u8> {
    std::fs::read(test_data("pil_420_q75_17x33.jpg")).unwrap()
}

fn assert_decode_error(bytes: &[u8], name: &str, needle: &str) {
    let e = decode_bgr(bytes, Path::new(name)).unwrap_err().to_string();
    assert!(e.contains(name), "{e}");
    assert_eq!(e.matches(name).count(), 1, "names the file once: {e}");
    assert!(e.to_lowercase().contains(&needle.to_lowercase()), "{e}");
}

#[test]
fn truncated_jpeg_is_an_error() {
    let b = jpeg_bytes();
    for cut in [b.len() - 2, b.len() / 2, b.len() * 3 / 4, 200, 20, 3] {
        let e = decode_bgr(&b[..cut], Path::new("cut.jpg")).unwrap_err().to_string();
        assert!(e.starts_with("cut.jpg: cannot decode image: invalid JPEG:"), "cut at {cut}: {e}");
    }
    assert_decode_error(&b[..b.len() / 2], "half.jpg", "premature end");
}

/// The offset of the first marker `m` (0xFF, m) after SOI.
fn marker_at(b: &[u8], m: u8) -> usize {
    (2..b.len() - 1).find(|&i| b[i] == 0xFF && b[i + 1] == m).unwrap()
}

#[test]
fn corrupt_markers_are_errors() {
    let b = jpeg_bytes();
    // SOF0 (baseline frame header) turned into SOF15 (lossless arithmetic, unsupported).
    let mut c = b.clone();
    c[marker_at(&b, 0xC0) + 1] = 0xCF;
    assert_decode_error(&c, "sof.jpg", "unsupported");
    // A zero segment length in the quantisation table marker.
    let mut c = b.clone();
    let i = marker_at(&b, 0xDB);
    c[i + 2] = 0;
    c[i + 3] = 0;
    assert!(decode_bgr(&c, Path::new("dqt.jpg")).unwrap_err().to_string().starts_with("dqt.jpg: "));
    // Zero width in the frame header.
    let mut c = b.clone();
    let i = marker_at(&b, 0xC0);
    c[i + 7] = 0;
    c[i + 8] = 0;
    assert_decode_error(&c, "w0.jpg", "invalid JPEG");
    // Entropy-coded data broken by stray markers (libjpeg would fill the rest with grey).
    let mut c = b.clone();
    let sos = marker_at(&b, 0xDA);
    for k in (sos + 20..c.len() - 10).step_by(7) {
        c[k] = 0xFF;
        c[k + 1] = 0xC8;
    }
    assert!(decode_bgr(&c, Path::new("scan.jpg")).unwrap_err().to_string().starts_with("scan.jpg: "));
}

#[test]
fn empty_and_unknown_files_are_errors() {
    assert_decode_error(b"", "empty.jpg", "empty");
    let e = decode_label(b"", Path::new("empty.png")).unwrap_err().to_string();
    assert!(e.starts_with("empty.png: ") && e.contains("empty"), "{e}");
    assert_decode_error(b"GIF89a", "x.gif", "unknown signature");
    assert_decode_error(&[0xFF, 0xD8, 0xFF], "soi.jpg", "invalid JPEG");
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("zero.jpg");
    std::fs::write(&p, b"").unwrap();
    let e = read_bgr(&p).unwrap_err().to_string();
    assert!(e.contains("zero.jpg") && e.contains("empty"), "{e}");
    let e = read_bgr(&dir.path().join("missing.jpg")).unwrap_err().to_string();
    assert!(e.contains("missing.jpg: cannot read"), "{e}");
}

fn png_bytes(w: u32, h: u32, color: png::ColorType, depth: png::BitDepth, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(color);
    enc.set_depth(depth);
    let mut wr = enc.write_header().unwrap();
    wr.write_image_data(data).unwrap();
    wr.finish().unwrap();
    out
}

#[test]
fn png_with_a_bad_crc_is_an_error() {
    let mut b = png_bytes(4, 3, png::ColorType::Rgb, png::BitDepth::Eight, &[7u8; 36]);
    // IHDR's CRC: bytes 29..33 (8 signature + 4 length + 4 type + 13 data).
    b[30] ^= 0x55;
    assert_decode_error(&b, "crc.png", "crc");
    let e = decode_label(&b, Path::new("crc.png")).unwrap_err().to_string();
    assert!(e.starts_with("crc.png: ") && e.to_lowercase().contains("crc"), "{e}");
    // A truncated PNG.
    let b = png_bytes(4, 3, png::ColorType::Rgb, png::BitDepth::Eight, &[7u8; 36]);
    assert!(decode_bgr(&b[..b.len() - 20], Path::new("cut.png")).unwrap_err().to_string().starts_with("cut.png: "));
}

#[test]
fn sixteen_bit_label_png_is_refused() {
    let b = png_bytes(3, 2, png::ColorType::Grayscale, png::BitDepth::Sixteen, &[0, 1, 0, 2, 1, 0, 0, 3, 0, 4, 0, 5]);
    let e = decode_label(&b, Path::new("l16.png")).unwrap_err().to_string();
    assert!(e.starts_with("l16.png: not a usable label map:") && e.contains("16 bits"), "{e}");
    // As a colour image it is decoded as OpenCV does: the high byte, replicated.
    let img = decode_bgr(&b, Path::new("l16.png")).unwrap();
    assert_eq!(img, Array3::from_shape_fn((2, 3, 3), |(y, x, _)| [[0u8, 0, 1], [0, 0, 0]][y][x]));
    // A JPEG is no label map either.
    let e = decode_label(&jpeg_bytes(), Path::new("l.jpg")).unwrap_err().to_string();
    assert!(e.starts_with("l.jpg: not a usable label map:"), "{e}");
    // An 8-bit grey label map is read as stored.
    let b = png_bytes(3, 1, png::ColorType::Grayscale, png::BitDepth::Eight, &[0, 255, 17]);
    assert_eq!(
        decode_label(&b, Path::new("l8.png")).unwrap(),
        Array2::from_shape_vec((1, 3), vec![0, 255, 17]).unwrap()
    );
}

#[test]
fn oversized_jpegs_are_refused_before_decoding() {
    let e = image::decode_bgr_limited(&jpeg_bytes(), Path::new("big.jpg"), 100).unwrap_err().to_string();
    assert!(e.contains("big.jpg") && e.contains("too large"), "{e}");
}

#[test]
fn a_huge_progressive_header_is_refused_before_allocating() {
    // A 9x9 progressive JPEG whose frame header claims 60000x60000 (3.6e9 pixels, above OpenCV's
    // 2^30): refused before libjpeg allocates the whole-image coefficient buffer (~20 GB).
    let mut b = std::fs::read(test_data("pil_prog_420_9x9.jpg")).unwrap();
    let i = marker_at(&b, 0xC2);
    b[i + 5..i + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    assert_decode_error(&b, "huge.jpg", "60000x60000 pixels is too large");
}

/// Found by the fuzz target: a PNG whose header claims 1035 x 9175047 pixels made the decoder
/// allocate the whole 28 GB frame before reading any data (out-of-memory abort). Its CRCs are
/// recomputed here: the fuzz build of the `png` crate does not check them.
#[test]
fn fuzz_regression_png_with_a_huge_height() {
    let b = std::fs::read(test_data("fuzz-png-huge-height.bin")).unwrap();
    let e = decode_bgr(&b, Path::new("huge.png")).unwrap_err().to_string();
    assert!(e.starts_with("huge.png: cannot decode image:") && e.contains("too large"), "{e}");
    let e = decode_label(&b, Path::new("huge.png")).unwrap_err().to_string();
    assert!(e.starts_with("huge.png: "), "{e}");
}
