//! Printing results: an aligned table for people, JSON for tools (one object per
//! benchmark, collected into one document).

use serde_json::{Map, Value};

/// What a Tessera/SPIRE ratio should be.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Aim {
    /// Throughput: Tessera at least this many times SPIRE's.
    AtLeast(f64),
    /// Memory: Tessera at most this fraction of SPIRE's.
    AtMost(f64),
    /// No aim (latency, sizes, times): the ratio is reported.
    None,
}

/// Throughput at least 3x SPIRE's (issue 18).
pub(crate) const THROUGHPUT_AIM: Aim = Aim::AtLeast(3.0);
/// Memory at most a third of SPIRE's (issue 18).
pub(crate) const MEMORY_AIM: Aim = Aim::AtMost(1.0 / 3.0);

/// One benchmark's figures.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub name: String,
    rows: Vec<(String, String)>,
    json: Map<String, Value>,
}

impl Report {
    pub(crate) fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            ..Self::default()
        }
    }

    /// Adds a figure: `label` for the table, `key` for the JSON.
    pub(crate) fn add(&mut self, key: &str, label: &str, value: impl Into<Value>) {
        let value = value.into();
        let text = match &value {
            Value::Number(n) => match n.as_f64() {
                Some(f) if n.is_f64() => format!("{f:.3}"),
                _ => n.to_string(),
            },
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        self.rows.push((label.to_owned(), text));
        self.json.insert(key.to_owned(), value);
    }

    /// A figure added earlier, as a number.
    pub(crate) fn get(&self, key: &str) -> Option<f64> {
        self.json.get(key).and_then(Value::as_f64)
    }

    /// A SPIRE figure beside Tessera's `key` (measured in the same run), and
    /// the ratio Tessera / SPIRE: keys `spire_<key>` and
    /// `tessera_over_spire_<key>`. `aim` says what the ratio should be (a
    /// throughput at least 3, a memory at most 1/3) and the table says whether
    /// it is.
    pub(crate) fn vs_spire(&mut self, key: &str, label: &str, spire: f64, aim: Aim) {
        self.add(&format!("spire_{key}"), &format!("SPIRE: {label}"), spire);
        let Some(ours) = self.get(key) else {
            return;
        };
        let ratio = if spire > 0.0 { ours / spire } else { 0.0 };
        let verdict = match aim {
            Aim::AtLeast(x) if ratio >= x => format!(" (aim >= {x}: met)"),
            Aim::AtLeast(x) => format!(" (aim >= {x}: not met)"),
            Aim::AtMost(x) if ratio <= x => format!(" (aim <= {x:.2}: met)"),
            Aim::AtMost(x) => format!(" (aim <= {x:.2}: not met)"),
            Aim::None => String::new(),
        };
        self.rows.push((
            format!("Tessera/SPIRE: {label}"),
            format!("{ratio:.3}{verdict}"),
        ));
        self.json
            .insert(format!("tessera_over_spire_{key}"), Value::from(ratio));
    }

    /// A note (what limits the figure, what was skipped and why).
    pub(crate) fn note(&mut self, text: &str) {
        self.rows.push(("note".into(), text.to_owned()));
        let notes = self
            .json
            .entry("notes")
            .or_insert_with(|| Value::Array(Vec::new()));
        if let Value::Array(a) = notes {
            a.push(Value::String(text.to_owned()));
        }
    }

    pub(crate) fn print(&self) {
        println!("\n== {}", self.name);
        let width = self.rows.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        for (l, v) in &self.rows {
            println!("  {l:width$}  {v}");
        }
    }

    pub(crate) fn json(&self) -> Value {
        Value::Object(self.json.clone())
    }
}
