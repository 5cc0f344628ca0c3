//! Assertions shared by the tests that compare against the PyTorch reference's numbers.

use llama_model::exercise::compare::compare;
use serde_json::Value;

/// `actual` equals `expected` elementwise within `atol + rtol·|expected|`; prints and
/// returns the largest difference.
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f64, rtol: f64) -> f64 {
    let c = compare(actual, expected, atol, rtol);
    println!(
        "{what}: max |diff| {:.3e} ({} values)",
        c.max_abs_diff, c.len
    );
    assert!(
        c.passed(),
        "{what}: {} of {} values outside atol {atol} rtol {rtol}; max |diff| {:e} at {}",
        c.violations,
        c.len,
        c.max_abs_diff,
        c.max_abs_index
    );
    c.max_abs_diff
}

/// `actual` within `rtol` of `expected`, relatively.
pub fn assert_rel(what: &str, actual: f64, expected: f64, rtol: f64) {
    let rel = (actual - expected).abs() / expected.abs().max(1e-12);
    println!("{what}: {actual} vs {expected} (rel {rel:.2e})");
    assert!(
        (actual - expected).abs() <= rtol * expected.abs(),
        "{what}: {actual} vs {expected} (rel {rel:e} > {rtol})"
    );
}

/// Every number of a (nested) JSON array, flattened, as f32.
pub fn floats(v: &Value) -> Vec<f32> {
    match v {
        Value::Array(items) => items.iter().flat_map(floats).collect(),
        Value::Number(n) => vec![n.as_f64().expect("number") as f32],
        other => panic!("not a number array: {other}"),
    }
}

/// A JSON list of dimensions.
pub fn dims(v: &Value) -> Vec<usize> {
    v.as_array()
        .expect("a list of dimensions")
        .iter()
        .map(|d| d.as_u64().expect("dim") as usize)
        .collect()
}
