//! In-memory classification datasets as burn [`Dataset`]s.
use std::sync::Arc;

use burn::data::dataset::Dataset;

use crate::source::{Label, Pixels, Samples, Split};

/// One image and its label, ready for batching.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassificationItem {
    /// `[channels, size, size]` pixels.
    pub pixels: Arc<Pixels>,
    /// Ground truth.
    pub label: Label,
}

/// The samples of one split, shared cheaply between threads.
#[derive(Clone, Debug)]
pub struct ClassificationDataset {
    items: Vec<ClassificationItem>,
    ids: Vec<String>,
    patients: Vec<Option<String>>,
    /// Channels of every item.
    pub channels: usize,
    /// Side of every item.
    pub size: usize,
}

impl ClassificationDataset {
    /// The samples of `split` from `samples`, in source order.
    pub fn from_split(samples: &Samples, split: Split) -> Self {
        let chosen: Vec<_> = samples.of_split(split).collect();
        Self {
            items: chosen.iter().map(|s| ClassificationItem { pixels: Arc::new(s.pixels.clone()), label: s.label.clone() }).collect(),
            ids: chosen.iter().map(|s| s.id.clone()).collect(),
            patients: chosen.iter().map(|s| s.patient.clone()).collect(),
            channels: samples.channels,
            size: samples.size,
        }
    }

    /// A dataset from items directly.
    pub fn from_items(items: Vec<ClassificationItem>, channels: usize, size: usize) -> Self {
        let ids = (0..items.len()).map(|i| i.to_string()).collect();
        let patients = vec![None; items.len()];
        Self { items, ids, patients, channels, size }
    }

    /// Patient id of every item (`None` where the source gave none), in item order.
    pub fn patients(&self) -> &[Option<String>] {
        &self.patients
    }

    /// Identifier of item `i` (file path or patch position).
    pub fn id(&self, i: usize) -> &str {
        &self.ids[i]
    }

    /// All labels, in order.
    pub fn labels(&self) -> impl Iterator<Item = &Label> {
        self.items.iter().map(|i| &i.label)
    }

    /// Number of items of each class (single-label) or positives per label (multi-label), over `classes` entries.
    pub fn class_counts(&self, classes: usize) -> Vec<usize> {
        let mut counts = vec![0; classes];
        for item in &self.items {
            match &item.label {
                Label::Class(c) if *c < classes => counts[*c] += 1,
                Label::Multi(flags) => {
                    for (c, &f) in flags.iter().enumerate().take(classes) {
                        counts[c] += usize::from(f != 0);
                    }
                }
                Label::Class(_) => {}
            }
        }
        counts
    }
}

impl Dataset<ClassificationItem> for ClassificationDataset {
    fn get(&self, index: usize) -> Option<ClassificationItem> {
        self.items.get(index).cloned()
    }

    fn len(&self) -> usize {
        self.items.len()
    }
}
