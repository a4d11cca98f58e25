//! The CPU backend's random tensors after `seed`: the values of burn's reference sampler (`TensorData::random`, one
//! draw of the seeded generator per element, in order), recorded here from it, so that seeded runs keep their initial
//! weights, dropout masks and noise whatever loop the backend samples them in. Each distribution's first values and
//! the sum of 10,000 draws must match exactly, and so must the next draws (the generator's state carries over).
#![cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::backend::Flex;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Tensor};

/// The first four of 10,000 draws, their sum (in f64, in order), and the first three of the next draw.
fn draws(d: Distribution) -> ([f32; 4], f64, [f32; 3]) {
    let device = Default::default();
    Flex::seed(&device, 7);
    let v = Tensor::<Flex, 1>::random([10_000], d, &device).into_data().to_vec::<f32>().unwrap();
    let next = Tensor::<Flex, 2>::random([3, 1], d, &device).into_data().to_vec::<f32>().unwrap();
    ([v[0], v[1], v[2], v[3]], v.iter().map(|&x| f64::from(x)).sum(), [next[0], next[1], next[2]])
}

/// Recorded from burn 0.21's `TensorData::random` (the backend's sampler before its loop was hoisted), seed 7.
#[allow(clippy::type_complexity)]
const REFERENCE: [(Distribution, [f32; 4], f64, [f32; 3]); 4] = [
    (Distribution::Default, [0.41664094, 0.030317307, 0.14255327, 0.30708623], 4980.120787262917, [0.8385681, 0.85433066, 0.29955137]),
    (
        Distribution::Uniform(-2.0, 3.0),
        [0.08320427, -1.8484135, -1.287234, -0.46456885],
        4900.602454423904,
        [2.1928406, 2.2716532, -0.50224316],
    ),
    (Distribution::Bernoulli(0.3), [1.0, 0.0, 1.0, 0.0], 3016.0, [1.0, 0.0, 0.0]),
    (
        Distribution::Normal(1.0, 2.0),
        [-1.0871532, -0.15349555, -0.42250863, 1.2325943],
        9784.951454763243,
        [1.5228375, 2.2963817, 0.62441415],
    ),
];

#[test]
fn seeded_random_tensors_are_the_reference_samplers_values() {
    let _turn = crate::take_turn();
    for (d, first, sum, next) in REFERENCE {
        assert_eq!(draws(d), (first, sum, next), "{d:?}");
    }
}

/// Bernoulli draws (64 bits each) after an odd number of 32-bit words (three `Default` draws), so that draws straddle
/// the generator's blocks: the first four of 10,001, their sum, and the first three of the next draw, recorded from
/// burn 0.21's `TensorData::random` with seed 11. Dropout masks come from here.
#[test]
fn bernoulli_draws_after_an_odd_number_of_words_are_the_reference_samplers() {
    let _turn = crate::take_turn();
    let device = Default::default();
    Flex::seed(&device, 11);
    let _ = Tensor::<Flex, 1>::random([3], Distribution::Default, &device).into_data();
    let d = Distribution::Bernoulli(0.7);
    let v = Tensor::<Flex, 1>::random([10_001], d, &device).into_data().to_vec::<f32>().unwrap();
    let next = Tensor::<Flex, 2>::random([3, 1], d, &device).into_data().to_vec::<f32>().unwrap();
    let got = ([v[0], v[1], v[2], v[3]], v.iter().map(|&x| f64::from(x)).sum::<f64>(), [next[0], next[1], next[2]]);
    assert_eq!(got, ([0.0, 1.0, 1.0, 1.0], 7011.0, [1.0, 0.0, 1.0]));
}
