//! Figures (samples of one measurement) and ratios between paired figures.
//!
//! Every figure keeps its raw samples; the report shows the median and the
//! spread (min–max). A ratio is computed run by run between two figures
//! measured in the same run (gateway vs a peer), then summarised the same
//! way: pairing cancels most of the drift of a shared, noisy machine.

use serde_json::{Value, json};

/// Whether a bigger value is better (throughput) or worse (time, latency).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

/// One measurement of one subject: its samples, one per run.
#[derive(Clone, Debug)]
pub struct Figure {
    /// Issue section: `a` … `f`.
    pub section: &'static str,
    /// What was measured, e.g. `warm 1 GiB, 16 clients: aggregate`.
    pub name: String,
    /// Who: `gateway`, `nginx`, `distribution`, `direct`.
    pub subject: String,
    pub unit: &'static str,
    pub better: Better,
    pub samples: Vec<f64>,
}

impl Figure {
    pub fn new(
        section: &'static str,
        name: impl Into<String>,
        subject: impl Into<String>,
        unit: &'static str,
        better: Better,
    ) -> Self {
        Self {
            section,
            name: name.into(),
            subject: subject.into(),
            unit,
            better,
            samples: Vec::new(),
        }
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.samples)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "section": self.section,
            "name": self.name,
            "subject": self.subject,
            "unit": self.unit,
            "better": match self.better { Better::Higher => "higher", Better::Lower => "lower" },
            "summary": self.summary().to_json(),
            "samples": self.samples,
        })
    }
}

/// A target from the issue and whether the measured value meets it.
#[derive(Clone, Debug)]
pub struct Check {
    pub section: &'static str,
    /// The target as the issue states it.
    pub target: String,
    /// The measured value it is judged on, as text.
    pub measured: String,
    pub met: bool,
}

impl Check {
    pub fn to_json(&self) -> Value {
        json!({
            "section": self.section,
            "target": self.target,
            "measured": self.measured,
            "met": self.met,
        })
    }
}

/// Median, min, max and count of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Summary {
    pub fn of(samples: &[f64]) -> Self {
        let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return Self {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                n: 0,
            };
        }
        v.sort_by(f64::total_cmp);
        Self {
            median: percentile_sorted(&v, 50.0),
            min: v[0],
            max: v[v.len() - 1],
            n: v.len(),
        }
    }

    /// (max − min) / median, in percent.
    pub fn spread_pct(&self) -> f64 {
        if self.median == 0.0 {
            return 0.0;
        }
        (self.max - self.min) / self.median.abs() * 100.0
    }

    pub fn to_json(&self) -> Value {
        json!({
            "median": finite(self.median),
            "min": finite(self.min),
            "max": finite(self.max),
            "n": self.n,
            "spread_pct": finite(self.spread_pct()),
        })
    }
}

fn finite(x: f64) -> Value {
    if x.is_finite() { json!(x) } else { Value::Null }
}

/// The `p`-th percentile (0–100) of sorted samples, by linear
/// interpolation between closest ranks.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = p / 100.0 * (n - 1) as f64;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            let frac = rank - lo as f64;
            sorted[lo] + (sorted[hi] - sorted[lo]) * frac
        }
    }
}

/// The `p`-th percentile of unsorted samples.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    percentile_sorted(&v, p)
}

/// A number with three significant digits and thousands separators for
/// big ones: `1,234,567`, `4,321`, `12.3`, `0.123`.
pub fn fmt_num(x: f64) -> String {
    if !x.is_finite() {
        return "n/a".to_owned();
    }
    let a = x.abs();
    if a >= 1000.0 {
        let rounded = x.round() as i64;
        let digits = rounded.unsigned_abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if rounded < 0 {
            out.insert(0, '-');
        }
        out
    } else if a >= 100.0 {
        format!("{x:.0}")
    } else if a >= 10.0 {
        format!("{x:.1}")
    } else if a >= 1.0 {
        format!("{x:.2}")
    } else {
        format!("{x:.3}")
    }
}

/// The run-by-run ratio `num / den` of two figures measured in the same
/// runs (sample `i` of each comes from run `i`), as a figure of its own.
pub fn ratio(
    section: &'static str,
    name: impl Into<String>,
    num: &Figure,
    den: &Figure,
    better: Better,
) -> Figure {
    let mut f = Figure::new(
        section,
        name,
        format!("{} / {}", num.subject, den.subject),
        "x",
        better,
    );
    f.samples = num
        .samples
        .iter()
        .zip(&den.samples)
        .map(|(a, b)| a / b)
        .collect();
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_samples() {
        let s = Summary::of(&[3.0, 1.0, 2.0, 10.0]);
        assert_eq!(s.median, 2.5);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 10.0);
        assert_eq!(s.n, 4);
        assert!(Summary::of(&[]).median.is_nan());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&v, 50.0) - 50.5).abs() < 1e-9);
        assert!((percentile(&v, 99.0) - 99.01).abs() < 1e-9);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
    }

    #[test]
    fn formats_numbers() {
        assert_eq!(fmt_num(1_234_567.4), "1,234,567");
        assert_eq!(fmt_num(4321.0), "4,321");
        assert_eq!(fmt_num(-4321.0), "-4,321");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
        assert_eq!(fmt_num(0.1234), "0.123");
        assert_eq!(fmt_num(f64::NAN), "n/a");
    }
}
