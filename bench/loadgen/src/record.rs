//! One measurement as a line of `key=value` fields separated by tabs, appended to a
//! results file, so the script can run cases as separate processes and `report`
//! can put them side by side.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use anyhow::Context as _;

#[derive(Debug, Clone, Default)]
pub struct Record(pub Vec<(String, String)>);

impl Record {
    pub fn new(kind: &str, label: &str) -> Self {
        let mut r = Record::default();
        r.set("kind", kind);
        r.set("label", label);
        r
    }

    pub fn set(&mut self, key: &str, value: impl ToString) -> &mut Self {
        let value = value.to_string().replace(['\t', '\n'], " ");
        self.0.push((key.to_owned(), value));
        self
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// A numeric field; NaN when missing, so a broken case shows as such in the table.
    pub fn num(&self, key: &str) -> f64 {
        self.get(key)
            .and_then(|v| v.parse().ok())
            .unwrap_or(f64::NAN)
    }

    pub fn line(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("\t")
    }

    pub fn parse(line: &str) -> Record {
        Record(
            line.split('\t')
                .filter_map(|f| f.split_once('='))
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .collect(),
        )
    }

    /// Prints the record and, when asked, appends it to the results file.
    pub fn emit(&self, results: Option<&Path>) -> anyhow::Result<()> {
        println!("{}", self.line());
        if let Some(path) = results {
            let mut f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("cannot open {}", path.display()))?;
            writeln!(f, "{}", self.line())?;
        }
        Ok(())
    }
}
