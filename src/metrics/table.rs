//! The per-class table MMSegmentation logs (`prettytable`, numpy's float32 `str`).

use super::sums::class_percent;

/// numpy's `str()` of a float32 scalar in the range the table holds (shortest round-trip
/// digits, at least one decimal: `50.0`, `33.33`, `nan`).
fn np_str_f32(x: f32) -> String {
    if x.is_nan() {
        return "nan".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".into() } else { "-inf".into() };
    }
    let s = format!("{x}");
    if s.contains('.') || s.contains('e') {
        s
    } else {
        format!("{s}.0")
    }
}

/// PrettyTable's centring: odd excess goes right for odd-length text, left otherwise.
fn center(text: &str, width: usize) -> String {
    let len = text.chars().count();
    let excess = width.saturating_sub(len);
    let (l, r) = if excess % 2 == 1 {
        if len % 2 == 1 {
            (excess / 2, excess / 2 + 1)
        } else {
            (excess / 2 + 1, excess / 2)
        }
    } else {
        (excess / 2, excess / 2)
    };
    format!("{}{text}{}", " ".repeat(l), " ".repeat(r))
}

/// The per-class table `IoUMetric.compute_metrics` logs (`PrettyTable` with columns `Class`,
/// `IoU`, `Acc`, values `np.round(v * 100, 2)` of the float32 fractions, centred), e.g.
///
/// ```text
/// +-------+-------+-------+
/// | Class |  IoU  |  Acc  |
/// +-------+-------+-------+
/// |  wall | 74.16 | 87.28 |
/// ```
///
/// `class_names` shorter than the class count are completed with the class index.
pub fn per_class_table(class_names: &[&str], iou: &[f32], acc: &[f32]) -> String {
    let n = iou.len().max(acc.len());
    let names: Vec<String> =
        (0..n).map(|i| class_names.get(i).map_or_else(|| i.to_string(), |s| s.to_string())).collect();
    let col = |v: &[f32]| {
        (0..n).map(|i| np_str_f32(class_percent(v.get(i).copied().unwrap_or(f32::NAN)))).collect::<Vec<_>>()
    };
    let columns = [("Class", names), ("IoU", col(iou)), ("Acc", col(acc))];
    let widths: Vec<usize> = columns
        .iter()
        .map(|(h, vals)| vals.iter().map(|v| v.chars().count()).chain([h.len()]).max().unwrap_or(0))
        .collect();
    let rule = {
        let mut s = String::from("+");
        for w in &widths {
            s.push_str(&"-".repeat(w + 2));
            s.push('+');
        }
        s
    };
    let line = |cells: Vec<&str>| {
        let mut s = String::from("|");
        for (c, w) in cells.iter().zip(&widths) {
            s.push(' ');
            s.push_str(&center(c, *w));
            s.push_str(" |");
        }
        s
    };
    let mut out = vec![rule.clone(), line(columns.iter().map(|(h, _)| *h).collect()), rule.clone()];
    for i in 0..n {
        out.push(line(columns.iter().map(|(_, v)| v[i].as_str()).collect()));
    }
    out.push(rule);
    out.join("\n")
}
