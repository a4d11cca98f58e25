//! `vesalius radiomics`: IBSI features of labelled regions, one CSV row per image and label.
use crate::CliError;
use std::path::Path;
use vesalius_radiomics::{Settings, extract, labels};

/// Reads the settings file (when given) and applies the command-line overrides.
pub fn settings(config: Option<&Path>, bin_width: Option<f64>, bin_count: Option<usize>) -> Result<Settings, CliError> {
    let mut s = match config {
        Some(p) => {
            let text = std::fs::read_to_string(p).map_err(|e| CliError::Usage(format!("{}: {e}", p.display())))?;
            toml::from_str::<Settings>(&text).map_err(|e| CliError::Usage(format!("{}: {}", p.display(), e.message())))?
        }
        None => Settings::default(),
    };
    if bin_width.is_some() {
        s.bin_width = bin_width;
        s.bin_count = None;
    }
    if bin_count.is_some() {
        s.bin_count = bin_count;
        s.bin_width = None;
    }
    Ok(s)
}

fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_string() }
}

/// Runs the command: features of every (image, mask, label), written as CSV to `output` (atomically) or printed.
pub fn run(
    files: &[std::path::PathBuf],
    label: Option<f32>,
    config: Option<&Path>,
    bin_width: Option<f64>,
    bin_count: Option<usize>,
    output: Option<&Path>,
) -> Result<(), CliError> {
    if !files.len().is_multiple_of(2) {
        return Err(CliError::Usage(format!("radiomics takes IMAGE MASK pairs; got {} files", files.len())));
    }
    let settings = settings(config, bin_width, bin_count)?;
    // rows of 2D and 3D images carry different shape features: the header is the union, first seen first
    let mut header: Vec<String> = Vec::new();
    let mut rows: Vec<(Vec<String>, vesalius_radiomics::Features)> = Vec::new();
    for pair in files.chunks(2) {
        let (ip, mp) = (&pair[0], &pair[1]);
        let image = crate::commands::load_input(ip, None)?;
        let mask = crate::commands::load_input(mp, None)?;
        let wanted = match label {
            Some(l) => vec![l],
            None => labels(&mask),
        };
        if wanted.is_empty() {
            return Err(CliError::Usage(format!("{}: the mask has no non-zero label", mp.display())));
        }
        for l in wanted {
            let f = extract(&image, &mask, l, &settings)
                .map_err(|e| CliError::Usage(format!("{} with {} (label {l}): {e}", ip.display(), mp.display())))?;
            for (n, _) in &f.0 {
                if !header.contains(n) {
                    header.push(n.clone());
                }
            }
            rows.push((vec![csv_field(&ip.display().to_string()), csv_field(&mp.display().to_string()), format!("{l}")], f));
        }
    }
    let mut text = String::from("image,mask,label");
    for n in &header {
        text.push(',');
        text.push_str(n);
    }
    text.push('\n');
    for (mut row, f) in rows {
        row.extend(header.iter().map(|n| f.get(n).map(|v| format!("{v}")).unwrap_or_default()));
        text.push_str(&row.join(","));
        text.push('\n');
    }
    match output {
        Some(p) => vesalius_io::write_atomic(p, text.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?,
        None => print!("{text}"),
    }
    Ok(())
}
