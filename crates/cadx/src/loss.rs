//! Classification losses with optional class weights.
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};

/// Cross-entropy of `logits` `[n, k]` against class indices `[n]`, weighted per class as PyTorch's
/// `cross_entropy(weight=w)`: `Σ w[yᵢ]·(−log pᵢ,yᵢ) / Σ w[yᵢ]`. Without weights, the plain mean.
pub fn cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 1, Int>, weights: Option<&[f32]>) -> Tensor<B, 1> {
    let [n, _] = logits.dims();
    let device = logits.device();
    let logp = log_softmax(logits, 1);
    let picked = logp.gather(1, targets.clone().reshape([n, 1])).reshape([n]);
    match weights {
        None => picked.mean().neg(),
        Some(w) => {
            let w = Tensor::<B, 1>::from_data(TensorData::new(w.to_vec(), [w.len()]), &device);
            let wt = w.select(0, targets);
            (picked * wt.clone()).sum().neg() / wt.sum()
        }
    }
}

/// Binary cross-entropy with logits `[n, l]` against 0/1 targets `[n, l]`, mean over all entries, with optional
/// positive weights per label (PyTorch's `binary_cross_entropy_with_logits(pos_weight=…)`). Numerically stable.
pub fn binary_cross_entropy<B: Backend>(logits: Tensor<B, 2>, targets: Tensor<B, 2>, pos_weight: Option<&[f32]>) -> Tensor<B, 1> {
    let [_, l] = logits.dims();
    let device = logits.device();
    // log σ(x) = −softplus(−x), log(1 − σ(x)) = −softplus(x); softplus(x) = max(x, 0) + log1p(exp(−|x|)).
    let softplus = |x: Tensor<B, 2>| x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p();
    let log_p = softplus(logits.clone().neg()).neg();
    let log_not_p = softplus(logits).neg();
    let pos = match pos_weight {
        None => targets.clone() * log_p,
        Some(w) => {
            let w = Tensor::<B, 1>::from_data(TensorData::new(w.to_vec(), [l]), &device).reshape([1, l]);
            targets.clone() * log_p * w
        }
    };
    let neg = (targets.neg() + 1.0) * log_not_p;
    (pos + neg).mean().neg()
}

#[cfg(test)]
mod tests {
    use super::*;
    type B = burn::backend::Flex;

    #[test]
    fn weighted_cross_entropy_matches_by_hand() {
        let d = Default::default();
        let logits = Tensor::<B, 2>::from_data(TensorData::from([[2.0f32, 0.0], [0.0, 1.0], [1.0, 1.0]]), &d);
        let t = Tensor::<B, 1, Int>::from_data(TensorData::from([0i64, 1, 0]), &d);
        let l = |a: f64, b: f64| -(a - (a.exp() + b.exp()).ln());
        let (l0, l1, l2) = (l(2.0, 0.0), l(1.0, 0.0), l(1.0, 1.0));
        let plain: f32 = cross_entropy(logits.clone(), t.clone(), None).into_scalar();
        assert!((plain as f64 - (l0 + l1 + l2) / 3.0).abs() < 1e-6);
        let w: f32 = cross_entropy(logits, t, Some(&[1.0, 3.0])).into_scalar();
        assert!((w as f64 - (l0 + 3.0 * l1 + l2) / 5.0).abs() < 1e-6);
    }

    #[test]
    fn bce_matches_by_hand_and_is_stable() {
        let d = Default::default();
        let x = Tensor::<B, 2>::from_data(TensorData::from([[0.5f32, -1.0], [100.0, -100.0]]), &d);
        let y = Tensor::<B, 2>::from_data(TensorData::from([[1.0f32, 0.0], [1.0, 1.0]]), &d);
        let s = |v: f64| 1.0 / (1.0 + (-v).exp());
        let expect = (-(s(0.5)).ln() - (1.0 - s(-1.0)).ln() + 0.0 + 100.0) / 4.0;
        let got: f32 = binary_cross_entropy(x.clone(), y.clone(), None).into_scalar();
        assert!((got as f64 - expect).abs() < 1e-5, "{got} vs {expect}");
        let w: f32 = binary_cross_entropy(x, y, Some(&[2.0, 1.0])).into_scalar();
        let expect_w = (-2.0 * (s(0.5)).ln() - (1.0 - s(-1.0)).ln() + 0.0 + 100.0) / 4.0;
        assert!((w as f64 - expect_w).abs() < 1e-5);
    }
}
