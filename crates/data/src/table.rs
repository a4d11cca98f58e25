//! Tables of subjects (CSV): times, events, patient ids and features. Numeric columns stay numeric; a column with
//! any non-numeric value is categorical and dummy-coded (one 0/1 column per level but the first, levels sorted).
//! Missing values (empty, `NA`, `NaN`) are errors that name the row and column. The encoding and a
//! standardisation (mean and standard deviation of each encoded column) are fitted on training rows and stored
//! with a run, so that new tables are encoded the same way.
//!
//! ```
//! use vesalius_data::table::{read_csv, Encoding};
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("t.csv");
//! std::fs::write(&path, "time,event,grade,age\n5,1,II,50\n8,0,I,61\n3,1,III,45\n").unwrap();
//! let raw = read_csv(&path).unwrap();
//! let enc = Encoding::fit(&raw, &["grade".into(), "age".into()]).unwrap();
//! assert_eq!(enc.names(), ["grade=II", "grade=III", "age"]);
//! assert_eq!(enc.encode_row(&raw, 2).unwrap(), vec![0.0, 1.0, 45.0]);
//! ```
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// Largest table read (rows).
pub const MAX_ROWS: usize = 5_000_000;

/// A CSV table as text cells.
#[derive(Clone, Debug, PartialEq)]
pub struct RawTable {
    /// Where it came from (for messages).
    pub source: String,
    /// Column names.
    pub header: Vec<String>,
    /// Rows of cells.
    pub rows: Vec<Vec<String>>,
}

impl RawTable {
    /// The index of column `name`, or an error naming the columns there are.
    pub fn column(&self, name: &str) -> Result<usize, DataError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| DataError::Invalid(format!("{}: no column \"{name}\" (columns: {})", self.source, self.header.join(", "))))
    }

    /// The numeric value of cell `(row, col)`, or an error naming both.
    pub fn number(&self, row: usize, col: usize) -> Result<f64, DataError> {
        let cell = self.rows[row][col].trim();
        match cell.parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(v),
            _ => Err(DataError::Invalid(format!(
                "{}: row {} column \"{}\": {} is not a finite number",
                self.source,
                row + 2,
                self.header[col],
                if cell.is_empty() { "an empty cell".to_string() } else { format!("\"{cell}\"") }
            ))),
        }
    }
}

/// Whether a cell is missing: empty, `NA`, `NaN`, `nan` or `N/A`.
pub fn is_missing(cell: &str) -> bool {
    matches!(cell.trim(), "" | "NA" | "NaN" | "nan" | "N/A")
}

/// Reads a CSV file with a header row.
pub fn read_csv(path: &Path) -> Result<RawTable, DataError> {
    let source = path.display().to_string();
    let mut reader = csv::Reader::from_path(path).map_err(|e| DataError::Invalid(format!("{source}: {e}")))?;
    let header: Vec<String> =
        reader.headers().map_err(|e| DataError::Invalid(format!("{source}: {e}")))?.iter().map(str::to_string).collect();
    let mut rows = Vec::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| DataError::Invalid(format!("{source}: {e}")))?;
        if record.len() != header.len() {
            return Err(DataError::Invalid(format!("{source}: row {} has {} cells, the header {}", i + 2, record.len(), header.len())));
        }
        rows.push(record.iter().map(str::to_string).collect());
        if rows.len() > MAX_ROWS {
            return Err(DataError::Invalid(format!("{source}: more than {MAX_ROWS} rows")));
        }
    }
    if rows.is_empty() {
        return Err(DataError::Invalid(format!("{source}: no rows")));
    }
    Ok(RawTable { source, header, rows })
}

/// How one source column is encoded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ColumnEncoding {
    /// A numeric column.
    Numeric {
        /// Column name.
        name: String,
    },
    /// A categorical column: one 0/1 column per level but the first.
    Categorical {
        /// Column name.
        name: String,
        /// Levels, sorted; the first is the reference.
        levels: Vec<String>,
    },
}

/// The encoding of a table's feature columns.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Encoding {
    /// One entry per source column.
    pub columns: Vec<ColumnEncoding>,
}

impl Encoding {
    /// Fits the encoding of `features` on the rows of `table`: numeric columns stay numbers, text columns are
    /// dummy-coded.
    pub fn fit(table: &RawTable, features: &[String]) -> Result<Self, DataError> {
        Self::fit_with(table, features, &[])
    }

    /// As [`Encoding::fit`], with the columns named in `categorical` dummy-coded even when they hold numbers
    /// (codes such as a treatment arm 0–3).
    pub fn fit_with(table: &RawTable, features: &[String], categorical: &[String]) -> Result<Self, DataError> {
        if let Some(c) = categorical.iter().find(|c| !features.contains(c)) {
            return Err(DataError::Invalid(format!("{}: categorical column \"{c}\" is not among the features", table.source)));
        }
        let mut columns = Vec::with_capacity(features.len());
        for name in features {
            let c = table.column(name)?;
            if let Some(row) = table.rows.iter().position(|r| is_missing(&r[c])) {
                return Err(DataError::Invalid(format!("{}: row {} column \"{name}\" is missing", table.source, row + 2)));
            }
            if !categorical.contains(name) && table.rows.iter().all(|r| r[c].trim().parse::<f64>().is_ok_and(f64::is_finite)) {
                columns.push(ColumnEncoding::Numeric { name: name.clone() });
            } else {
                let mut levels: Vec<String> = table.rows.iter().map(|r| r[c].trim().to_string()).collect();
                levels.sort();
                levels.dedup();
                if levels.len() > 1000 {
                    return Err(DataError::Invalid(format!(
                        "{}: column \"{name}\" has {} distinct text values",
                        table.source,
                        levels.len()
                    )));
                }
                columns.push(ColumnEncoding::Categorical { name: name.clone(), levels });
            }
        }
        Ok(Self { columns })
    }

    /// Names of the encoded columns (`name`, or `name=level` for dummies).
    pub fn names(&self) -> Vec<String> {
        self.columns
            .iter()
            .flat_map(|c| match c {
                ColumnEncoding::Numeric { name } => vec![name.clone()],
                ColumnEncoding::Categorical { name, levels } => levels[1..].iter().map(|l| format!("{name}={l}")).collect(),
            })
            .collect()
    }

    /// The encoded features of row `row`.
    pub fn encode_row(&self, table: &RawTable, row: usize) -> Result<Vec<f64>, DataError> {
        let mut out = Vec::new();
        for c in &self.columns {
            match c {
                ColumnEncoding::Numeric { name } => out.push(table.number(row, table.column(name)?)?),
                ColumnEncoding::Categorical { name, levels } => {
                    let cell = table.rows[row][table.column(name)?].trim().to_string();
                    if !levels.contains(&cell) {
                        return Err(DataError::Invalid(format!(
                            "{}: row {} column \"{name}\": \"{cell}\" is not one of the levels seen in training ({})",
                            table.source,
                            row + 2,
                            levels.join(", ")
                        )));
                    }
                    out.extend(levels[1..].iter().map(|l| if *l == cell { 1.0 } else { 0.0 }));
                }
            }
        }
        Ok(out)
    }
}

/// The feature columns of a table: `listed` (each must exist), or every column that is neither `reserved` (target,
/// id, time… columns) nor in `exclude` (each must exist). Errors when none is left.
pub fn feature_columns(
    table: &RawTable,
    listed: Option<&[String]>,
    reserved: &[&str],
    exclude: &[String],
) -> Result<Vec<String>, DataError> {
    for c in exclude.iter().chain(listed.into_iter().flatten()) {
        table.column(c)?;
    }
    let features: Vec<String> = match listed {
        Some(f) => f.to_vec(),
        None => table.header.iter().filter(|h| !reserved.contains(&h.as_str()) && !exclude.contains(h)).cloned().collect(),
    };
    if features.is_empty() {
        return Err(DataError::Invalid(format!("{}: no feature columns", table.source)));
    }
    Ok(features)
}

/// The distinct values of cells, sorted numerically when every one is a number, alphabetically otherwise.
pub fn sorted_levels<'a>(cells: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut levels: Vec<String> =
        cells.into_iter().map(|c| c.trim().to_string()).collect::<std::collections::BTreeSet<_>>().into_iter().collect();
    if levels.iter().all(|v| v.parse::<f64>().is_ok_and(f64::is_finite)) {
        levels.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
    }
    levels
}

/// Per-column standardisation `(x − mean) / std` fitted on training rows (constant columns keep std 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Standardise {
    /// Means.
    pub mean: Vec<f64>,
    /// Standard deviations (sample, n − 1).
    pub std: Vec<f64>,
}

impl Standardise {
    /// Fits on rows.
    pub fn fit(rows: &[Vec<f64>]) -> Self {
        let p = rows.first().map_or(0, Vec::len);
        let n = rows.len() as f64;
        let mean: Vec<f64> = (0..p).map(|j| rows.iter().map(|r| r[j]).sum::<f64>() / n).collect();
        let std = (0..p)
            .map(|j| {
                let v = rows.iter().map(|r| (r[j] - mean[j]).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
                if v > 0.0 { v.sqrt() } else { 1.0 }
            })
            .collect();
        Self { mean, std }
    }

    /// A standardised row.
    pub fn apply(&self, row: &[f64]) -> Vec<f64> {
        row.iter().enumerate().map(|(j, v)| (v - self.mean[j]) / self.std[j]).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table() -> RawTable {
        let header = ["id", "age", "arm", "y"].iter().map(|s| s.to_string()).collect();
        let rows = vec![vec!["a".into(), "50".into(), "2".into(), "1.5".into()], vec!["b".into(), "61".into(), "10".into(), "2".into()]];
        RawTable { source: "t.csv".into(), header, rows }
    }

    #[test]
    fn feature_columns_are_listed_or_what_is_left() {
        let t = table();
        assert_eq!(feature_columns(&t, None, &["id", "y"], &[]).unwrap(), ["age", "arm"]);
        assert_eq!(feature_columns(&t, None, &["id", "y"], &["arm".into()]).unwrap(), ["age"]);
        assert_eq!(feature_columns(&t, Some(&["arm".into()]), &["id"], &[]).unwrap(), ["arm"]);
        assert!(feature_columns(&t, Some(&["bmi".into()]), &[], &[]).unwrap_err().to_string().contains("bmi"));
        assert!(feature_columns(&t, None, &["id", "y"], &["age".into(), "arm".into()]).unwrap_err().to_string().contains("no feature"));
    }

    #[test]
    fn levels_sort_as_numbers_when_they_all_are() {
        assert_eq!(sorted_levels(["10", "2", "2", " 1"]), ["1", "2", "10"]);
        assert_eq!(sorted_levels(["II", "III", "I", "II"]), ["I", "II", "III"]);
        assert_eq!(sorted_levels(["2", "x", "10"]), ["10", "2", "x"]);
    }

    #[test]
    fn categorical_codes_are_dummy_coded_when_asked() {
        let t = table();
        let e = Encoding::fit_with(&t, &["age".into(), "arm".into()], &["arm".into()]).unwrap();
        assert_eq!(e.names(), ["age", "arm=2"]); // levels sorted as text: "10" < "2"
        assert_eq!(e.encode_row(&t, 0).unwrap(), [50.0, 1.0]);
        assert!(Encoding::fit_with(&t, &["age".into()], &["arm".into()]).is_err());
    }
}
