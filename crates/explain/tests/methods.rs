//! Every method on models whose answer is known: a score that depends only on a region, and a linear model of
//! segment means.
#![allow(clippy::unwrap_used)]
use vesalius_explain::lime::Hide;
use vesalius_explain::{
    Input, LimeConfig, gradcam, lime, mass_inside, occlusion, occlusion_coarse_to_fine, saliency, slic, smoothgrad, spearman,
};

/// A 2-channel 32 × 32 image with a bright square in the region the model looks at, and noise elsewhere.
fn scene() -> (Input, Vec<bool>) {
    let (h, w) = (32usize, 32usize);
    let region: Vec<bool> = (0..h * w).map(|i| (8..16).contains(&(i / w)) && (18..28).contains(&(i % w))).collect();
    let mut data = Vec::new();
    for c in 0..2 {
        for i in 0..h * w {
            let noise = ((i * 7919 + c * 104_729) % 97) as f32 / 97.0 * 0.3;
            data.push(if region[i] { 1.0 + noise } else { noise });
        }
    }
    (Input::new(data, 2, vec![h, w]).unwrap(), region)
}

/// score = σ(4 · (mean of channel 0 over the region − 0.5)) + 0.01 · mean of everything; its gradient by hand.
fn model(region: &[bool]) -> (impl FnMut(&[Vec<f32>]) -> Vec<f32> + '_, impl FnMut(&[f32]) -> Vec<f32> + '_) {
    let n = region.len();
    let k = region.iter().filter(|&&r| r).count() as f32;
    let inner = move |v: &[f32]| region.iter().enumerate().filter(|(_, r)| **r).map(|(i, _)| v[i]).sum::<f32>() / k;
    let score = move |batch: &[Vec<f32>]| -> Vec<f32> {
        batch.iter().map(|v| 1.0 / (1.0 + (-4.0 * (inner(v) - 0.5)).exp()) + 0.01 * v.iter().sum::<f32>() / v.len() as f32).collect()
    };
    let grad = move |v: &[f32]| -> Vec<f32> {
        let s = 1.0 / (1.0 + (-4.0 * (inner(v) - 0.5)).exp());
        let ds = 4.0 * s * (1.0 - s) / k;
        (0..v.len()).map(|i| 0.01 / v.len() as f32 + if i < n && region[i] { ds } else { 0.0 }).collect()
    };
    (score, grad)
}

#[test]
fn every_method_puts_the_mass_in_the_region_that_decides() {
    let (x, region) = scene();
    let (mut score, mut grad) = model(&region);
    let s = saliency(&x, &mut grad);
    assert!(mass_inside(&s, &region) > 0.9, "saliency {}", mass_inside(&s, &region));
    let sg = smoothgrad(&x, &mut grad, 20, 0.15, 3);
    assert!(mass_inside(&sg, &region) > 0.8, "smoothgrad {}", mass_inside(&sg, &region));
    let occ = occlusion(&x, &mut score, &[4, 4], &[2, 2], 0.0, 16);
    assert!(mass_inside(&occ, &region) > 0.8, "occlusion {}", mass_inside(&occ, &region));
    let seg = slic(&x, 30, 0.1);
    let r = lime(&x, &seg, &mut score, &LimeConfig { samples: 400, ..LimeConfig::default() });
    assert!(mass_inside(&r.map, &region) > 0.8, "lime {}", mass_inside(&r.map, &region));
    assert!(r.r2 > 0.5, "{}", r.r2);
    // the top segment lies in the region
    let top = r.top[0].0;
    let inside = (0..region.len()).filter(|&i| seg[i] == top).filter(|&i| region[i]).count();
    assert!(inside * 2 > (0..region.len()).filter(|&i| seg[i] == top).count());
    // Grad-CAM's weighting: a layer of two maps, one lit in the region and one of noise, whose gradients are a
    // positive and a small negative constant
    let n = region.len();
    let act: Vec<f32> = (0..2 * n).map(|i| if i < n { f32::from(u8::from(region[i])) } else { x.data[n + i - n] }).collect();
    let grads: Vec<f32> = (0..2 * n).map(|i| if i < n { 0.5 } else { -0.1 }).collect();
    let cam = gradcam(&act, &grads, 2, &[32, 32], &[32, 32]);
    assert!(mass_inside(&cam, &region) > 0.99, "gradcam {}", mass_inside(&cam, &region));
    // at half resolution, up-sampled: still inside
    let half: Vec<f32> = (0..256).map(|i| f32::from(u8::from(region[(i / 16 * 2) * 32 + (i % 16) * 2]))).collect();
    let cam = gradcam(&half, &[1.0; 256], 1, &[16, 16], &[32, 32]);
    assert!(mass_inside(&cam, &region) > 0.8, "gradcam up-sampled {}", mass_inside(&cam, &region));
}

#[test]
fn coarse_to_fine_occlusion_of_a_volume_costs_a_fraction_of_the_fine_pass() {
    let (d, h, w) = (24usize, 24usize, 24usize);
    let region: Vec<bool> = (0..d * h * w)
        .map(|i| (4..10).contains(&(i / (h * w))) && (12..20).contains(&((i / w) % h)) && (2..8).contains(&(i % w)))
        .collect();
    let data: Vec<f32> = region.iter().enumerate().map(|(i, &r)| if r { 1.0 } else { ((i % 11) as f32) / 40.0 }).collect();
    let x = Input::new(data, 1, vec![d, h, w]).unwrap();
    let (mut score, _) = model(&region);
    let mut calls = 0usize;
    let mut counted = |b: &[Vec<f32>]| {
        calls += b.len();
        score(b)
    };
    let (map, scored) = occlusion_coarse_to_fine(&x, &mut counted, &[8, 8, 8], 0.0, 0.1, 64);
    assert_eq!(scored, calls);
    // the full fine pass (patch 4, stride 2) would score 11³ = 1331 inputs
    assert!(calls < 1331 / 3, "{calls}");
    // occlusion spreads a drop over the occluding patch: the mass lies in the region grown by half a coarse patch
    let grown: Vec<bool> = (0..d * h * w)
        .map(|i| {
            let (z, y, xx) = ((i / (h * w)) as i64, ((i / w) % h) as i64, (i % w) as i64);
            (0..=9 + 4).contains(&z) && (8..20 + 4).contains(&y) && (-4..8 + 4).contains(&xx)
        })
        .collect();
    assert!(mass_inside(&map, &grown) > 0.9, "{}", mass_inside(&map, &grown));
    assert!(mass_inside(&map, &region) > 0.3, "{}", mass_inside(&map, &region));
}

#[test]
fn lime_recovers_the_signs_and_order_of_a_linear_model() {
    // 16 × 16 image of ones in a 4 × 4 grid of blocks; score = Σ wₖ · mean of block k; hidden blocks read 0
    let w: Vec<f32> = vec![3.0, -2.2, 1.5, 0.05, -0.5, 2.5, 0.25, -1.1, 0.75, -3.5, 0.9, 0.1, -0.2, 0.6, -1.3, 2.0];
    let seg: Vec<u32> = (0..256).map(|i| ((i / 16) / 4 * 4 + (i % 16) / 4) as u32).collect();
    let x = Input::new(vec![1.0; 256], 1, vec![16, 16]).unwrap();
    let mut score = |b: &[Vec<f32>]| -> Vec<f32> {
        b.iter().map(|v| (0..16).map(|k| w[k] * (0..256).filter(|&i| seg[i] == k as u32).map(|i| v[i]).sum::<f32>() / 16.0).sum()).collect()
    };
    let r = lime(&x, &seg, &mut score, &LimeConfig { samples: 500, ridge: 0.01, hide: Hide::Value(0.0), ..LimeConfig::default() });
    for (k, (&got, &want)) in r.weights.iter().zip(&w).enumerate() {
        assert!((got - want as f64).abs() < 0.05, "segment {k}: {got} vs {want}");
    }
    let order: Vec<u32> = r.top.iter().map(|t| t.0).collect();
    let mut want: Vec<u32> = (0..16).collect();
    want.sort_by(|&a, &b| w[b as usize].abs().total_cmp(&w[a as usize].abs()));
    assert_eq!(order, want);
    assert!(r.r2 > 0.999);
}

#[test]
fn spearman_and_mass_behave() {
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[10.0, 20.0, 30.0, 40.0]) - 1.0).abs() < 1e-12);
    assert!((spearman(&[1.0, 2.0, 3.0, 4.0], &[4.0, 3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
    assert_eq!(mass_inside(&[1.0, 1.0, 2.0], &[true, false, false]), 0.25);
}
