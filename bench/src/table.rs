//! Comparison tables in markdown, and the target checks printed under them.
//!
//! A [`Comparison`] holds one row per figure and one column per system. One
//! system is the *subject* (geomirror) and one the *baseline* (the peer it is
//! compared with); the ratio column is subject / baseline, and a row's
//! [`Target`] is checked against that ratio. Further systems (for later
//! side-by-side runs) are shown as plain columns.

use std::fmt::Write as _;

/// What the subject/baseline ratio of a figure must be.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Target {
    /// Higher is better (throughput): ratio ≥ the bound.
    AtLeast(f64),
    /// Lower is better (latency): ratio ≤ the bound.
    AtMost(f64),
}

impl Target {
    /// Whether `ratio` meets the target.
    pub fn met_by(self, ratio: f64) -> bool {
        match self {
            Target::AtLeast(bound) => ratio >= bound,
            Target::AtMost(bound) => ratio <= bound,
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::AtLeast(bound) => write!(f, "≥ {bound}"),
            Target::AtMost(bound) => write!(f, "≤ {bound}"),
        }
    }
}

/// How a figure's values are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Whole numbers with thousands separators (IOPS, MB/s).
    Integer,
    /// One decimal (latencies in µs).
    OneDecimal,
    /// Two decimals (CPUs, ratios).
    TwoDecimals,
}

/// One figure: its values per system (same order as [`Comparison::systems`]).
#[derive(Clone, Debug)]
pub struct Row {
    /// Label, including the unit, e.g. "4 KiB randwrite QD1, IOPS".
    pub figure: String,
    /// One value per system; `None` when it could not be measured.
    pub values: Vec<Option<f64>>,
    /// How to print the values.
    pub format: Format,
    /// The ratio target, if this figure is checked.
    pub target: Option<Target>,
}

/// A table of figures × systems with a subject/baseline ratio column.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// Column names.
    pub systems: Vec<String>,
    /// Index of the system in the ratio's numerator.
    pub subject: usize,
    /// Index of the system in the ratio's denominator.
    pub baseline: usize,
    /// The figures.
    pub rows: Vec<Row>,
}

/// The outcome of one target check.
#[derive(Clone, Debug, PartialEq)]
pub struct Check {
    /// The figure checked.
    pub figure: String,
    /// subject / baseline, if both were measured.
    pub ratio: Option<f64>,
    /// The target.
    pub target: Target,
    /// Whether the ratio meets the target (false when there is no ratio).
    pub pass: bool,
}

impl Comparison {
    /// subject / baseline for `row`, when both are present and the baseline is not zero.
    pub fn ratio(&self, row: &Row) -> Option<f64> {
        let subject = row.values.get(self.subject).copied().flatten()?;
        let baseline = row.values.get(self.baseline).copied().flatten()?;
        (baseline != 0.0).then(|| subject / baseline)
    }

    /// The table as GitHub-flavoured markdown.
    pub fn markdown(&self) -> String {
        let mut out = String::new();
        let ratio_header = format!("ratio {}/{}", self.systems[self.subject], self.systems[self.baseline]);
        let header: Vec<&str> =
            std::iter::once("figure").chain(self.systems.iter().map(String::as_str)).chain([ratio_header.as_str()]).collect();
        let _ = writeln!(out, "| {} |", header.join(" | "));
        let align: Vec<&str> = std::iter::once("---").chain(std::iter::repeat_n("---:", header.len() - 1)).collect();
        let _ = writeln!(out, "|{}|", align.join("|"));
        for row in &self.rows {
            let mut cells = vec![row.figure.clone()];
            cells.extend(row.values.iter().map(|v| v.map_or_else(|| "n/a".to_string(), |v| format_value(v, row.format))));
            cells.push(self.ratio(row).map_or_else(|| "n/a".to_string(), |r| format!("{r:.2}")));
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        out
    }

    /// The target checks, in row order (rows without a target are skipped).
    pub fn checks(&self) -> Vec<Check> {
        self.rows
            .iter()
            .filter_map(|row| {
                let target = row.target?;
                let ratio = self.ratio(row);
                Some(Check { figure: row.figure.clone(), ratio, target, pass: ratio.is_some_and(|r| target.met_by(r)) })
            })
            .collect()
    }
}

impl std::fmt::Display for Check {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let verdict = if self.pass { "PASS" } else { "MISS" };
        match self.ratio {
            Some(r) => write!(f, "{verdict} {}: ratio {r:.2} (target {})", self.figure, self.target),
            None => write!(f, "{verdict} {}: not measured (target {})", self.figure, self.target),
        }
    }
}

/// One figure of one system across rounds, for the per-round table.
#[derive(Clone, Debug)]
pub struct Series {
    /// Row label, e.g. "4 KiB randwrite QD1, IOPS — geomirror".
    pub label: String,
    /// One value per round.
    pub values: Vec<Option<f64>>,
    /// Rounds whose value is suspect (printed with a `*`); may be shorter
    /// than `values`.
    pub flagged: Vec<bool>,
    /// How to print the values.
    pub format: Format,
}

/// A markdown table with one row per series and one column per round, plus
/// the median: shows how much the rounds disagree. Flagged values get a
/// trailing `*` (the caller explains it).
pub fn rounds_markdown(series: &[Series]) -> String {
    let rounds = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let mut out = String::new();
    let header: Vec<String> = std::iter::once("figure — system".to_string())
        .chain((1..=rounds).map(|r| format!("round {r}")))
        .chain(["median".to_string()])
        .collect();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> = std::iter::once("---").chain(std::iter::repeat_n("---:", rounds + 1)).collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for s in series {
        let cell = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), |v| format_value(v, s.format));
        let mut cells = vec![s.label.clone()];
        cells.extend((0..rounds).map(|r| {
            let flag = if s.flagged.get(r).copied().unwrap_or(false) { " *" } else { "" };
            cell(s.values.get(r).copied().flatten()) + flag
        }));
        cells.push(cell(crate::stats::median_of_present(&s.values)));
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// A plain markdown table: the first column left-aligned, the others
/// right-aligned; short rows are padded with empty cells.
pub fn plain_markdown(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let align: Vec<&str> = std::iter::once("---").chain(std::iter::repeat_n("---:", header.len().saturating_sub(1))).collect();
    let _ = writeln!(out, "|{}|", align.join("|"));
    for row in rows {
        let mut cells = row.clone();
        cells.resize(header.len().max(row.len()), String::new());
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// `value` in `format`, or "n/a".
pub fn cell(value: Option<f64>, format: Format) -> String {
    value.map_or_else(|| "n/a".to_string(), |v| format_value(v, format))
}

/// Prints `value` in `format`: "12,345" or "1,234.5".
pub fn format_value(value: f64, format: Format) -> String {
    let (scaled, decimals) = match format {
        Format::Integer => (value.round() as i64, 0),
        Format::OneDecimal => ((value * 10.0).round() as i64, 1),
        Format::TwoDecimals => ((value * 100.0).round() as i64, 2),
    };
    let sign = if scaled < 0 { "-" } else { "" };
    let magnitude = scaled.unsigned_abs();
    match decimals {
        0 => format!("{sign}{}", group_thousands(magnitude)),
        1 => format!("{sign}{}.{}", group_thousands(magnitude / 10), magnitude % 10),
        _ => format!("{sign}{}.{:02}", group_thousands(magnitude / 100), magnitude % 100),
    }
}

/// `1234567` → `"1,234,567"`.
fn group_thousands(n: u64) -> String {
    let digits = n.to_string();
    // ASCII digits: every 3-byte chunk is valid UTF-8.
    let groups: Vec<&str> = digits.as_bytes().rchunks(3).rev().map(|g| std::str::from_utf8(g).expect("ASCII digits")).collect();
    groups.join(",")
}

/// PASS or MISS for a target check.
pub fn verdict(pass: bool) -> &'static str {
    if pass { "PASS" } else { "MISS" }
}

/// Prints the `## Targets` section: one line per check.
pub fn print_targets(checks: &[String]) {
    println!("## Targets\n");
    for c in checks {
        println!("- {c}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Comparison {
        Comparison {
            systems: vec!["geomirror".into(), "qemu-nbd".into()],
            subject: 0,
            baseline: 1,
            rows: vec![
                Row {
                    figure: "randwrite IOPS".into(),
                    values: vec![Some(9500.0), Some(10000.0)],
                    format: Format::Integer,
                    target: Some(Target::AtLeast(0.9)),
                },
                Row {
                    figure: "randwrite p50 µs".into(),
                    values: vec![Some(120.0), Some(100.0)],
                    format: Format::OneDecimal,
                    target: Some(Target::AtMost(1.1)),
                },
                Row { figure: "randwrite p99 µs".into(), values: vec![Some(300.0), None], format: Format::OneDecimal, target: None },
                Row {
                    figure: "seq MB/s".into(),
                    values: vec![Some(900.0), None],
                    format: Format::Integer,
                    target: Some(Target::AtLeast(0.9)),
                },
            ],
        }
    }

    #[test]
    fn markdown_has_header_alignment_values_and_ratios() {
        let md = sample().markdown();
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| figure | geomirror | qemu-nbd | ratio geomirror/qemu-nbd |");
        assert_eq!(lines[1], "|---|---:|---:|---:|");
        assert_eq!(lines[2], "| randwrite IOPS | 9,500 | 10,000 | 0.95 |");
        assert_eq!(lines[3], "| randwrite p50 µs | 120.0 | 100.0 | 1.20 |");
        assert_eq!(lines[4], "| randwrite p99 µs | 300.0 | n/a | n/a |");
        assert_eq!(lines.len(), 6);
    }

    #[test]
    fn checks_pass_miss_and_unmeasured() {
        let checks = sample().checks();
        assert_eq!(checks.len(), 3, "rows without a target are not checked");
        assert!(checks[0].pass, "0.95 ≥ 0.9");
        assert!(!checks[1].pass, "1.2 > 1.1");
        assert!(!checks[2].pass, "no baseline value: cannot pass");
        assert_eq!(checks[0].to_string(), "PASS randwrite IOPS: ratio 0.95 (target ≥ 0.9)");
        assert_eq!(checks[1].to_string(), "MISS randwrite p50 µs: ratio 1.20 (target ≤ 1.1)");
        assert_eq!(checks[2].to_string(), "MISS seq MB/s: not measured (target ≥ 0.9)");
    }

    #[test]
    fn rounds_table_shows_each_round_and_the_median() {
        let md = rounds_markdown(&[
            Series {
                label: "IOPS — a".into(),
                values: vec![Some(3.0), Some(1.0), Some(2.0)],
                flagged: vec![false, true],
                format: Format::Integer,
            },
            Series { label: "p50 — a".into(), values: vec![Some(10.0), None, Some(30.0)], flagged: vec![], format: Format::OneDecimal },
        ]);
        let lines: Vec<&str> = md.lines().collect();
        assert_eq!(lines[0], "| figure — system | round 1 | round 2 | round 3 | median |");
        assert_eq!(lines[1], "|---|---:|---:|---:|---:|");
        assert_eq!(lines[2], "| IOPS — a | 3 | 1 * | 2 | 2 |");
        assert_eq!(lines[3], "| p50 — a | 10.0 | n/a | 30.0 | 20.0 |");
    }

    #[test]
    fn plain_tables() {
        let md = plain_markdown(&["figure", "a", "b"], &[vec!["x".into(), "1".into(), "2".into()], vec!["y".into()]]);
        assert_eq!(md, "| figure | a | b |\n|---|---:|---:|\n| x | 1 | 2 |\n| y |  |  |\n");
        assert_eq!(cell(None, Format::Integer), "n/a");
        assert_eq!(cell(Some(1.25), Format::OneDecimal), "1.3");
    }

    #[test]
    fn values_are_formatted() {
        assert_eq!(format_value(1234567.4, Format::Integer), "1,234,567");
        assert_eq!(format_value(999.6, Format::Integer), "1,000");
        assert_eq!(format_value(12.0, Format::Integer), "12");
        assert_eq!(format_value(-4321.0, Format::Integer), "-4,321");
        assert_eq!(format_value(87.26, Format::OneDecimal), "87.3");
        assert_eq!(format_value(2244.64, Format::OneDecimal), "2,244.6");
        assert_eq!(format_value(-0.5, Format::OneDecimal), "-0.5");
        assert_eq!(format_value(0.0, Format::OneDecimal), "0.0");
        assert_eq!(format_value(0.054, Format::TwoDecimals), "0.05");
        assert_eq!(format_value(1234.5, Format::TwoDecimals), "1,234.50");
    }
}
