//! Distributions of durations: min, median, p95, p99, max (nearest rank, as people quote
//! latency percentiles).

use serde::Serialize;

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Distribution {
    pub count: usize,
    pub min: Option<f64>,
    pub median: Option<f64>,
    pub p95: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

impl Distribution {
    /// Seconds in, seconds out; NaNs are never produced by the callers and sort last.
    pub fn of(mut values: Vec<f64>) -> Distribution {
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let rank = |p: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            // Nearest rank: the smallest value with at least p of the values at or below it.
            let k = ((p * n as f64).ceil() as usize).clamp(1, n);
            Some(values[k - 1])
        };
        Distribution {
            count: n,
            min: values.first().copied(),
            median: rank(0.5),
            p95: rank(0.95),
            p99: rank(0.99),
            max: values.last().copied(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let d = Distribution::of((1..=100).map(f64::from).collect());
        assert_eq!(d.count, 100);
        assert_eq!(d.min, Some(1.0));
        assert_eq!(d.median, Some(50.0));
        assert_eq!(d.p95, Some(95.0));
        assert_eq!(d.p99, Some(99.0));
        assert_eq!(d.max, Some(100.0));
        let one = Distribution::of(vec![0.25]);
        assert_eq!((one.median, one.p99), (Some(0.25), Some(0.25)));
        assert_eq!(Distribution::of(vec![]).median, None);
    }
}
