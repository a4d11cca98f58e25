//! Batching with seeded shuffling and seeded augmentation: the same seed gives the same batches.
use burn::data::dataloader::batcher::Batcher;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::augment::Augment2d;
use crate::dataset::ClassificationItem;
use crate::source::Label;

/// An item with the seed of its own augmentation, so that augmentation does not depend on batch composition or
/// thread scheduling.
#[derive(Clone, Debug)]
pub struct SeededItem {
    /// The item.
    pub item: ClassificationItem,
    /// Seed of this item's augmentation draw.
    pub seed: u64,
}

/// Targets of a batch.
#[derive(Clone, Debug)]
pub enum BatchTargets<B: Backend> {
    /// Class indices `[batch]`.
    Classes(Tensor<B, 1, Int>),
    /// 0/1 flags `[batch, labels]`.
    Multi(Tensor<B, 2>),
}

/// Images `[batch, channels, size, size]` with their targets.
#[derive(Clone, Debug)]
pub struct ClassificationBatch<B: Backend> {
    /// Images.
    pub images: Tensor<B, 4>,
    /// Targets.
    pub targets: BatchTargets<B>,
}

impl<B: Backend> BatchTargets<B> {
    fn to_device(&self, device: &B::Device) -> Self {
        match self {
            Self::Classes(t) => Self::Classes(t.clone().to_device(device)),
            Self::Multi(t) => Self::Multi(t.clone().to_device(device)),
        }
    }
}

impl<B: Backend> ClassificationBatch<B> {
    /// Items `range` of the batch on `device` (a device's part in data-parallel training).
    pub fn part(&self, range: &std::ops::Range<usize>, device: &B::Device) -> Self {
        let n = self.images.dims()[0];
        if range.start == 0 && range.len() == n {
            // One device takes the whole batch: no copy.
            return Self { images: self.images.clone().to_device(device), targets: self.targets.to_device(device) };
        }
        let (start, len) = (range.start, range.len().min(n.saturating_sub(range.start)));
        let targets = match &self.targets {
            BatchTargets::Classes(t) => BatchTargets::Classes(t.clone().narrow(0, start, len).to_device(device)),
            BatchTargets::Multi(t) => BatchTargets::Multi(t.clone().narrow(0, start, len).to_device(device)),
        };
        Self { images: self.images.clone().narrow(0, start, len).to_device(device), targets }
    }
}

/// Builds [`ClassificationBatch`]es, augmenting each item with its own seed when `augment` is set.
#[derive(Clone, Debug)]
pub struct ClassificationBatcher {
    /// Channels of every item.
    pub channels: usize,
    /// Side of every item.
    pub size: usize,
    /// Augmentation for training batches; `None` for evaluation.
    pub augment: Option<Augment2d>,
}

impl<B: Backend> Batcher<B, SeededItem, ClassificationBatch<B>> for ClassificationBatcher {
    fn batch(&self, items: Vec<SeededItem>, device: &B::Device) -> ClassificationBatch<B> {
        let n = items.len();
        let per = self.channels * self.size * self.size;
        let mut pixels = Vec::with_capacity(n * per);
        for s in &items {
            let mut p = s.item.pixels.to_f32();
            if let Some(aug) = &self.augment {
                aug.apply(&mut p, self.channels, self.size, &mut ChaCha8Rng::seed_from_u64(s.seed));
            }
            pixels.extend_from_slice(&p);
        }
        let images = Tensor::from_data(TensorData::new(pixels, [n, self.channels, self.size, self.size]), device);
        let targets = match items.first().map(|s| &s.item.label) {
            Some(Label::Multi(first)) => {
                let k = first.len();
                let flags: Vec<f32> = items
                    .iter()
                    .flat_map(|s| match &s.item.label {
                        Label::Multi(f) => f.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                        Label::Class(c) => (0..k).map(|i| f32::from(u8::from(i == *c))).collect(),
                    })
                    .collect();
                BatchTargets::Multi(Tensor::from_data(TensorData::new(flags, [n, k]), device))
            }
            _ => {
                let classes: Vec<i64> = items
                    .iter()
                    .map(|s| match &s.item.label {
                        Label::Class(c) => *c as i64,
                        Label::Multi(f) => f.iter().position(|&v| v != 0).unwrap_or(0) as i64,
                    })
                    .collect();
                BatchTargets::Classes(Tensor::from_data(TensorData::new(classes, [n]), device))
            }
        };
        ClassificationBatch { images, targets }
    }
}

pub use vesalius_io::mix;

/// The batches of one epoch: dataset indices with each item's augmentation seed.
///
/// With `shuffle`, indices are permuted by ChaCha8 seeded from `(seed, epoch)`; item seeds derive from
/// `(seed, epoch, index)`. The last batch may be smaller.
pub fn epoch_batches(len: usize, batch_size: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<Vec<(usize, u64)>> {
    let mut order: Vec<usize> = (0..len).collect();
    let epoch_seed = mix(seed ^ mix(epoch as u64));
    if shuffle {
        order.shuffle(&mut ChaCha8Rng::seed_from_u64(epoch_seed));
    }
    order.chunks(batch_size.max(1)).map(|c| c.iter().map(|&i| (i, mix(epoch_seed ^ mix(i as u64 + 1)))).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_epoch_order_and_every_index_once() {
        let a = epoch_batches(103, 10, 5, 2, true);
        let b = epoch_batches(103, 10, 5, 2, true);
        assert_eq!(a, b);
        assert_eq!(a.len(), 11);
        let mut all: Vec<usize> = a.iter().flatten().map(|p| p.0).collect();
        all.sort();
        assert_eq!(all, (0..103).collect::<Vec<_>>());
        assert_ne!(a, epoch_batches(103, 10, 5, 3, true));
        assert_ne!(a, epoch_batches(103, 10, 6, 2, true));
        let ordered = epoch_batches(5, 2, 1, 0, false);
        assert_eq!(ordered.iter().flatten().map(|p| p.0).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
    }
}
