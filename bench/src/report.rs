//! Printing results: an aligned table for people, JSON for tools (one object per
//! benchmark, collected into one document).

use serde_json::{Map, Value};

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
