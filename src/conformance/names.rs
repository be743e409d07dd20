//! Name maps (`verify --candidate DIR --names MAP`): from the names another implementation gives
//! its tensors (HF transformers: `beit.encoder.layer.3.output`, timm: `blocks.3`) to fixture
//! names (`backbone.layers.3`), with optional layout transforms (NHWC → NCHW, dropping the class
//! token, tokens → NCHW). The JSON format (`beit-seg-names/1`) is documented in
//! docs/fixture-format.md; `hf` and `timm` are built in (src/conformance/names/*.json).

use std::collections::BTreeMap;
use std::path::Path;

use ndarray::{ArrayD, Axis, IxDyn};
use serde::Deserialize;

use crate::array::AnyArray;

/// The format tag of a name map.
pub const NAMES_FORMAT: &str = "beit-seg-names/1";

/// Errors of reading or applying a name map.
#[derive(Debug, thiserror::Error)]
pub enum NamesError {
    /// A map that cannot be read or parsed.
    #[error("name map {src}: {msg}")]
    Map {
        /// Where the map came from (a path, or `built-in hf`).
        src: String,
        /// What is wrong with it.
        msg: String,
    },
    /// A transform that does not fit the tensor.
    #[error("candidate tensor `{name}` (→ `{fixture}`): transform {op}: {msg}")]
    Transform {
        /// The candidate's name of the tensor.
        name: String,
        /// The fixture name it maps to.
        fixture: String,
        /// The transform (`permute`, `tokens_to_nchw`, ...).
        op: String,
        /// Why it does not apply.
        msg: String,
    },
    /// Two candidate tensors for one fixture name.
    #[error("candidate tensors `{a}` and `{b}` both map to `{fixture}`")]
    Collision {
        /// The first candidate name.
        a: String,
        /// The second candidate name.
        b: String,
        /// The fixture name both map to.
        fixture: String,
    },
}

/// One layout transform.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Transform {
    /// `x.permute(axes)`.
    Permute {
        /// The new order of the axes.
        axes: Vec<usize>,
    },
    /// `x.permute(0, 3, 1, 2)`.
    NhwcToNchw,
    /// `x[:, 1:]`: drops the class token of B × (N+1) × C tokens.
    DropCls,
    /// B × N × C tokens → B × C × H × W, (H, W) the expected tensor's last two dims.
    TokensToNchw,
    /// `x.reshape(shape)` (one -1 allowed).
    Reshape {
        /// The new shape.
        shape: Vec<i64>,
    },
    /// `x.squeeze(axis)` (the axis must have size 1).
    Squeeze {
        /// The axis removed.
        axis: usize,
    },
    /// `x.unsqueeze(axis)`.
    Unsqueeze {
        /// Where the new axis of size 1 goes.
        axis: usize,
    },
    /// `x * factor`.
    Scale {
        /// The factor.
        factor: f64,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleJson {
    candidate: String,
    fixture: Option<String>,
    #[serde(default)]
    transform: Vec<Transform>,
    #[serde(default)]
    note: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MapJson {
    format: String,
    #[serde(default)]
    description: String,
    rules: Vec<RuleJson>,
}

/// A piece of a name pattern: literal text, an integer variable with an offset (`{i+1}`), or a
/// string variable (`{*rest}`) that stands for one or more whole dotted segments.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Lit(String),
    Var { name: String, offset: i64 },
    Str { name: String },
}

/// What a variable is bound to.
#[derive(Debug, Clone, PartialEq)]
enum Bound {
    Int(i64),
    Str(String),
}

fn parse_pattern(p: &str) -> Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = p;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            out.push(Piece::Lit(rest[..open].to_string()));
        }
        let close = rest[open..].find('}').ok_or_else(|| format!("pattern `{p}`: unclosed `{{`"))? + open;
        let inner = &rest[open + 1..close];
        if matches!(out.last(), Some(Piece::Var { .. } | Piece::Str { .. })) {
            return Err(format!("pattern `{p}`: two variables without text between them"));
        }
        if let Some(name) = inner.strip_prefix('*') {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("pattern `{p}`: bad string variable `{{{inner}}}`"));
            }
            out.push(Piece::Str { name: name.to_string() });
            rest = &rest[close + 1..];
            continue;
        }
        let (name, offset) = match inner.find(['+', '-']) {
            Some(i) => {
                let n: i64 =
                    inner[i + 1..].parse().map_err(|_| format!("pattern `{p}`: bad offset in `{{{inner}}}`"))?;
                (&inner[..i], if &inner[i..i + 1] == "-" { -n } else { n })
            }
            None => (inner, 0),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("pattern `{p}`: bad variable `{{{inner}}}`"));
        }
        out.push(Piece::Var { name: name.to_string(), offset });
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Lit(rest.to_string()));
    }
    let mut kinds: BTreeMap<&str, bool> = BTreeMap::new();
    for piece in &out {
        let (name, is_str) = match piece {
            Piece::Var { name, .. } => (name.as_str(), false),
            Piece::Str { name } => (name.as_str(), true),
            Piece::Lit(_) => continue,
        };
        if kinds.insert(name, is_str).is_some_and(|k| k != is_str) {
            return Err(format!("pattern `{p}`: `{name}` is used both as an integer and as a string variable"));
        }
    }
    Ok(out)
}

/// Matches `name` against `pat`; binds each integer variable `v` of a piece `{v+N}` to `m - N`
/// and each string variable `{*s}` to the run of whole segments it covers (longest first): it
/// starts at the beginning of the name or after a `.`, is not empty, holds no `@` and does not
/// start or end with `.`, and ends at the end of the name or before `.` / `@`. As the last piece
/// of a pattern it takes the rest of the name, an `@...` suffix included (the same rule as the
/// capture helper's, python/beit_seg_capture.py).
fn match_pattern(pat: &[Piece], name: &str) -> Option<BTreeMap<String, Bound>> {
    fn bind(
        vars: &mut BTreeMap<String, Bound>,
        name: &str,
        v: Bound,
        rest: impl FnOnce(&mut BTreeMap<String, Bound>) -> bool,
    ) -> bool {
        if let Some(old) = vars.get(name) {
            return *old == v && rest(vars);
        }
        vars.insert(name.to_string(), v);
        let ok = rest(vars);
        if !ok {
            vars.remove(name);
        }
        ok
    }
    /// `at` is the byte offset of `s` in the whole name (for segment boundaries).
    fn rec(pat: &[Piece], full: &str, at: usize, vars: &mut BTreeMap<String, Bound>) -> bool {
        let s = &full[at..];
        match pat.first() {
            None => s.is_empty(),
            Some(Piece::Lit(l)) => s.starts_with(l.as_str()) && rec(&pat[1..], full, at + l.len(), vars),
            Some(Piece::Var { name, offset }) => {
                let digits = s.bytes().take_while(u8::is_ascii_digit).count();
                // Digits are greedy; the next piece is a literal (or the end), so one try suffices.
                if digits == 0 || digits > 18 {
                    return false;
                }
                let Ok(m) = s[..digits].parse::<i64>() else { return false };
                let v = m - offset;
                v >= 0 && bind(vars, name, Bound::Int(v), |vars| rec(&pat[1..], full, at + digits, vars))
            }
            Some(Piece::Str { name }) => {
                // One or more whole segments: starts at the beginning or after a '.', ends at the
                // end or before '.' / '@', holds no '@', does not start or end with '.'.
                if !(at == 0 || full[..at].ends_with('.')) || s.starts_with('.') {
                    return false;
                }
                let run = s.find('@').unwrap_or(s.len());
                if run == 0 || s[..run].ends_with('.') {
                    return false;
                }
                // As the last piece it takes the whole rest, an `@input...` suffix included.
                if pat.len() == 1 {
                    return bind(vars, name, Bound::Str(s.to_string()), |vars| rec(&pat[1..], full, full.len(), vars));
                }
                let ends: Vec<usize> = (1..=run)
                    .rev()
                    .filter(|&e| e == s.len() || s[e..].starts_with(['.', '@']))
                    .filter(|&e| !s[..e].ends_with('.'))
                    .collect();
                ends.into_iter().any(|e| {
                    bind(vars, name, Bound::Str(s[..e].to_string()), |vars| rec(&pat[1..], full, at + e, vars))
                })
            }
        }
    }
    let mut vars = BTreeMap::new();
    rec(pat, name, 0, &mut vars).then_some(vars)
}

fn fill(pat: &[Piece], vars: &BTreeMap<String, Bound>) -> Result<String, String> {
    let mut s = String::new();
    for p in pat {
        match p {
            Piece::Lit(l) => s.push_str(l),
            Piece::Var { name, offset } => match vars.get(name) {
                Some(Bound::Int(v)) => s.push_str(&(v + offset).to_string()),
                _ => return Err(format!("variable `{name}` is not bound by the candidate pattern")),
            },
            Piece::Str { name } => match vars.get(name) {
                Some(Bound::Str(v)) => s.push_str(v),
                _ => return Err(format!("variable `*{name}` is not bound by the candidate pattern")),
            },
        }
    }
    Ok(s)
}

#[derive(Debug, Clone)]
struct Rule {
    candidate: Vec<Piece>,
    fixture: Option<Vec<Piece>>,
    transform: Vec<Transform>,
}

/// A parsed name map.
#[derive(Debug, Clone)]
pub struct NameMap {
    /// Where the map came from (a path, or `built-in hf`), for messages.
    pub source: String,
    /// The map's `description`.
    pub description: String,
    rules: Vec<Rule>,
}

/// What a candidate name becomes.
#[derive(Debug, Clone, PartialEq)]
pub enum Mapped {
    /// Compared as this fixture name after these transforms.
    To {
        /// The fixture name.
        fixture: String,
        /// Applied in order before the comparison.
        transform: Vec<Transform>,
    },
    /// Dropped on purpose by the map.
    Dropped,
}

const BUILTIN_HF: &str = include_str!("names/hf.json");
const BUILTIN_TIMM: &str = include_str!("names/timm.json");

impl NameMap {
    /// `hf`, `timm` (built in) or a path to a JSON map.
    pub fn load(spec: &str) -> Result<NameMap, NamesError> {
        match spec {
            "hf" => Self::parse(BUILTIN_HF, "built-in `hf`"),
            "timm" => Self::parse(BUILTIN_TIMM, "built-in `timm`"),
            path => {
                let text = crate::files::read_regular_to_string(Path::new(path), crate::files::MAX_TEXT_BYTES)
                    .map_err(|e| NamesError::Map { src: path.to_string(), msg: e.to_string() })?;
                Self::parse(&text, path)
            }
        }
    }

    /// Parses a map from JSON text; `src` names it in errors.
    pub fn parse(text: &str, src: &str) -> Result<NameMap, NamesError> {
        let err = |msg: String| NamesError::Map { src: src.to_string(), msg };
        let m: MapJson = serde_json::from_str(text).map_err(|e| err(format!("invalid: {e}")))?;
        if m.format != NAMES_FORMAT {
            return Err(err(format!("`format` must be \"{NAMES_FORMAT}\", got {:?}", m.format)));
        }
        let mut rules = Vec::with_capacity(m.rules.len());
        for (i, r) in m.rules.into_iter().enumerate() {
            let candidate = parse_pattern(&r.candidate).map_err(|e| err(format!("rules[{i}]: {e}")))?;
            let fixture =
                r.fixture.as_deref().map(parse_pattern).transpose().map_err(|e| err(format!("rules[{i}]: {e}")))?;
            if let Some(f) = &fixture {
                for p in f {
                    let bound = match p {
                        Piece::Var { name, .. } => {
                            candidate.iter().any(|c| matches!(c, Piece::Var { name: n, .. } if n == name))
                        }
                        Piece::Str { name } => {
                            candidate.iter().any(|c| matches!(c, Piece::Str { name: n } if n == name))
                        }
                        Piece::Lit(_) => true,
                    };
                    if !bound {
                        let shown = match p {
                            Piece::Str { name } => format!("{{*{name}}}"),
                            Piece::Var { name, .. } => format!("{{{name}}}"),
                            Piece::Lit(l) => l.clone(),
                        };
                        return Err(err(format!("rules[{i}]: `{shown}` in `fixture` is not bound by `candidate`")));
                    }
                }
            }
            let _ = r.note;
            rules.push(Rule { candidate, fixture, transform: r.transform });
        }
        Ok(NameMap { source: src.to_string(), description: m.description, rules })
    }

    /// The candidate name (and transforms) under which this map expects fixture tensor
    /// `fixture`: the first rule whose `fixture` pattern matches it. For tools and tests that
    /// write a port's layout from fixture names.
    pub fn candidate_name(&self, fixture: &str) -> Option<(String, Vec<Transform>)> {
        for r in &self.rules {
            let Some(f) = &r.fixture else { continue };
            if let Some(vars) = match_pattern(f, fixture) {
                if let Ok(name) = fill(&r.candidate, &vars) {
                    // The forward direction must agree (an earlier rule may shadow this one).
                    if matches!(self.map(&name), Mapped::To { fixture: ref g, .. } if g == fixture) {
                        return Some((name, r.transform.clone()));
                    }
                }
            }
        }
        None
    }

    /// What candidate tensor `name` becomes: the first rule that matches, or its own name.
    pub fn map(&self, name: &str) -> Mapped {
        for r in &self.rules {
            if let Some(vars) = match_pattern(&r.candidate, name) {
                return match &r.fixture {
                    None => Mapped::Dropped,
                    Some(f) => match fill(f, &vars) {
                        Ok(fixture) => Mapped::To { fixture, transform: r.transform.clone() },
                        Err(_) => continue,
                    },
                };
            }
        }
        Mapped::To { fixture: name.to_string(), transform: Vec::new() }
    }
}

fn apply_one<T: Clone + num_traits::Zero + std::ops::Mul<Output = T> + num_traits::NumCast>(
    a: ArrayD<T>,
    t: &Transform,
    expected: Option<&[usize]>,
) -> Result<ArrayD<T>, String> {
    let shape = a.shape().to_vec();
    Ok(match t {
        Transform::Permute { axes } => {
            let mut sorted = axes.clone();
            sorted.sort_unstable();
            if sorted != (0..shape.len()).collect::<Vec<_>>() {
                return Err(format!(
                    "axes {axes:?} are not a permutation of the {} axes of shape {shape:?}",
                    shape.len()
                ));
            }
            a.permuted_axes(IxDyn(axes)).as_standard_layout().into_owned()
        }
        Transform::NhwcToNchw => {
            if shape.len() != 4 {
                return Err(format!("needs 4 dimensions, got shape {shape:?}"));
            }
            a.permuted_axes(IxDyn(&[0, 3, 1, 2])).as_standard_layout().into_owned()
        }
        Transform::DropCls => {
            if shape.len() < 2 || shape[1] == 0 {
                return Err(format!("needs tokens B x (N+1) x C, got shape {shape:?}"));
            }
            a.slice_axis(Axis(1), ndarray::Slice::from(1..)).to_owned()
        }
        Transform::TokensToNchw => {
            let e = expected.filter(|e| e.len() == 4).ok_or("needs a 4-D expected tensor (B x C x H x W)")?;
            if shape.len() != 3 || shape[1] != e[2] * e[3] {
                return Err(format!("tokens of shape {shape:?} do not fill a {}x{} grid", e[2], e[3]));
            }
            let (b, c) = (shape[0], shape[2]);
            a.into_shape_with_order(IxDyn(&[b, e[2], e[3], c]))
                .map_err(|e| e.to_string())?
                .permuted_axes(IxDyn(&[0, 3, 1, 2]))
                .as_standard_layout()
                .into_owned()
        }
        Transform::Reshape { shape: want } => {
            let n: usize = shape.iter().product();
            let known: i64 = want.iter().filter(|&&d| d != -1).product();
            let holes = want.iter().filter(|&&d| d == -1).count();
            if holes > 1 || want.iter().any(|&d| d < -1) || known <= 0 && n > 0 {
                return Err(format!("bad shape {want:?}"));
            }
            let dims: Vec<usize> =
                want.iter().map(|&d| if d == -1 { n / known.max(1) as usize } else { d as usize }).collect();
            if dims.iter().product::<usize>() != n {
                return Err(format!("cannot reshape {shape:?} to {want:?}"));
            }
            a.as_standard_layout().into_owned().into_shape_with_order(IxDyn(&dims)).map_err(|e| e.to_string())?
        }
        Transform::Squeeze { axis } => {
            if shape.get(*axis) != Some(&1) {
                return Err(format!("axis {axis} of shape {shape:?} is not 1"));
            }
            a.index_axis_move(Axis(*axis), 0)
        }
        Transform::Unsqueeze { axis } => {
            if *axis > shape.len() {
                return Err(format!("axis {axis} is out of range for shape {shape:?}"));
            }
            a.insert_axis(Axis(*axis))
        }
        Transform::Scale { factor } => {
            let f: T = num_traits::NumCast::from(*factor).ok_or("factor does not fit the dtype")?;
            a.mapv(|v| v * f.clone())
        }
    })
}

fn op_name(t: &Transform) -> &'static str {
    match t {
        Transform::Permute { .. } => "permute",
        Transform::NhwcToNchw => "nhwc_to_nchw",
        Transform::DropCls => "drop_cls",
        Transform::TokensToNchw => "tokens_to_nchw",
        Transform::Reshape { .. } => "reshape",
        Transform::Squeeze { .. } => "squeeze",
        Transform::Unsqueeze { .. } => "unsqueeze",
        Transform::Scale { .. } => "scale",
    }
}

/// Applies `transforms` in order to a candidate array (`expected` is the fixture tensor's shape,
/// for `tokens_to_nchw`). Integer arrays accept only the layout transforms.
pub fn apply(
    a: AnyArray,
    transforms: &[Transform],
    expected: Option<&[usize]>,
    name: &str,
    fixture: &str,
) -> Result<AnyArray, NamesError> {
    let mut a = a;
    for t in transforms {
        let terr = |msg: String| NamesError::Transform {
            name: name.to_string(),
            fixture: fixture.to_string(),
            op: op_name(t).to_string(),
            msg,
        };
        a = match a {
            AnyArray::F32(x) => AnyArray::F32(apply_one(x, t, expected).map_err(terr)?),
            AnyArray::F64(x) => AnyArray::F64(apply_one(x, t, expected).map_err(terr)?),
            AnyArray::I64(x) => AnyArray::I64(apply_one(x, t, expected).map_err(terr)?),
            AnyArray::I32(x) => AnyArray::I32(apply_one(x, t, expected).map_err(terr)?),
            AnyArray::U8(x) => AnyArray::U8(apply_one(x, t, expected).map_err(terr)?),
            AnyArray::Bool(x) => {
                let y = apply_one(x.mapv(u8::from), t, expected).map_err(terr)?;
                AnyArray::Bool(y.mapv(|v| v != 0))
            }
        };
    }
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(rules: &str) -> NameMap {
        NameMap::parse(&format!("{{\"format\": \"{NAMES_FORMAT}\", \"rules\": {rules}}}"), "test").unwrap()
    }

    #[test]
    fn patterns_bind_offsets() {
        let m = map(r#"[{"candidate": "hidden_states.{i+1}", "fixture": "backbone.layers.{i}"},
                       {"candidate": "blocks.{i}.norm1", "fixture": "backbone.layers.{i}.ln1"},
                       {"candidate": "pooler", "fixture": null}]"#);
        let to = |f: &str| Mapped::To { fixture: f.to_string(), transform: vec![] };
        assert_eq!(m.map("hidden_states.4"), to("backbone.layers.3"));
        assert_eq!(m.map("hidden_states.0"), to("hidden_states.0")); // i = -1: no match
        assert_eq!(m.map("blocks.11.norm1"), to("backbone.layers.11.ln1"));
        assert_eq!(m.map("blocks.11.norm2"), to("blocks.11.norm2"));
        assert_eq!(m.map("pooler"), Mapped::Dropped);
        assert!(NameMap::parse(r#"{"format": "x", "rules": []}"#, "t").is_err());
        assert!(NameMap::parse(
            &format!(
                "{{\"format\": \"{NAMES_FORMAT}\", \"rules\": [{{\"candidate\": \"a\", \"fixture\": \"b.{{i}}\"}}]}}"
            ),
            "t"
        )
        .is_err());
    }

    #[test]
    fn string_captures_rename_a_prefix_in_one_rule() {
        let m = map(r#"[{"candidate": "vit.{*rest}", "fixture": "backbone.{*rest}"}]"#);
        let to = |f: &str| Mapped::To { fixture: f.to_string(), transform: vec![] };
        assert_eq!(m.map("vit.layers.3.ln1"), to("backbone.layers.3.ln1"));
        assert_eq!(m.map("vit.layers.3.attn@input"), to("backbone.layers.3.attn@input"));
        assert_eq!(m.map("vit.0"), to("backbone.0"));
        assert_eq!(m.map("vit"), to("vit")); // nothing after the prefix: no match
        assert_eq!(m.map("vitx.a"), to("vitx.a"));
        assert_eq!(m.map("vit..a"), to("vit..a"));
        assert_eq!(m.map("vit.@input"), to("vit.@input"));
        assert_eq!(m.map("vit.a@input.1"), to("backbone.a@input.1"));
        assert_eq!(m.candidate_name("backbone.layers.0.attn"), Some(("vit.layers.0.attn".into(), vec![])));
        // In the middle, with an integer variable after it (the run stops at a segment end).
        let m = map(r#"[{"candidate": "enc.{*mid}.blocks.{i}", "fixture": "backbone.{*mid}.layers.{i}"}]"#);
        assert_eq!(m.map("enc.a.b.blocks.7"), to("backbone.a.b.layers.7"));
        assert_eq!(m.map("enc.blocks.7"), to("enc.blocks.7")); // the run must not be empty
                                                               // A string variable used in `fixture` must be bound by `candidate`; kinds must not mix.
        let bad = |rules: &str| {
            NameMap::parse(&format!("{{\"format\": \"{NAMES_FORMAT}\", \"rules\": {rules}}}"), "t").is_err()
        };
        assert!(bad(r#"[{"candidate": "vit.{i}", "fixture": "backbone.{*rest}"}]"#));
        assert!(bad(r#"[{"candidate": "a.{*x}.b.{x}", "fixture": "c"}]"#));
        assert!(bad(r#"[{"candidate": "a.{*}", "fixture": "c"}]"#));
    }

    #[test]
    fn transforms_reach_nchw() {
        // B=1, N+1=7 tokens (cls + 2x3 grid), C=2; token t, channel c holds 10t + c.
        let tokens = ArrayD::from_shape_fn(IxDyn(&[1, 7, 2]), |ix| (10 * ix[1] + ix[2]) as f32);
        let out =
            apply(AnyArray::F32(tokens), &[Transform::DropCls, Transform::TokensToNchw], Some(&[1, 2, 2, 3]), "a", "b")
                .unwrap();
        let AnyArray::F32(o) = out else { panic!("dtype") };
        assert_eq!(o.shape(), &[1, 2, 2, 3]);
        // Grid position (1, 2) is patch token 5 (= token 6 with the class token).
        assert_eq!(o[[0, 1, 1, 2]], 61.0);
        let nhwc = ArrayD::from_shape_fn(IxDyn(&[1, 2, 3, 4]), |ix| (100 * ix[1] + 10 * ix[2] + ix[3]) as f64);
        let AnyArray::F64(o) = apply(AnyArray::F64(nhwc), &[Transform::NhwcToNchw], None, "a", "b").unwrap() else {
            panic!()
        };
        assert_eq!((o.shape(), o[[0, 3, 1, 2]]), (&[1, 4, 2, 3][..], 123.0));
        let e = apply(AnyArray::F32(ArrayD::zeros(IxDyn(&[2, 3]))), &[Transform::Squeeze { axis: 0 }], None, "a", "b");
        assert!(e.unwrap_err().to_string().contains("axis 0 of shape [2, 3] is not 1"));
    }
}
