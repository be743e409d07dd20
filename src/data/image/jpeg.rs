//! JPEG decoding bit-identical to `cv2.imdecode(buf, cv2.IMREAD_COLOR)` (OpenCV 4.11, whose
//! decoder is libjpeg-turbo): the libjpeg-turbo derivative that the `mozjpeg-sys` crate builds
//! from its vendored C sources (no system library, no SIMD), driven by `jpeg_shim.c` with
//! OpenCV's settings: accurate integer IDCT (`JDCT_ISLOW`), fancy upsampling, output BGR
//! (greyscale replicated to 3 channels by the library), CMYK for 4-component images (CMYK, or
//! YCCK converted by the library), then OpenCV's `icvCvt_CMYK2BGR_8u_C4C3R`.
//! Both decoders implement the same integer algorithms, so the pixels are the same with or
//! without SIMD (checked against cv2 by `scripts/check_jpeg.py`).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::path::Path;

use ndarray::Array3;

use super::{decode_err, ImageError};

// Keeps mozjpeg-sys (the static libjpeg that jpeg_shim.c calls) linked into the crate.
use mozjpeg_sys as _;

/// The JPEG decoder of this build.
pub fn jpeg_decoder_name() -> &'static str {
    "libjpeg-turbo (mozjpeg-sys, built from source; accurate integer IDCT, fancy upsampling)"
}

/// Whether JPEG decoding is bit-identical to `cv2.imdecode` (libjpeg-turbo): always, in this build.
pub fn jpeg_decoder_is_exact() -> bool {
    true
}

/// The warning to print when JPEG decoding is not exact: `None`, since it always is.
pub fn jpeg_decoder_warning() -> Option<String> {
    None
}

/// OpenCV's largest accepted image (`CV_IO_MAX_IMAGE_PIXELS`, `validateInputImageSize`).
pub const MAX_PIXELS: usize = 1 << 30;
/// OpenCV's largest accepted width and height (`CV_IO_MAX_IMAGE_WIDTH` / `_HEIGHT`).
pub const MAX_SIDE: usize = 1 << 20;

/// Mirrors `struct beit_jpeg_sink` of jpeg_shim.c.
#[repr(C)]
struct Sink {
    ctx: *mut c_void,
    alloc: extern "C" fn(*mut c_void, c_uint, c_uint, c_int) -> *mut u8,
    exif: extern "C" fn(*mut c_void, *const u8, usize),
    message: [c_char; 200],
}

/// What the C side hands back: the pixel buffer, its shape, the EXIF payload.
struct Out {
    max_pixels: usize,
    pixels: Vec<u8>,
    shape: (usize, usize, usize),
    exif: Option<Vec<u8>>,
}

extern "C" {
    fn beit_jpeg_decode(data: *const u8, len: usize, sink: *mut Sink) -> c_int;
}

extern "C" fn alloc_cb(ctx: *mut c_void, w: c_uint, h: c_uint, channels: c_int) -> *mut u8 {
    // SAFETY: ctx is the `Out` that `decode_jpeg` passes, alive and exclusively ours for the call.
    let out = unsafe { &mut *(ctx as *mut Out) };
    let (w, h, c) = (w as usize, h as usize, channels.max(0) as usize);
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE || w * h > out.max_pixels {
        return std::ptr::null_mut();
    }
    let mut v = Vec::new();
    if v.try_reserve_exact(w * h * c).is_err() {
        return std::ptr::null_mut();
    }
    v.resize(w * h * c, 0);
    out.pixels = v;
    out.shape = (h, w, c);
    out.pixels.as_mut_ptr()
}

extern "C" fn exif_cb(ctx: *mut c_void, data: *const u8, len: usize) {
    // SAFETY: as in alloc_cb; `data` points to `len` bytes of a marker that libjpeg keeps alive
    // for the duration of this call.
    let out = unsafe { &mut *(ctx as *mut Out) };
    out.exif = Some(unsafe { std::slice::from_raw_parts(data, len) }.to_vec());
}

/// Decodes a JPEG to BGR (H×W×3) as `cv2.imdecode(IMREAD_COLOR)` before EXIF orientation;
/// also returns the TIFF payload of its first `APP1 Exif` segment. Images above `max_pixels`
/// are refused before their pixels are allocated. `path` only names the source in errors.
pub(super) fn decode_jpeg(
    bytes: &[u8],
    path: &Path,
    max_pixels: usize,
) -> Result<(Array3<u8>, Option<Vec<u8>>), ImageError> {
    let mut out = Out { max_pixels, pixels: Vec::new(), shape: (0, 0, 0), exif: None };
    let mut sink = Sink { ctx: std::ptr::null_mut(), alloc: alloc_cb, exif: exif_cb, message: [0; 200] };
    sink.ctx = &mut out as *mut Out as *mut c_void;
    // SAFETY: `bytes` outlives the call; the shim writes only into buffers handed out by the
    // callbacks (sized for the whole image) and into `sink.message` (200 bytes, NUL-terminated);
    // its errors longjmp only within C frames.
    let rc = unsafe { beit_jpeg_decode(bytes.as_ptr(), bytes.len(), &mut sink) };
    if rc != 0 {
        // SAFETY: the shim always leaves a NUL-terminated message within the 200 bytes.
        let msg = unsafe { CStr::from_ptr(sink.message.as_ptr()) }.to_string_lossy().into_owned();
        return Err(decode_err(path, format!("invalid JPEG: {msg}")));
    }
    let (h, w, c) = out.shape;
    let bgr = if c == 4 { cmyk_to_bgr(&out.pixels) } else { out.pixels };
    let img = Array3::from_shape_vec((h, w, 3), bgr).map_err(|e| decode_err(path, e))?;
    Ok((img, out.exif))
}

/// OpenCV's CMYK (as stored by Adobe, inverted) → BGR conversion, `icvCvt_CMYK2BGR_8u_C4C3R`:
/// `B = K - ((255 - Y) * K >> 8)`, likewise G from M and R from C.
fn cmyk_to_bgr(cmyk: &[u8]) -> Vec<u8> {
    let conv = |v: u8, k: i32| (k - (((255 - v as i32) * k) >> 8)) as u8;
    let mut bgr = Vec::with_capacity(cmyk.len() / 4 * 3);
    for p in cmyk.chunks_exact(4) {
        let k = p[3] as i32;
        bgr.extend_from_slice(&[conv(p[2], k), conv(p[1], k), conv(p[0], k)]);
    }
    bgr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_is_opencvs() {
        // k = 0 is black; k = 255 with c = m = y = 0 gives 255 - (255 * 255 >> 8) = 1 (OpenCV's
        // formula, not 255); (c, m, y, k) = (200, 100, 50, 128): B = 128 - (205 * 128 >> 8) = 26,
        // G = 128 - (155 * 128 >> 8) = 51, R = 128 - (55 * 128 >> 8) = 101.
        let bgr = cmyk_to_bgr(&[10, 128, 255, 0, 0, 0, 0, 255, 200, 100, 50, 128]);
        assert_eq!(bgr, [0, 0, 0, 1, 1, 1, 26, 51, 101]);
    }
}
