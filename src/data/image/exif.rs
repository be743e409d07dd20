//! EXIF orientation, as OpenCV's `imdecode` applies it for `IMREAD_COLOR`: the orientation tag
//! of IFD0 (read with the `kamadak-exif` crate), then `ApplyExifOrientation`.

use ndarray::{Array3, Axis};

/// The orientation tag (0x0112) of IFD0 of a TIFF-structured EXIF block (the payload of a JPEG
/// `APP1 Exif` segment after `Exif\0\0`, or a PNG `eXIf` chunk), if it is 1..=8. Damage after
/// IFD0 (a broken IFD1 or sub-IFD) does not hide the tag.
pub fn exif_orientation(tiff: &[u8]) -> Option<u16> {
    let exif = match exif::Reader::new().continue_on_error(true).read_raw(tiff.to_vec()) {
        Ok(exif) => exif,
        Err(e) => e.distill_partial_result(|_| {}).ok()?,
    };
    let v = exif.get_field(exif::Tag::Orientation, exif::In::PRIMARY)?.value.get_uint(0)?;
    (1..=8).contains(&v).then_some(v as u16)
}

/// Applies an EXIF orientation (1..=8) as OpenCV's `ApplyExifOrientation`: 2 flips
/// horizontally, 3 rotates by 180°, 4 flips vertically, 5 transposes, 6 transposes + flips
/// horizontally (90° clockwise), 7 transposes + rotates by 180°, 8 transposes + flips
/// vertically (90° counter-clockwise).
pub fn apply_orientation(img: Array3<u8>, orientation: u16) -> Array3<u8> {
    let transpose = |a: Array3<u8>| a.permuted_axes([1, 0, 2]);
    let mut a = match orientation {
        5..=8 => transpose(img),
        _ => img,
    };
    match orientation {
        2 | 6 => a.invert_axis(Axis(1)),
        3 | 7 => {
            a.invert_axis(Axis(0));
            a.invert_axis(Axis(1));
        }
        4 | 8 => a.invert_axis(Axis(0)),
        _ => {}
    }
    a.as_standard_layout().into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orientation_matches_opencv_geometry() {
        // 2x3 image with distinct pixels.
        let img = Array3::from_shape_fn((2, 3, 3), |(y, x, c)| (y * 10 + x) as u8 + c as u8 * 100);
        let px = |a: &Array3<u8>, y: usize, x: usize| a[[y, x, 0]];
        let r6 = apply_orientation(img.clone(), 6); // 90° clockwise
        assert_eq!(r6.dim(), (3, 2, 3));
        assert_eq!(px(&r6, 0, 0), 10); // bottom-left goes to top-left
        assert_eq!(px(&r6, 0, 1), 0);
        let r8 = apply_orientation(img.clone(), 8); // 90° counter-clockwise
        assert_eq!(px(&r8, 0, 0), 2);
        let r3 = apply_orientation(img.clone(), 3);
        assert_eq!(px(&r3, 0, 0), 12);
        let r1 = apply_orientation(img.clone(), 1);
        assert_eq!(r1, img);
    }

    #[test]
    fn exif_orientation_parses_both_byte_orders() {
        let le = [b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0];
        assert_eq!(exif_orientation(&le), Some(6));
        let be = [b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 3, 0, 0, 0, 0, 0, 0];
        assert_eq!(exif_orientation(&be), Some(3));
        // Out of range (9) and garbage give no orientation.
        let nine = [b'M', b'M', 0, 42, 0, 0, 0, 8, 0, 1, 0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, 9, 0, 0, 0, 0, 0, 0];
        assert_eq!(exif_orientation(&nine), None);
        assert_eq!(exif_orientation(b"garbage"), None);
    }

    #[test]
    fn a_broken_ifd1_keeps_the_orientation() {
        // IFD0 with the tag, then a next-IFD offset far past the end.
        let le = [b'I', b'I', 42, 0, 8, 0, 0, 0, 1, 0, 0x12, 0x01, 3, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0xF0, 0xFF, 0, 0];
        assert_eq!(exif_orientation(&le), Some(8));
    }
}
