//! What a verify run holds an implementation to: every expected tensor (the default), or the
//! part a partial port implements (`--scope backbone`, `--ignore GLOB`).
//!
//! An expected tensor outside the scope that the implementation does not produce is reported as
//! *out of scope*: listed, never counted as passed, not held against the coverage within the
//! scope. One that it does produce is still compared (a wrong tensor is wrong in or out of scope).
//! A case whose scope selects nothing, or in which nothing was compared, is never a PASS.

use super::case::CaseError;

/// The part of each case's expected tensors an implementation must produce.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// Module-tree prefixes (`backbone`, `decode_head.psp_modules`): a name is in scope when it
    /// is the prefix or starts with `prefix.` or `prefix@`. Empty: every name.
    prefixes: Vec<String>,
    /// Names matching one of these globs are out of scope.
    ignore: Option<globset::GlobSet>,
    ignore_src: Vec<String>,
}

impl Scope {
    /// Every expected tensor.
    pub fn all() -> Scope {
        Scope::default()
    }

    /// The scope of `--scope PREFIX...` and `--ignore GLOB...`.
    pub fn new(prefixes: &[String], ignore: &[String]) -> Result<Scope, CaseError> {
        for p in prefixes {
            if p.is_empty() || p.starts_with('.') || p.ends_with('.') || p.contains(['*', '?', '[']) {
                return Err(CaseError::Io(format!(
                    "--scope `{p}`: a module path such as `backbone` or `decode_head.psp_modules` is expected \
                     (use --ignore GLOB for patterns)"
                )));
            }
        }
        let ignore_set = if ignore.is_empty() {
            None
        } else {
            let mut b = globset::GlobSetBuilder::new();
            for g in ignore {
                let glob = globset::GlobBuilder::new(g)
                    .literal_separator(false)
                    .build()
                    .map_err(|e| CaseError::Io(format!("--ignore `{g}`: {e}")))?;
                b.add(glob);
            }
            Some(b.build().map_err(|e| CaseError::Io(format!("--ignore: {e}")))?)
        };
        Ok(Scope { prefixes: prefixes.to_vec(), ignore: ignore_set, ignore_src: ignore.to_vec() })
    }

    /// Whether this is the whole case (no `--scope`, no `--ignore`).
    pub fn is_all(&self) -> bool {
        self.prefixes.is_empty() && self.ignore.is_none()
    }

    /// Whether expected tensor `name` is in scope.
    pub fn contains(&self, name: &str) -> bool {
        let in_prefix = self.prefixes.is_empty()
            || self.prefixes.iter().any(|p| {
                name.strip_prefix(p.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '@']))
            });
        in_prefix && !self.ignore.as_ref().is_some_and(|g| g.is_match(name))
    }

    /// How the report names the scope: `backbone`, `backbone, ignoring *.ffn.*`, or `all`.
    pub fn describe(&self) -> String {
        let mut s = if self.prefixes.is_empty() { "all".to_string() } else { self.prefixes.join(", ") };
        if !self.ignore_src.is_empty() {
            s.push_str(&format!(" ignoring {}", self.ignore_src.join(", ")));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::Scope;

    #[test]
    fn prefixes_are_module_paths() {
        let s = Scope::new(&["backbone".into()], &[]).unwrap();
        assert!(s.contains("backbone"));
        assert!(s.contains("backbone.0"));
        assert!(s.contains("backbone.layers.3.attn@input"));
        assert!(s.contains("backbone@input"));
        assert!(!s.contains("backbone_extra"));
        assert!(!s.contains("neck.0"));
        assert!(!s.contains("seg_logits"));
        let s = Scope::new(&["backbone".into()], &["backbone.layers.*.ffn*".into()]).unwrap();
        assert!(!s.contains("backbone.layers.2.ffn.layers.1"));
        assert!(s.contains("backbone.layers.2.attn"));
        assert!(Scope::all().contains("anything"));
        assert!(Scope::new(&["backbone.*".into()], &[]).is_err());
        assert!(Scope::new(&["".into()], &[]).is_err());
    }
}
