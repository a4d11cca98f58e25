//! Same seed, same batches: shuffling and augmentation depend only on (seed, epoch, item).
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use std::sync::Arc;

use burn::data::dataloader::batcher::Batcher;
use burn::data::dataset::Dataset;
use vesalius_data::augment::Augment2d;
use vesalius_data::batch::{BatchTargets, ClassificationBatch, ClassificationBatcher, SeededItem, epoch_batches};
use vesalius_data::dataset::{ClassificationDataset, ClassificationItem};
use vesalius_data::source::{Label, Pixels};

type B = burn::backend::Flex;

fn dataset() -> ClassificationDataset {
    let items = (0..50)
        .map(|i| ClassificationItem {
            pixels: Arc::new(Pixels::U8((0..2 * 16 * 16).map(|p| ((p * 7 + i * 13) % 256) as u8).collect())),
            label: Label::Class(i % 3),
        })
        .collect();
    ClassificationDataset::from_items(items, 2, 16)
}

fn epoch(data: &ClassificationDataset, seed: u64, e: usize) -> Vec<(Vec<f32>, Vec<i64>)> {
    let batcher = ClassificationBatcher { channels: 2, size: 16, augment: Some(Augment2d::default()) };
    epoch_batches(data.len(), 8, seed, e, true)
        .into_iter()
        .map(|idx| {
            let items = idx.iter().map(|&(i, seed)| SeededItem { item: data.get(i).unwrap(), seed }).collect();
            let b: ClassificationBatch<B> = batcher.batch(items, &Default::default());
            let BatchTargets::Classes(t) = b.targets else { panic!("single-label batch") };
            assert_eq!(b.images.dims()[1..], [2, 16, 16]);
            (b.images.into_data().to_vec().unwrap(), t.into_data().convert::<i64>().to_vec().unwrap())
        })
        .collect()
}

#[test]
fn same_seed_same_batches() {
    let d = dataset();
    let a = epoch(&d, 42, 0);
    assert_eq!(a, epoch(&d, 42, 0));
    assert_ne!(a, epoch(&d, 43, 0));
    assert_ne!(a, epoch(&d, 42, 1));
    assert_eq!(a.len(), 7);
    let labels: usize = a.iter().map(|b| b.1.len()).sum();
    assert_eq!(labels, 50);
}

#[test]
fn evaluation_batches_are_not_augmented() {
    let d = dataset();
    let batcher = ClassificationBatcher { channels: 2, size: 16, augment: None };
    let items = vec![SeededItem { item: d.get(3).unwrap(), seed: 99 }];
    let b: ClassificationBatch<B> = batcher.batch(items, &Default::default());
    let got: Vec<f32> = b.images.into_data().to_vec().unwrap();
    assert_eq!(got, d.get(3).unwrap().pixels.to_f32());
}
