//! The dense-prediction, auto-encoder, recurrent and registration networks: parameter counts of the reference
//! workloads, volumetric operations against values computed by hand, gradients against finite differences, and
//! the losses against their definitions.
#![allow(clippy::unwrap_used)] // test helpers fail loudly
use burn::backend::Autodiff;
use burn::module::Module;
use burn::tensor::backend::Backend;
use burn::tensor::{Distribution, Int, Tensor, TensorData};
use vesalius_nets::loss::{bending_energy, dice_ce, focal, generalised_dice, grad_l2, soft_dice, tversky, voxel_cross_entropy};
use vesalius_nets::ops::{Padding, avg_pool3d, max_pool3d, pool3d, resize_linear, upsample_nearest, warp, warp_nearest};
use vesalius_nets::{
    CnnLstmConfig, ConvAutoencoderConfig, GruConfig, LstmConfig, NormKind, UNetConfig, UpKind, VoxelMorphConfig, trainable_params,
};

#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
type B = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type B = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type B = burn::backend::Wgpu;
type AB = Autodiff<B>;

/// Agreement with the f64 step equations: f32 rounding on the CPU and on wgpu; burn-cuda's matrix products
/// without autotune were seen to differ by 1.5e-5 (1.7e-4 relative) on an H200, and with autotune its tensor-core
/// products may round operands to TF32 (2⁻¹¹ relative), so the CUDA run allows 3e-3.
#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
const RNN_TOLERANCE: f64 = 1e-5;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
const RNN_TOLERANCE: f64 = 5e-4;
#[cfg(feature = "test-cuda")]
const RNN_TOLERANCE: f64 = 3e-3;

/// Agreement of the CRF-as-RNN with its f64 loops after three iterations: f32 rounding on the CPU; on an H200
/// burn-cuda's sums differed by 1.04e-4 on values near 2 (its matrix products are not exact f32), so 5e-4 on a GPU
/// backend, and 5e-3 on CUDA where autotune may pick TF32 tensor-core products (2⁻¹¹ relative on values near 2).
#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
const CRF_TOLERANCE: f64 = 1e-4;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
const CRF_TOLERANCE: f64 = 5e-4;
#[cfg(feature = "test-cuda")]
const CRF_TOLERANCE: f64 = 5e-3;

fn dev() -> burn::tensor::Device<B> {
    Default::default()
}

fn values<const D: usize, BB: Backend>(t: Tensor<BB, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().unwrap()
}

fn volume<BB: Backend>(v: Vec<f32>, shape: [usize; 5]) -> Tensor<BB, 5> {
    Tensor::from_data(TensorData::new(v, shape), &Default::default())
}

#[test]
fn reference_workload_parameter_counts() {
    let _turn = crate::take_turn();
    // ../shared/bench/WORKLOADS.md, workloads c–g.
    let d = dev();
    // Batch-norm running statistics are buffers, not parameters.
    assert_eq!(trainable_params(&UNetConfig::reference_2d(1, 2).init::<B>(&d)), 482_466);
    assert_eq!(UNetConfig::reference_3d(1, 2).init::<B>(&d).num_params(), 85_186);
    assert_eq!(ConvAutoencoderConfig::reference().init::<B>(&d).num_params(), 257_121);
    assert_eq!(CnnLstmConfig::reference().init::<B>(&d).num_params(), 546_569);
    assert_eq!(VoxelMorphConfig::reference().init::<B>(&d).num_params(), 272_867);
}

#[test]
fn networks_give_the_expected_shapes() {
    let _turn = crate::take_turn();
    let d = dev();
    let x = Tensor::<B, 4>::random([2, 1, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    assert_eq!(UNetConfig::reference_2d(1, 2).init::<B>(&d).forward_2d(x.clone()).dims(), [2, 2, 32, 32]);
    let v = Tensor::<B, 5>::random([1, 1, 16, 16, 16], Distribution::Normal(0.0, 1.0), &d);
    assert_eq!(UNetConfig::reference_3d(1, 3).init::<B>(&d).forward(v.clone()).dims(), [1, 3, 16, 16, 16]);
    // Interpolating, residual, deep-supervised variant: one auxiliary output per coarser decoder level.
    let unet = UNetConfig::new(3, 1, 2, vec![4, 8, 16]).with_up(UpKind::Interpolate).with_residual(true).with_deep_supervision(true);
    let (out, aux) = unet.with_norm(NormKind::Instance).init::<B>(&d).forward_all(v.clone());
    assert_eq!(out.dims(), [1, 2, 16, 16, 16]);
    assert_eq!(aux.iter().map(|a| a.dims()).collect::<Vec<_>>(), vec![[1, 2, 8, 8, 8]]);
    let ae = ConvAutoencoderConfig::reference().init::<B>(&d);
    let y = ae.forward(Tensor::<B, 4>::random([2, 1, 64, 64], Distribution::Default, &d));
    assert_eq!(y.dims(), [2, 1, 64, 64]);
    let seq = Tensor::<B, 5>::random([3, 10, 1, 32, 32], Distribution::Normal(0.0, 1.0), &d);
    assert_eq!(CnnLstmConfig::reference().init::<B>(&d).forward(seq).dims(), [3, 9]);
    let vm = VoxelMorphConfig::reference().init::<B>(&d);
    let (warped, flow) = vm.forward(v.clone(), v);
    assert_eq!((warped.dims(), flow.dims()), ([1, 1, 16, 16, 16], [1, 3, 16, 16, 16]));
    // The flow head starts near zero (weights N(0, 1e-5)): the first warp is nearly the identity.
    assert!(values(flow.abs().max()).iter().all(|&m| m < 1e-2));
}

#[test]
fn pooling_and_upsampling_by_hand() {
    let _turn = crate::take_turn();
    // 2×2×2 volume with values 0..8 plus one extra row/column/slice that pooling drops.
    let v: Vec<f32> = (0..27).map(|i| i as f32).collect();
    let x = volume::<B>(v, [1, 1, 3, 3, 3]);
    // The window covers indices {0,1}³ → flat offsets 0,1,3,4,9,10,12,13: max 13, mean 6.5.
    assert_eq!(values(max_pool3d(x.clone(), 2)), vec![13.0]);
    assert_eq!(values(avg_pool3d(x, 2)), vec![6.5]);
    // In-plane pooling (depth window 1) of a 4×4 plane holding 0..16.
    let plane = volume::<B>((0..16).map(|i| i as f32).collect(), [1, 1, 1, 4, 4]);
    assert_eq!(values(pool3d(plane.clone(), [1, 2, 2], true)), vec![5.0, 7.0, 13.0, 15.0]);
    assert_eq!(values(pool3d(plane, [1, 2, 2], false)), vec![2.5, 4.5, 10.5, 12.5]);
    let y = volume::<B>(vec![1.0, 2.0], [1, 1, 1, 1, 2]);
    assert_eq!(values(upsample_nearest(y.clone(), [2, 1, 2])), vec![1.0, 1.0, 2.0, 2.0, 1.0, 1.0, 2.0, 2.0]);
    // align_corners=False: samples at −0.25 (clamped), 0.25, 0.75, 1.25 (clamped) of [1, 2].
    assert_eq!(values(resize_linear(y, [1, 1, 4])), vec![1.0, 1.25, 1.75, 2.0]);
}

#[test]
fn max_pool_gradient_goes_to_the_maximum() {
    let _turn = crate::take_turn();
    let x = volume::<AB>((0..8).map(|i| if i == 5 { 10.0 } else { i as f32 }).collect(), [1, 1, 2, 2, 2]).require_grad();
    let grads = max_pool3d(x.clone(), 2).sum().backward();
    let g = values(x.grad(&grads).unwrap());
    assert_eq!(g, vec![0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]);
}

/// 3D pooling by one window per output voxel, the definition: values, and for max pooling the gradient of a
/// weighted sum, which lands on the first maximum of each window in (depth, height, width) order.
fn pool_reference(v: &[f32], [n, c, d, h, w]: [usize; 5], [kd, kh, kw]: [usize; 3], max: bool, dy: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let (od, oh, ow) = (d / kd, h / kh, w / kw);
    let (mut out, mut grad) = (Vec::new(), vec![0.0f32; v.len()]);
    for plane in 0..n * c {
        for (z, y, x) in (0..od).flat_map(|z| (0..oh).flat_map(move |y| (0..ow).map(move |x| (z, y, x)))) {
            let at = |i: usize, j: usize, k: usize| (((plane * d + z * kd + i) * h + y * kh + j) * w) + x * kw + k;
            let window: Vec<usize> =
                (0..kd).flat_map(|i| (0..kh).flat_map(move |j| (0..kw).map(move |k| (i, j, k)))).map(|(i, j, k)| at(i, j, k)).collect();
            let o = out.len();
            if max {
                let first = window.iter().copied().fold(window[0], |best, i| if v[i] > v[best] { i } else { best });
                out.push(v[first]);
                grad[first] += dy[o];
            } else {
                out.push(window.iter().map(|&i| v[i]).sum::<f32>() / window.len() as f32);
            }
        }
    }
    (out, grad)
}

#[test]
fn pooling_matches_its_definition_on_uneven_volumes() {
    let _turn = crate::take_turn();
    let shape = [2, 3, 7, 6, 5];
    let len: usize = shape.iter().product();
    // Distinct values (a permutation of 0..len) and a few plateaus of equal values, after a ReLU-like clamp.
    let v: Vec<f32> = (0..len).map(|i| ((i * 7919) % len) as f32 - (len / 4) as f32).map(|x| x.max(0.0)).collect();
    for window in [[2, 2, 2], [3, 2, 2], [2, 1, 1], [1, 3, 2], [1, 1, 1]] {
        for max in [true, false] {
            let x = volume::<AB>(v.clone(), shape).require_grad();
            let y = pool3d(x.clone(), window, max);
            let [_, _, od, oh, ow] = y.dims();
            assert_eq!([od, oh, ow], [7 / window[0], 6 / window[1], 5 / window[2]]);
            let dy: Vec<f32> = (0..y.dims().iter().product::<usize>()).map(|i| 1.0 + (i % 5) as f32).collect();
            let weights = volume::<AB>(dy.clone(), y.dims());
            let (want, want_grad) = pool_reference(&v, shape, window, max, &dy);
            let got = values(y.clone().inner());
            assert!(got.iter().zip(&want).all(|(a, b)| (a - b).abs() < 1e-4), "{window:?} max={max}");
            assert_eq!(got.len(), want.len());
            if max {
                let grads = (y * weights).sum().backward();
                assert_eq!(values(x.grad(&grads).unwrap()), want_grad, "{window:?}");
            }
        }
    }
}

#[test]
fn max_pool_gradient_of_a_tie_goes_to_the_first_maximum() {
    let _turn = crate::take_turn();
    // One 2×2×2 window of equal values, as after a ReLU that zeroed it: the first voxel takes the gradient.
    let x = volume::<AB>(vec![0.0; 8], [1, 1, 2, 2, 2]).require_grad();
    let grads = max_pool3d(x.clone(), 2).sum().backward();
    assert_eq!(values(x.grad(&grads).unwrap()), vec![1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // The maximum shared by the second plane's last voxel and the first plane's last: the first plane's.
    let x = volume::<AB>(vec![0.0, 1.0, 0.0, 3.0, 2.0, 0.0, 0.0, 3.0], [1, 1, 2, 2, 2]).require_grad();
    let grads = max_pool3d(x.clone(), 2).sum().backward();
    assert_eq!(values(x.grad(&grads).unwrap()), vec![0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0]);
}

#[test]
fn warping_by_known_fields() {
    let _turn = crate::take_turn();
    let d = dev();
    let img = Tensor::<B, 5>::random([1, 2, 4, 5, 6], Distribution::Normal(0.0, 1.0), &d);
    let zero = Tensor::<B, 5>::zeros([1, 3, 4, 5, 6], &d);
    let same = values(warp(img.clone(), zero.clone(), Padding::Zeros));
    assert!(same.iter().zip(values(img.clone())).all(|(a, b)| (a - b).abs() < 1e-6));
    // A shift of +1 voxel along width: warped(z, y, x) = img(z, y, x + 1), zero past the edge.
    let shift = Tensor::cat(vec![Tensor::<B, 5>::zeros([1, 2, 4, 5, 6], &d), Tensor::<B, 5>::ones([1, 1, 4, 5, 6], &d)], 1);
    let warped = values(warp(img.clone(), shift.clone(), Padding::Zeros));
    let src = values(img.clone());
    let at = |c: usize, z: usize, y: usize, x: usize| ((c * 4 + z) * 5 + y) * 6 + x;
    for c in 0..2 {
        for z in 0..4 {
            for y in 0..5 {
                for x in 0..6 {
                    let want = if x + 1 < 6 { src[at(c, z, y, x + 1)] } else { 0.0 };
                    assert!((warped[at(c, z, y, x)] - want).abs() < 1e-6);
                }
            }
        }
    }
    // A half-voxel shift along height averages neighbours; border padding repeats the edge.
    let half = Tensor::cat(
        vec![
            Tensor::<B, 5>::zeros([1, 1, 4, 5, 6], &d),
            Tensor::<B, 5>::ones([1, 1, 4, 5, 6], &d) * 0.5,
            Tensor::<B, 5>::zeros([1, 1, 4, 5, 6], &d),
        ],
        1,
    );
    let warped = values(warp(img.clone(), half.clone(), Padding::Border));
    assert!((warped[at(1, 2, 1, 3)] - 0.5 * (src[at(1, 2, 1, 3)] + src[at(1, 2, 2, 3)])).abs() < 1e-5);
    assert!((warped[at(1, 2, 4, 3)] - src[at(1, 2, 4, 3)]).abs() < 1e-5);
    // Labels warp by nearest neighbour and keep their values.
    let labels = Tensor::<B, 5>::from_data(TensorData::new((0..120).map(|i| (i % 3) as f32).collect::<Vec<_>>(), [1, 1, 4, 5, 6]), &d);
    let moved = values(warp_nearest(labels, half * 0.8));
    assert!(moved.iter().all(|v| [0.0, 1.0, 2.0].contains(v)));
}

#[test]
fn warp_gradients_match_finite_differences() {
    let _turn = crate::take_turn();
    let d = Default::default();
    let img: Vec<f32> = (0..60).map(|i| ((i * 37) % 17) as f32 / 7.0).collect();
    let flow: Vec<f32> = (0..180).map(|i| (((i * 13) % 11) as f32 - 5.0) / 9.0).collect();
    let weights: Vec<f32> = (0..60).map(|i| ((i * 7) % 5) as f32 - 2.0).collect();
    let loss = |img: Tensor<AB, 5>, flow: Tensor<AB, 5>| {
        let w = Tensor::<AB, 5>::from_data(TensorData::new(weights.clone(), [1, 1, 3, 4, 5]), &d);
        (warp(img, flow, Padding::Zeros) * w).sum()
    };
    let ti = Tensor::<AB, 5>::from_data(TensorData::new(img.clone(), [1, 1, 3, 4, 5]), &d).require_grad();
    let tf = Tensor::<AB, 5>::from_data(TensorData::new(flow.clone(), [1, 3, 3, 4, 5]), &d).require_grad();
    let grads = loss(ti.clone(), tf.clone()).backward();
    let gi = values(ti.grad(&grads).unwrap());
    let gf = values(tf.grad(&grads).unwrap());
    let eval = |img: &[f32], flow: &[f32]| {
        let i = Tensor::<AB, 5>::from_data(TensorData::new(img.to_vec(), [1, 1, 3, 4, 5]), &d);
        let f = Tensor::<AB, 5>::from_data(TensorData::new(flow.to_vec(), [1, 3, 3, 4, 5]), &d);
        values(loss(i, f))[0] as f64
    };
    let h = 1e-2f32;
    for k in [0usize, 7, 22, 41, 59] {
        let (mut up, mut down) = (img.clone(), img.clone());
        up[k] += h;
        down[k] -= h;
        let fd = (eval(&up, &flow) - eval(&down, &flow)) / (2.0 * h as f64);
        assert!((fd - gi[k] as f64).abs() < 1e-2, "image grad {k}: {fd} vs {}", gi[k]);
    }
    // Flow entries whose sample points stay inside one interpolation cell for ±h (the map is smooth there).
    let mut checked = 0;
    for k in 0..180 {
        let frac = (flow[k] - flow[k].floor()).min(flow[k].ceil() - flow[k]);
        if frac < 0.05 {
            continue;
        }
        let (mut up, mut down) = (flow.clone(), flow.clone());
        up[k] += h;
        down[k] -= h;
        let fd = (eval(&img, &up) - eval(&img, &down)) / (2.0 * h as f64);
        assert!((fd - gf[k] as f64).abs() < 2e-2, "flow grad {k}: {fd} vs {}", gf[k]);
        checked += 1;
    }
    assert!(checked > 100, "{checked}");
}

#[test]
fn losses_by_their_definitions() {
    let _turn = crate::take_turn();
    let d = dev();
    // Two samples, two classes, three voxels; values from the definition evaluated with numpy:
    // p = softmax(logits); d_nc = 1 − (2Σpg + 1e-5)/(Σp + Σg + 1e-5); mean → 0.3924222594792165;
    // cross-entropy mean over voxels → 0.7926391298251612.
    let logits = volume::<B>(vec![0.5, -1.0, 2.0, 0.0, 0.5, -0.5, 1.0, 1.0, 0.0, -2.0, 3.0, 0.25], [2, 2, 1, 1, 3]);
    let labels = Tensor::<B, 4, Int>::from_data(TensorData::new(vec![0i64, 1, 0, 1, 1, 0], [2, 1, 1, 3]), &d);
    assert!((values(soft_dice(logits.clone(), labels.clone()))[0] - 0.392_422_26).abs() < 1e-6);
    assert!((values(voxel_cross_entropy(logits, labels))[0] - 0.792_639_13).abs() < 1e-6);
    // A field linear along width with slope 2 in one of three channels: only Δ_w ≠ 0, (2² · 1/3) / 3 = 4/9.
    let ramp: Vec<f32> = (0..3 * 2 * 2 * 4).map(|i| if i / 16 == 1 { 2.0 * (i % 4) as f32 } else { 0.0 }).collect();
    let field = volume::<B>(ramp, [1, 3, 2, 2, 4]);
    assert!((values(grad_l2(field.clone()))[0] - 4.0 / 9.0).abs() < 1e-6);
    // Bending energy: zero for that linear (affine) field; u = w² in one component has ∂²u/∂w² = 2 everywhere,
    // so the energy is 2² / 3 components; u = h·w has a mixed derivative 1, counted twice: 2 · 1 / 3.
    assert!(values(bending_energy(field))[0].abs() < 1e-6);
    let square: Vec<f32> = (0..3 * 2 * 3 * 4).map(|i| if i / 24 == 0 { ((i % 4) * (i % 4)) as f32 } else { 0.0 }).collect();
    assert!((values(bending_energy(volume::<B>(square, [1, 3, 2, 3, 4])))[0] - 4.0 / 3.0).abs() < 1e-5);
    let product: Vec<f32> = (0..3 * 2 * 3 * 4).map(|i| if i / 24 == 2 { ((i / 4) % 3 * (i % 4)) as f32 } else { 0.0 }).collect();
    assert!((values(bending_energy(volume::<B>(product, [1, 3, 2, 3, 4])))[0] - 2.0 / 3.0).abs() < 1e-5);
}

/// A reference LSTM/GRU step loop in f64 from the modules' own weights.
fn reference_rnn(x: &[f64], t: usize, input: usize, hs: usize, w: [Vec<f64>; 4], gru: bool) -> Vec<f64> {
    let [wih, whh, bih, bhh] = w;
    let gates = if gru { 3 } else { 4 };
    let g = gates * hs;
    let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
    let (mut h, mut c) = (vec![0.0; hs], vec![0.0; hs]);
    for s in 0..t {
        let xs = &x[s * input..(s + 1) * input];
        let xw: Vec<f64> = (0..g).map(|j| bih[j] + (0..input).map(|i| xs[i] * wih[i * g + j]).sum::<f64>()).collect();
        let hw: Vec<f64> = (0..g).map(|j| bhh[j] + (0..hs).map(|i| h[i] * whh[i * g + j]).sum::<f64>()).collect();
        for k in 0..hs {
            if gru {
                let r = sig(xw[k] + hw[k]);
                let z = sig(xw[hs + k] + hw[hs + k]);
                let n = (xw[2 * hs + k] + r * hw[2 * hs + k]).tanh();
                h[k] = (1.0 - z) * n + z * h[k];
            } else {
                let z = |q: usize| xw[q * hs + k] + hw[q * hs + k];
                c[k] = sig(z(1)) * c[k] + sig(z(0)) * z(2).tanh();
                h[k] = sig(z(3)) * c[k].tanh();
            }
        }
    }
    h
}

#[test]
fn lstm_and_gru_match_the_step_equations() {
    let _turn = crate::take_turn();
    let d = dev();
    let (t, input, hs) = (5, 3, 4);
    let x = Tensor::<B, 3>::random([1, t, input], Distribution::Normal(0.0, 1.0), &d);
    let xv: Vec<f64> = values(x.clone()).into_iter().map(f64::from).collect();
    let as64 = |v: Vec<f32>| v.into_iter().map(f64::from).collect::<Vec<_>>();
    let lstm = LstmConfig::new(input, hs).init::<B>(&d);
    let w = [lstm.gates.weight_ih.val(), lstm.gates.weight_hh.val()].map(|p| as64(values(p)));
    let b = [lstm.gates.bias_ih.val(), lstm.gates.bias_hh.val()].map(|p| as64(values(p)));
    let want = reference_rnn(&xv, t, input, hs, [w[0].clone(), w[1].clone(), b[0].clone(), b[1].clone()], false);
    let (all, last) = lstm.forward(x.clone());
    assert_eq!(all.dims(), [1, t, hs]);
    for (a, b) in values(last).iter().zip(&want) {
        assert!((*a as f64 - b).abs() < RNN_TOLERANCE, "{a} vs {b}");
    }
    let gru = GruConfig::new(input, hs).init::<B>(&d);
    let w = [gru.gates.weight_ih.val(), gru.gates.weight_hh.val()].map(|p| as64(values(p)));
    let b = [gru.gates.bias_ih.val(), gru.gates.bias_hh.val()].map(|p| as64(values(p)));
    let want = reference_rnn(&xv, t, input, hs, [w[0].clone(), w[1].clone(), b[0].clone(), b[1].clone()], true);
    for (a, b) in values(gru.forward(x).1).iter().zip(&want) {
        assert!((*a as f64 - b).abs() < RNN_TOLERANCE, "{a} vs {b}");
    }
}

/// Softmax probabilities `[n][c][v]` computed in f64 loops.
fn probs(logits: &[f64], n: usize, c: usize, v: usize) -> Vec<Vec<Vec<f64>>> {
    (0..n)
        .map(|s| {
            let z: Vec<f64> = (0..v).map(|x| (0..c).map(|k| logits[(s * c + k) * v + x].exp()).sum()).collect();
            (0..c).map(|k| (0..v).map(|x| logits[(s * c + k) * v + x].exp() / z[x]).collect()).collect()
        })
        .collect()
}

#[test]
fn dice_family_and_focal_losses_match_loop_implementations() {
    let _turn = crate::take_turn();
    let d = dev();
    let raw =
        vec![0.5, -1.0, 2.0, 0.7, 0.0, 0.5, -0.5, 0.1, 1.0, 1.0, 0.0, -0.3, -2.0, 3.0, 0.25, 1.5, 0.3, 0.3, -1.0, 0.0, 1.2, -0.7, 0.4, 2.2];
    let (n, c, v) = (2, 3, 4);
    // Sample 1 has no class 2: the generalised Dice gives it the largest present weight.
    let lab = vec![0i64, 1, 2, 1, 1, 0, 0, 1];
    let logits = volume::<B>(raw.iter().map(|&x| x as f32).collect(), [n, c, 1, 1, v]);
    let labels = Tensor::<B, 4, Int>::from_data(TensorData::new(lab.clone(), [n, 1, 1, v]), &d);
    let p = probs(&raw, n, c, v);
    let g = |s: usize, k: usize, x: usize| (lab[s * v + x] == k as i64) as u8 as f64;
    // Generalised Dice.
    let mut gd = 0.0;
    for s in 0..n {
        let vol: Vec<f64> = (0..c).map(|k| (0..v).map(|x| g(s, k, x)).sum()).collect();
        let present_max = vol.iter().filter(|&&x| x > 0.0).map(|x| 1.0 / (x * x)).fold(0.0, f64::max);
        let w: Vec<f64> = vol.iter().map(|&x| if x > 0.0 { 1.0 / (x * x) } else { present_max }).collect();
        let num: f64 = (0..c).map(|k| w[k] * (0..v).map(|x| p[s][k][x] * g(s, k, x)).sum::<f64>()).sum();
        let den: f64 = (0..c).map(|k| w[k] * (0..v).map(|x| p[s][k][x] + g(s, k, x)).sum::<f64>()).sum();
        gd += 1.0 - (2.0 * num + 1e-5) / (den + 1e-5);
    }
    gd /= n as f64;
    assert!((values(generalised_dice(logits.clone(), labels.clone()))[0] as f64 - gd).abs() < 1e-5, "{gd}");
    // Focal with γ = 2, and γ = 0 equals cross-entropy.
    let mut fl = 0.0;
    for s in 0..n {
        for x in 0..v {
            let pt = p[s][lab[s * v + x] as usize][x];
            fl += -(1.0 - pt).powi(2) * pt.ln();
        }
    }
    fl /= (n * v) as f64;
    assert!((values(focal(logits.clone(), labels.clone(), 2.0))[0] as f64 - fl).abs() < 1e-5, "{fl}");
    let ce = values(voxel_cross_entropy(logits.clone(), labels.clone()))[0];
    assert!((values(focal(logits.clone(), labels.clone(), 0.0))[0] - ce).abs() < 1e-6);
    // Tversky with α = 0.3, β = 0.7, and α = β = 0.5 equals soft Dice.
    let mut tv = 0.0;
    for s in 0..n {
        for k in 0..c {
            let tp: f64 = (0..v).map(|x| p[s][k][x] * g(s, k, x)).sum();
            let fp: f64 = (0..v).map(|x| p[s][k][x] * (1.0 - g(s, k, x))).sum();
            let fneg: f64 = (0..v).map(|x| (1.0 - p[s][k][x]) * g(s, k, x)).sum();
            tv += 1.0 - (tp + 1e-5) / (tp + 0.3 * fp + 0.7 * fneg + 1e-5);
        }
    }
    tv /= (n * c) as f64;
    assert!((values(tversky(logits.clone(), labels.clone(), 0.3, 0.7))[0] as f64 - tv).abs() < 1e-5, "{tv}");
    let sd = values(soft_dice(logits.clone(), labels.clone()))[0];
    // α = β = ½ is the soft Dice up to where ε enters (ε vs 2ε).
    assert!((values(tversky(logits.clone(), labels.clone(), 0.5, 0.5))[0] - sd).abs() < 1e-5);
    assert!((values(dice_ce(logits, labels))[0] - (sd + ce)).abs() < 1e-6);
}

/// The CRF-as-RNN update of `vesalius_nets::CrfRnn`'s documentation in f64 loops over voxels, from the same
/// parameters: unary `u[k][v]`, image `img[ch][v]` on a `[d, h, w]` grid.
#[allow(clippy::too_many_arguments)]
fn reference_crf(
    u: &[Vec<f64>],
    img: &[Vec<f64>],
    dims: [usize; 3],
    radius: f64,
    thetas: [f64; 3],
    w: [f64; 2],
    mu: &[f64],
    iterations: usize,
) -> Vec<Vec<f64>> {
    let [d, h, w_] = dims;
    let c = u.len();
    let offsets = vesalius_nets::window_offsets(radius, [d > 1, h > 1, w_ > 1]);
    let ka = vesalius_nets::spatial_kernel(&offsets, thetas[0]);
    let kg = vesalius_nets::spatial_kernel(&offsets, thetas[2]);
    let v = d * h * w_;
    let mut l = u.to_vec();
    for _ in 0..iterations {
        let q: Vec<Vec<f64>> = {
            let z: Vec<f64> = (0..v).map(|x| (0..c).map(|k| l[k][x].exp()).sum()).collect();
            (0..c).map(|k| (0..v).map(|x| l[k][x].exp() / z[x]).collect()).collect()
        };
        let mut next = u.to_vec();
        for z in 0..d {
            for y in 0..h {
                for x in 0..w_ {
                    let i = (z * h + y) * w_ + x;
                    let mut m = vec![0.0; c];
                    for (o, off) in offsets.iter().enumerate() {
                        let (zz, yy, xx) = (z as i64 + off[0], y as i64 + off[1], x as i64 + off[2]);
                        if zz < 0 || yy < 0 || xx < 0 || zz >= d as i64 || yy >= h as i64 || xx >= w_ as i64 {
                            continue;
                        }
                        let j = ((zz as usize * h) + yy as usize) * w_ + xx as usize;
                        let dist2: f64 = img.iter().map(|ch| (ch[i] - ch[j]).powi(2)).sum();
                        let k = w[0] * ka[o] * (-dist2 / (2.0 * thetas[1] * thetas[1])).exp() + w[1] * kg[o];
                        for (lp, mv) in m.iter_mut().enumerate() {
                            *mv += k * q[lp][j];
                        }
                    }
                    for (lab, nl) in next.iter_mut().enumerate() {
                        nl[i] -= (0..c).map(|lp| mu[lab * c + lp] * m[lp]).sum::<f64>();
                    }
                }
            }
        }
        l = next;
    }
    l
}

#[test]
fn crf_rnn_matches_the_mean_field_equations() {
    let _turn = crate::take_turn();
    use vesalius_nets::CrfRnnConfig;
    let d = dev();
    // A 3D volume and a 2D slice (depth 1: the window lies in its plane).
    for (dims, channels, classes, radius) in [([3usize, 4, 5], 2usize, 3usize, 1.8), ([1, 6, 7], 1, 2, 2.0)] {
        let [dd, hh, ww] = dims;
        let unary = Tensor::<B, 5>::random([1, classes, dd, hh, ww], Distribution::Normal(0.0, 1.0), &d);
        let image = Tensor::<B, 5>::random([1, channels, dd, hh, ww], Distribution::Normal(0.0, 1.0), &d);
        let cfg = CrfRnnConfig::new(classes)
            .with_iterations(3)
            .with_radius(radius)
            .with_theta_beta(0.7)
            .with_w_appearance(1.5)
            .with_w_smoothness(0.8);
        let crf = cfg.init::<B>(&d);
        // A compatibility that is not the Potts model, so that its orientation (row = label updated) is checked.
        let mu: Vec<f64> = (0..classes * classes).map(|k| if k / classes == k % classes { 0.0 } else { 0.5 + 0.25 * k as f64 }).collect();
        let mu32: Vec<f32> = mu.iter().map(|&x| x as f32).collect();
        let crf = CrfRnn_with_compatibility(crf, &mu32, classes);
        let v = dd * hh * ww;
        let split = |t: Tensor<B, 5>, k: usize| -> Vec<Vec<f64>> {
            let all = values(t);
            (0..k).map(|c| all[c * v..(c + 1) * v].iter().map(|&x| x as f64).collect()).collect()
        };
        let want = reference_crf(
            &split(unary.clone(), classes),
            &split(image.clone(), channels),
            dims,
            radius,
            [2.0, 0.7, 1.0],
            [1.5, 0.8],
            &mu,
            3,
        );
        let got = split(crf.forward(unary, image), classes);
        for (a, b) in got.iter().flatten().zip(want.iter().flatten()) {
            assert!((a - b).abs() < CRF_TOLERANCE, "{a} vs {b}");
        }
    }
    assert_eq!(vesalius_nets::window_offsets(2.0, [true; 3]).len(), 32);
    assert_eq!(vesalius_nets::window_offsets(1.0, [false, true, true]).len(), 4);
}

#[allow(non_snake_case)]
fn CrfRnn_with_compatibility(mut crf: vesalius_nets::CrfRnn<B>, mu: &[f32], c: usize) -> vesalius_nets::CrfRnn<B> {
    crf.compatibility = burn::module::Param::from_tensor(Tensor::<B, 1>::from_floats(mu, &dev()).reshape([c, c]));
    crf
}

#[test]
fn crf_rnn_cleans_a_noisy_unary_and_learns_its_weights() {
    let _turn = crate::take_turn();
    use burn::optim::{AdamConfig, GradientsParams, Optimizer};
    use vesalius_nets::CrfRnnConfig;
    let d: burn::tensor::Device<AB> = Default::default();
    // Two regions (left / right half) of a 1 × 16 × 16 image; the unary (log-probabilities 0.7 / 0.3) picks the
    // wrong class at about a quarter of the voxels, by a fixed pattern.
    let (hh, ww) = (16usize, 16usize);
    let truth: Vec<i64> = (0..hh * ww).map(|i| ((i % ww) >= ww / 2) as i64).collect();
    let image: Vec<f32> = truth.iter().map(|&t| t as f32).collect();
    let flip = |i: usize| ((i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40) % 100 < 25;
    let unary: Vec<f32> = (0..2)
        .flat_map(|k| (0..hh * ww).map(move |i| (k, i)))
        .map(|(k, i)| {
            let label = if flip(i) { 1 - truth[i] } else { truth[i] };
            if label == k as i64 { 0.7f32.ln() } else { 0.3f32.ln() }
        })
        .collect();
    let u = volume::<AB>(unary, [1, 2, 1, hh, ww]);
    let x = volume::<AB>(image, [1, 1, 1, hh, ww]);
    let y = Tensor::<AB, 4, Int>::from_data(TensorData::new(truth.clone(), [1, 1, hh, ww]), &d);
    let accuracy = |logits: Tensor<AB, 5>| -> f64 {
        let pred: Vec<i64> = logits.argmax(1).into_data().convert::<i64>().to_vec().unwrap();
        pred.iter().zip(&truth).filter(|(a, b)| a == b).count() as f64 / truth.len() as f64
    };
    let before = accuracy(u.clone());
    assert!((0.7..0.8).contains(&before), "{before}");
    // Untrained (Potts, unit weights): the window's majority already repairs over half of the flips (0.75 → 0.88).
    let mut crf = CrfRnnConfig::new(2).with_theta_beta(0.3).init::<AB>(&d);
    let untrained = accuracy(crf.forward(u.clone(), x.clone()));
    assert!(untrained > 0.85, "{untrained}");
    // Training the kernel weights and compatibility with cross-entropy repairs every flip.
    let mut optim = AdamConfig::new().init::<AB, vesalius_nets::CrfRnn<AB>>();
    let mut first = f64::NAN;
    let mut last = f64::NAN;
    for step in 0..40 {
        let l = voxel_cross_entropy(crf.forward(u.clone(), x.clone()), y.clone());
        last = values(l.clone())[0] as f64;
        if step == 0 {
            first = last;
        }
        let grads = GradientsParams::from_grads(l.backward(), &crf);
        crf = optim.step(0.1, crf, grads);
    }
    let trained = accuracy(crf.forward(u, x));
    assert!(last < first * 0.5, "loss {first} → {last}");
    assert!(trained > 0.99, "{trained}");
}

#[test]
fn monte_carlo_dropout_samples_only_when_asked_or_training() {
    let _turn = crate::take_turn();
    let x = Tensor::<B, 5>::random([1, 1, 1, 16, 16], Distribution::Normal(0.0, 1.0), &dev());
    let plain = UNetConfig::new(2, 1, 2, vec![4, 8]).init::<B>(&dev());
    assert!(!plain.has_dropout());
    assert_eq!(values(plain.forward_mc(x.clone())), values(plain.forward(x.clone())));
    let net = UNetConfig::new(2, 1, 2, vec![4, 8]).with_dropout(0.3).init::<B>(&dev());
    assert!(net.has_dropout());
    // Inference without autodiff: no dropout, the same output every time.
    assert_eq!(values(net.forward(x.clone())), values(net.forward(x.clone())));
    // Monte-Carlo passes differ from each other and from the plain output.
    let (a, b) = (values(net.forward_mc(x.clone())), values(net.forward_mc(x.clone())));
    assert_ne!(a, b);
    assert_ne!(a, values(net.forward(x)));
}
