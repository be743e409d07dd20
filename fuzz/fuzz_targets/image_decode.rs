//! Feeds arbitrary bytes to the image decoders: as a colour image (JPEG through the vendored
//! libjpeg, PNG, EXIF orientation) and as a label map. Every outcome but a panic, an abort, a
//! hang or an out-of-memory abort is fine: malformed input must come back as an `ImageError`.
//! JPEGs above 1 Mpixel are refused before decoding, to keep each run small.

#![no_main]

use std::path::Path;

use beit_seg::data::image::{decode_bgr_limited, decode_label};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-input");
    if let Ok(img) = decode_bgr_limited(data, path, 1 << 20) {
        assert_eq!(img.dim().2, 3);
        assert!(!img.is_empty());
    }
    let _ = decode_label(data, path);
});
