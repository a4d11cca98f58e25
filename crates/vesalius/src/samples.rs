//! `vesalius samples`: a classification recipe's samples written out as image files with a manifest, as MedMNIST's
//! `save` command does for its archives: a MedMNIST archive or a volume's patches become a folder of PNG files that
//! any recipe (`kind = "csv"`), viewer or labelling round can read.
use std::path::Path;

use vesalius_data::source::{Label, Pixels, Split, csv_field as field};

use crate::CliError;

/// What was written.
pub struct Written {
    /// Images written.
    pub images: usize,
    /// Samples per split written.
    pub per_split: Vec<(Split, usize)>,
}

/// Writes the samples of `splits` (all when empty) of the classification recipe at `recipe` as 8-bit PNG files
/// `OUT/<split>/<nnnnn>.png` (values in `[0, 1]` scaled to 0–255) and `OUT/manifest.csv`
/// (`path,label,patient_id,split,source_id`, paths relative to `OUT`), the splits those of the recipe's run.
pub fn samples(recipe: &Path, splits: &[Split], out: &Path) -> Result<Written, CliError> {
    let recipe = vesalius_cadx::recipe::Recipe::from_file(recipe)?;
    let data = vesalius_cadx::train::prepare_data(&recipe)?;
    let s = &data.samples;
    if s.channels != 1 && s.channels != 3 {
        return Err(CliError::Usage(format!("the data has {} channels; PNG files hold one or three", s.channels)));
    }
    let wanted = |split: Split| splits.is_empty() || splits.contains(&split);
    let mut manifest = String::from("path,label,patient_id,split,source_id\n");
    let mut per_split: Vec<(Split, usize)> = Vec::new();
    let mut images = 0;
    for split in [Split::Train, Split::Val, Split::Test].into_iter().filter(|&x| wanted(x)) {
        let folder = out.join(split.name());
        std::fs::create_dir_all(&folder).map_err(|e| CliError::Internal(format!("{}: {e}", folder.display())))?;
        let mut count = 0;
        for sample in s.samples.iter().filter(|x| x.split == Some(split)) {
            let values: Vec<f32> = match &sample.pixels {
                Pixels::U8(v) => v.iter().map(|&b| f32::from(b)).collect(),
                Pixels::F32(v) => v.iter().map(|&x| (x * 255.0).round().clamp(0.0, 255.0)).collect(),
            };
            let image = vesalius_io::Image::new(values, vec![s.size, s.size], s.channels, vesalius_io::ITK_2D_AFFINE, "uint8")
                .map_err(|e| CliError::Internal(e.to_string()))?;
            let name = format!("{}/{count:05}.png", split.name());
            vesalius_io::save_2d(&out.join(&name), &image)?;
            let label = match &sample.label {
                Label::Class(c) => s.classes[*c].clone(),
                Label::Multi(flags) => {
                    s.classes.iter().zip(flags).filter(|(_, f)| **f > 0).map(|(c, _)| c.as_str()).collect::<Vec<_>>().join(";")
                }
            };
            let patient = sample.patient.as_deref().unwrap_or("");
            manifest.push_str(&format!("{name},{},{},{},{}\n", field(&label), field(patient), split.name(), field(&sample.id)));
            count += 1;
        }
        images += count;
        per_split.push((split, count));
    }
    vesalius_io::write_atomic(&out.join("manifest.csv"), manifest.as_bytes()).map_err(|e| CliError::Internal(e.to_string()))?;
    Ok(Written { images, per_split })
}
