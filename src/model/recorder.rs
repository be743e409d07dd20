//! Named module outputs collected during a forward pass, like the forward hooks of the fixture
//! generator. Generic over the tensor type `V` (an ndarray for the reference, a `tch::Tensor`
//! for the fast path): only the names that are wanted are materialised, so a full-size run
//! records nothing it does not need.

use std::collections::{BTreeMap, HashSet};

/// Collects module outputs by name.
pub struct Recorder<V> {
    wanted: Option<HashSet<String>>,
    values: BTreeMap<String, V>,
}

impl<V> Recorder<V> {
    /// Records every module output.
    pub fn all() -> Self {
        Recorder { wanted: None, values: BTreeMap::new() }
    }

    /// Records only the given names.
    pub fn only<I: IntoIterator<Item = S>, S: Into<String>>(names: I) -> Self {
        Recorder { wanted: Some(names.into_iter().map(Into::into).collect()), values: BTreeMap::new() }
    }

    /// Records nothing.
    pub fn none() -> Self {
        Self::only(Vec::<String>::new())
    }

    /// Whether `name` is wanted.
    pub fn wants(&self, name: &str) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(name))
    }

    /// Whether any wanted name is `prefix` or starts with `prefix.`.
    pub fn wants_prefix(&self, prefix: &str) -> bool {
        match &self.wanted {
            None => true,
            Some(w) => w.iter().any(|n| n == prefix || (n.starts_with(prefix) && n[prefix.len()..].starts_with('.'))),
        }
    }

    /// Records the value `make()` under `name` when it is wanted (`make` runs only then).
    pub fn record(&mut self, name: &str, make: impl FnOnce() -> V) {
        if self.wants(name) {
            self.values.insert(name.to_string(), make());
        }
    }

    /// The value recorded under `name`.
    pub fn get(&self, name: &str) -> Option<&V> {
        self.values.get(name)
    }

    /// The recorded names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &String> {
        self.values.keys()
    }

    /// All recorded values by name.
    pub fn into_values(self) -> BTreeMap<String, V> {
        self.values
    }
}

#[cfg(test)]
mod tests {
    use super::Recorder;

    #[test]
    fn wanted_names_and_prefixes() {
        let mut r = Recorder::<i32>::only(["a.b", "auxiliary_head.conv_seg"]);
        assert!(r.wants("a.b") && !r.wants("a"));
        assert!(r.wants_prefix("a") && r.wants_prefix("auxiliary_head") && !r.wants_prefix("aux"));
        r.record("a.b", || 1);
        r.record("c", || panic!("not wanted: never computed"));
        assert_eq!(r.into_values().into_iter().collect::<Vec<_>>(), vec![("a.b".to_string(), 1)]);
        let mut all = Recorder::<i32>::all();
        all.record("x", || 2);
        assert_eq!(all.get("x"), Some(&2));
    }
}
