//! Accumulators: count, sum, min, max, last and a bounded percentile sketch.

use super::rules::AggFn;

/// A DDSketch-style log-bucketed histogram: quantiles within 1% relative error, at most
/// [`Sketch::MAX_BINS`] bins per sign (the lowest bins collapse when more are needed).
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Sketch {
    positive: Bins,
    negative: Bins,
    zeros: u64,
    count: u64,
}

#[derive(Debug, Clone, PartialEq, Default)]
struct Bins {
    /// Index of `counts[0]`.
    offset: i32,
    counts: Vec<u64>,
}

const RELATIVE_ACCURACY: f64 = 0.01;
/// Values with magnitude below this count as zero.
const MIN_MAGNITUDE: f64 = 1e-9;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

impl Bins {
    fn add(&mut self, index: i32, n: u64) {
        if self.counts.is_empty() {
            self.offset = index;
            self.counts.push(0);
        }
        let mut index = index;
        if index < self.offset {
            let grow = (self.offset - index) as usize;
            if self.counts.len() + grow > Sketch::MAX_BINS {
                // Collapse: values below the lowest kept bin land in it.
                index = self.offset.max(index);
            } else {
                self.counts.splice(0..0, std::iter::repeat_n(0, grow));
                self.offset = index;
            }
        }
        let at = (index - self.offset) as usize;
        if at >= self.counts.len() {
            let needed = at + 1;
            if needed > Sketch::MAX_BINS {
                // Keep the highest bins: fold the lowest ones into their successor.
                let excess = needed - Sketch::MAX_BINS;
                let folded: u64 = self.counts.drain(..excess.min(self.counts.len())).sum();
                self.offset += excess as i32;
                if let Some(first) = self.counts.first_mut() {
                    *first += folded;
                } else {
                    self.counts.push(folded);
                }
            }
            let at = (index - self.offset) as usize;
            self.counts.resize(at + 1, 0);
        }
        let at = (index - self.offset) as usize;
        self.counts[at] += n;
    }
}

impl Sketch {
    /// Bins kept per sign.
    pub(crate) const MAX_BINS: usize = 2048;

    pub(crate) fn add(&mut self, value: f64) {
        self.count += 1;
        let magnitude = value.abs();
        if magnitude < MIN_MAGNITUDE {
            self.zeros += 1;
            return;
        }
        let index = (magnitude.ln() / gamma().ln()).ceil() as i32;
        if value > 0.0 { self.positive.add(index, 1) } else { self.negative.add(index, 1) }
    }

    pub(crate) fn merge(&mut self, other: &Sketch) {
        for (bins, theirs) in [(&mut self.positive, &other.positive), (&mut self.negative, &other.negative)] {
            for (i, &n) in theirs.counts.iter().enumerate() {
                if n > 0 {
                    bins.add(theirs.offset + i as i32, n);
                }
            }
        }
        self.zeros += other.zeros;
        self.count += other.count;
    }

    /// The `q` quantile (0..=1), within 1% relative error of the value at rank `q × (n-1)`.
    pub(crate) fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = (q * (self.count - 1) as f64).round() as u64;
        let value_of = |index: i32| 2.0 * gamma().powi(index) / (gamma() + 1.0);
        let mut seen = 0u64;
        for (i, &n) in self.negative.counts.iter().enumerate().rev() {
            seen += n;
            if seen > rank {
                return Some(-value_of(self.negative.offset + i as i32));
            }
        }
        seen += self.zeros;
        if seen > rank {
            return Some(0.0);
        }
        for (i, &n) in self.positive.counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                return Some(value_of(self.positive.offset + i as i32));
            }
        }
        None
    }
}

/// Running aggregates of one metric in one window.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Acc {
    pub(crate) count: u64,
    sum: f64,
    min: f64,
    max: f64,
    last: f64,
    last_time: i64,
    sketch: Option<Box<Sketch>>,
}

impl Acc {
    pub(crate) fn new(with_sketch: bool) -> Self {
        Acc {
            count: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
            last: f64::NAN,
            last_time: i64::MIN,
            sketch: with_sketch.then(Box::default),
        }
    }

    pub(crate) fn add(&mut self, value: f64, time: i64) {
        self.count += 1;
        self.sum += value;
        self.min = self.min.min(value);
        self.max = self.max.max(value);
        if time >= self.last_time {
            self.last = value;
            self.last_time = time;
        }
        if let Some(sketch) = &mut self.sketch {
            sketch.add(value);
        }
    }

    pub(crate) fn merge(&mut self, other: &Acc) {
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
        if other.last_time >= self.last_time && other.count > 0 {
            self.last = other.last;
            self.last_time = other.last_time;
        }
        if let (Some(mine), Some(theirs)) = (&mut self.sketch, &other.sketch) {
            mine.merge(theirs);
        }
    }

    /// The aggregate's value; `None` for an empty window (except `count`, which is 0).
    pub(crate) fn value(&self, function: AggFn) -> Option<f64> {
        if self.count == 0 {
            return (function == AggFn::Count).then_some(0.0);
        }
        Some(match function {
            AggFn::Count => self.count as f64,
            AggFn::Sum => self.sum,
            AggFn::Avg => self.sum / self.count as f64,
            AggFn::Min => self.min,
            AggFn::Max => self.max,
            AggFn::Last => self.last,
            AggFn::P50 => self.sketch.as_ref()?.quantile(0.5)?,
            AggFn::P95 => self.sketch.as_ref()?.quantile(0.95)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sketch_quantiles_are_within_one_percent() {
        let mut sketch = Sketch::default();
        let mut values: Vec<f64> = (1..=10_000).map(|i| (i as f64).powf(1.3) - 500.0).collect();
        for &v in &values {
            sketch.add(v);
        }
        values.sort_by(f64::total_cmp);
        for q in [0.0, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0] {
            let exact = values[(q * (values.len() - 1) as f64).round() as usize];
            let estimate = sketch.quantile(q).unwrap();
            assert!((estimate - exact).abs() <= 0.01 * exact.abs() + 1e-9, "q{q}: {estimate} vs {exact}");
        }
    }

    #[test]
    fn sketch_is_bounded() {
        let mut sketch = Sketch::default();
        for i in 0..100_000 {
            sketch.add(1e-6 * 1.5f64.powi(i % 200));
        }
        assert!(sketch.positive.counts.len() <= Sketch::MAX_BINS);
        let high = sketch.quantile(0.99).unwrap();
        assert!(high > 1e25, "the high quantiles stay accurate when low bins collapse: {high}");
    }

    #[test]
    fn merged_sketch_equals_one_sketch_of_everything() {
        let (mut a, mut b, mut all) = (Sketch::default(), Sketch::default(), Sketch::default());
        for i in 0..1000 {
            let v = (i as f64 * 0.37).sin() * 100.0;
            if i % 3 == 0 {
                a.add(v)
            } else {
                b.add(v)
            }
            all.add(v);
        }
        a.merge(&b);
        for q in [0.05, 0.5, 0.95] {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
    }

    #[test]
    fn acc_basics() {
        let mut acc = Acc::new(false);
        assert_eq!(acc.value(AggFn::Count), Some(0.0));
        assert_eq!(acc.value(AggFn::Avg), None);
        acc.add(3.0, 10);
        acc.add(1.0, 30);
        acc.add(8.0, 20);
        assert_eq!(acc.value(AggFn::Sum), Some(12.0));
        assert_eq!(acc.value(AggFn::Avg), Some(4.0));
        assert_eq!((acc.value(AggFn::Min), acc.value(AggFn::Max)), (Some(1.0), Some(8.0)));
        assert_eq!(acc.value(AggFn::Last), Some(1.0), "last is by event time, not arrival");
        assert_eq!(acc.value(AggFn::P50), None, "no sketch was asked for");
    }
}
