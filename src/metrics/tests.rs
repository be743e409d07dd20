//! Unit tests of the metric.

use super::*;
use ndarray::arr2;

#[test]
fn reduce_zero_label_on_uint8() {
    let l = arr2(&[[0u8, 1, 150], [254, 255, 2]]);
    assert_eq!(reduce_zero_label(l.view()), arr2(&[[255u8, 0, 149], [253, 255, 1]]));
}

#[test]
fn histc_ignores_out_of_range_predictions() {
    let pred = arr2(&[[0i64, 3, -1, 255]]);
    let label = arr2(&[[0u8, 1, 1, 255]]);
    let a = intersect_and_union(pred.view(), label.view(), 3, 255).unwrap();
    assert_eq!(a.intersect, vec![1.0, 0.0, 0.0]);
    assert_eq!(a.pred_label, vec![1.0, 0.0, 0.0]);
    assert_eq!(a.label, vec![1.0, 2.0, 0.0]);
    assert_eq!(a.union, vec![1.0, 2.0, 0.0]);
}

#[test]
fn table_matches_prettytable_layout() {
    let t = per_class_table(
        &["wall", "bed ", "chest of drawers", "a"],
        &[0.5, f32::NAN, 1.0, 0.123456],
        &[0.0, f32::NAN, 0.33333, 0.01],
    );
    let expected = "\
+------------------+-------+-------+
|      Class       |  IoU  |  Acc  |
+------------------+-------+-------+
|       wall       |  50.0 |  0.0  |
|       bed        |  nan  |  nan  |
| chest of drawers | 100.0 | 33.33 |
|        a         | 12.35 |  1.0  |
+------------------+-------+-------+";
    assert_eq!(t, expected);
}
