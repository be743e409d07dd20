//! Index geometry both backends use: BEiT's `relative_position_index` (and the check of a stored
//! one against it) and the window grid of `EncoderDecoder.slide_inference`.

use ndarray::{Array2, ArrayD};

/// `BEiT._init_rel_pos_embedding`'s `relative_position_index` for a `(wh, ww)` window:
/// shape (wh·ww+1)², with `T = (2wh-1)(2ww-1)+3` table rows;
/// `index[1+p, 1+q] = (hp-hq+wh-1)(2ww-1) + (wp-wq+ww-1)` for patch tokens p, q (row-major grid),
/// row 0 = T-3 (cls → patch), column 0 = T-2 (patch → cls), `[0,0]` = T-1 (cls → cls).
pub fn relative_position_index(window: (usize, usize)) -> Array2<usize> {
    let (wh, ww) = window;
    let n = wh * ww;
    let t = (2 * wh - 1) * (2 * ww - 1) + 3;
    let mut idx = Array2::<usize>::zeros((n + 1, n + 1));
    for p in 0..n {
        let (hp, wp) = (p / ww, p % ww);
        for q in 0..n {
            let (hq, wq) = (q / ww, q % ww);
            idx[[1 + p, 1 + q]] = (hp + wh - 1 - hq) * (2 * ww - 1) + (wp + ww - 1 - wq);
        }
    }
    idx.row_mut(0).fill(t - 3);
    idx.column_mut(0).fill(t - 2);
    idx[[0, 0]] = t - 1;
    idx
}

/// Compares a `relative_position_index` buffer found in a state dict (`key`) with the one the
/// configured window gives; `Some(problem)` names the first disagreement.
pub fn check_relative_position_index(key: &str, stored: &ArrayD<i64>, computed: &Array2<usize>) -> Option<String> {
    if stored.shape() != computed.shape() {
        return Some(format!(
            "`{key}` has shape {:?}, but the configured window gives {:?} (img_size // patch_size does not match the checkpoint)",
            stored.shape(),
            computed.shape()
        ));
    }
    let n = computed.ncols();
    stored
        .iter()
        .zip(computed.iter())
        .enumerate()
        .find(|(_, (s, c))| **s != **c as i64)
        .map(|(pos, (s, c))| format!("`{key}`[{}, {}] is {s}, the computed index is {c}", pos / n, pos % n))
}

/// One window of slide inference: rows `y1..y2`, columns `x1..x2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub y1: usize,
    pub y2: usize,
    pub x1: usize,
    pub x2: usize,
}

/// Whether `windows` is one window covering the whole `h`×`w` image. `slide_inference` then
/// returns that window's logits as they are: MMSegmentation's `0 + logits` and `/ 1` change no
/// value (a -0.0 becomes +0.0, equal in every comparison), so both backends skip the sum and
/// the division (two passes over the classes x H x W logits).
pub fn is_one_whole_window(windows: &[Window], (h, w): (usize, usize)) -> bool {
    matches!(windows, [only] if *only == Window { y1: 0, y2: h, x1: 0, x2: w })
}

/// The windows of `EncoderDecoder.slide_inference` on an `h`×`w` image in row-major order:
/// `h_grids = max(h - crop_h + stride_h - 1, 0) // stride_h + 1` (same for w), window `(i, j)`
/// ends at `min(i·stride + crop, size)` and starts `crop` before that (clamped at 0), so the
/// last window is shifted back to end at the border.
pub fn slide_windows(hw: (usize, usize), crop: (usize, usize), stride: (usize, usize)) -> Vec<Window> {
    let ((h, w), (hc, wc), (hs, ws)) = (hw, crop, stride);
    let h_grids = (h + hs).saturating_sub(hc + 1) / hs + 1;
    let w_grids = (w + ws).saturating_sub(wc + 1) / ws + 1;
    let mut out = Vec::with_capacity(h_grids * w_grids);
    for hi in 0..h_grids {
        for wi in 0..w_grids {
            let y2 = (hi * hs + hc).min(h);
            let x2 = (wi * ws + wc).min(w);
            out.push(Window { y1: y2.saturating_sub(hc), y2, x1: x2.saturating_sub(wc), x2 });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ade_slide_grid_of_640x854() {
        // 640x854 with crop 640 / stride 426: one row, two columns, the last shifted back.
        let w = slide_windows((640, 854), (640, 640), (426, 426));
        assert_eq!(w, vec![Window { y1: 0, y2: 640, x1: 0, x2: 640 }, Window { y1: 0, y2: 640, x1: 214, x2: 854 }]);
        // An image smaller than the crop is one clamped window.
        assert_eq!(slide_windows((5, 7), (8, 8), (4, 4)), vec![Window { y1: 0, y2: 5, x1: 0, x2: 7 }]);
    }

    #[test]
    fn one_whole_window_is_recognised_and_nothing_else() {
        assert!(is_one_whole_window(&slide_windows((640, 640), (640, 640), (426, 426)), (640, 640)));
        assert!(is_one_whole_window(&slide_windows((5, 7), (8, 8), (4, 4)), (5, 7)));
        assert!(!is_one_whole_window(&slide_windows((640, 854), (640, 640), (426, 426)), (640, 854)));
        assert!(!is_one_whole_window(&[Window { y1: 0, y2: 4, x1: 0, x2: 4 }], (5, 4)));
    }

    #[test]
    fn index_of_a_2x2_window() {
        let idx = relative_position_index((2, 2));
        // T = 3*3+3 = 12: row 0 = 9, column 0 = 10, [0,0] = 11.
        let expected = [[11, 9, 9, 9, 9], [10, 4, 3, 1, 0], [10, 5, 4, 2, 1], [10, 7, 6, 4, 3], [10, 8, 7, 5, 4]];
        for (i, row) in expected.iter().enumerate() {
            for (j, &v) in row.iter().enumerate() {
                assert_eq!(idx[[i, j]], v, "[{i}, {j}]");
            }
        }
        let stored = idx.mapv(|v| v as i64).into_dyn();
        assert_eq!(check_relative_position_index("k", &stored, &idx), None);
        let mut bad = stored.clone();
        bad[[1, 2]] = 0;
        assert!(check_relative_position_index("k", &bad, &idx).unwrap().contains("`k`[1, 2] is 0"));
    }
}
