//! Small statistics helpers for summarising repeated rounds.

/// The median of `values`: the middle value of the sorted list, or the mean
/// of the two middle values for an even count. `None` when `values` is empty
/// or holds a NaN (a NaN would make the order meaningless).
pub fn median(values: &[f64]) -> Option<f64> {
    if values.is_empty() || values.iter().any(|v| v.is_nan()) {
        return None;
    }
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    Some(if sorted.len() % 2 == 1 { sorted[mid] } else { (sorted[mid - 1] + sorted[mid]) / 2.0 })
}

/// The median of the values that are present; `None` when none is.
pub fn median_of_present(values: &[Option<f64>]) -> Option<f64> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    median(&present)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[7.5]), Some(7.5));
    }

    #[test]
    fn median_of_nothing_or_nan_is_none() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[1.0, f64::NAN, 2.0]), None);
        assert_eq!(median_of_present(&[None, None]), None);
        assert_eq!(median_of_present(&[Some(5.0), None, Some(1.0), Some(3.0)]), Some(3.0));
    }
}
