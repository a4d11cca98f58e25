//! A dense CRF's mean-field inference unrolled as a recurrent network (CRF-as-RNN, Zheng et al. 2015), over a
//! local window as in convolutional CRFs (Teichmann and Cipolla 2018): the refinement stage of a segmentation
//! network's output.
//!
//! Each of the `iterations` steps is one mean-field update with shared weights:
//!
//! ```text
//! Q        = softmax(L)                                       over classes, per voxel
//! M_i(l')  = Σ_{j ∈ N(i)} ( w_a · k_a(i, j) + w_s · k_s(i, j) ) · Q_j(l')
//! L_i(l)   = U_i(l) − Σ_{l'} μ(l, l') · M_i(l')
//! ```
//!
//! starting from `L = U`, the unary (log-probabilities of the network below). `N(i)` is every voxel `j ≠ i` with
//! `|i − j| ≤ radius` (in voxels, along the axes longer than one). The appearance kernel
//! `k_a = exp(−|i − j|² / 2θα² − ‖I_i − I_j‖² / 2θβ²)` and the smoothness kernel `k_s = exp(−|i − j|² / 2θγ²)`
//! have their spatial factors normalised to sum to one over the window, so the weights' scale does not depend on
//! the radius; neighbours outside the volume contribute nothing. The kernel weights `w_a`, `w_s`, the appearance
//! bandwidth `θβ` (as its logarithm) and the label compatibility `μ` (initialised to the Potts model `1 − I`) are
//! learnt; `θα`, `θγ` and the radius are fixed. The output is `L` after the last step: logits for any loss that
//! takes logits.
use burn::config::Config;
use burn::module::{Module, Param};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;

/// Configuration of [`CrfRnn`].
#[derive(Config, Debug)]
pub struct CrfRnnConfig {
    /// Classes (channels of the unary).
    pub classes: usize,
    /// Mean-field iterations (recurrent steps).
    #[config(default = 5)]
    pub iterations: usize,
    /// Window radius in voxels: neighbours within this Euclidean distance.
    #[config(default = 2.0)]
    pub radius: f64,
    /// Spatial bandwidth of the appearance kernel (voxels).
    #[config(default = 2.0)]
    pub theta_alpha: f64,
    /// Initial intensity bandwidth of the appearance kernel (units of the image given to `forward`).
    #[config(default = 0.5)]
    pub theta_beta: f64,
    /// Spatial bandwidth of the smoothness kernel (voxels).
    #[config(default = 1.0)]
    pub theta_gamma: f64,
    /// Initial weight of the appearance kernel.
    #[config(default = 1.0)]
    pub w_appearance: f64,
    /// Initial weight of the smoothness kernel.
    #[config(default = 1.0)]
    pub w_smoothness: f64,
}

/// Mean-field CRF iterations as a recurrent network (see the module documentation).
#[derive(Module, Debug)]
pub struct CrfRnn<B: Backend> {
    /// Weight of the appearance kernel, `[1]`.
    pub w_appearance: Param<Tensor<B, 1>>,
    /// Weight of the smoothness kernel, `[1]`.
    pub w_smoothness: Param<Tensor<B, 1>>,
    /// ln θβ, `[1]`.
    pub log_theta_beta: Param<Tensor<B, 1>>,
    /// Label compatibility μ, `[classes, classes]`.
    pub compatibility: Param<Tensor<B, 2>>,
    iterations: usize,
    radius: f64,
    theta_alpha: f64,
    theta_gamma: f64,
}

impl CrfRnnConfig {
    /// Builds the layer with the configured initial weights and a Potts compatibility.
    pub fn init<B: Backend>(&self, device: &B::Device) -> CrfRnn<B> {
        let c = self.classes;
        let potts: Vec<f32> = (0..c * c).map(|k| if k / c == k % c { 0.0 } else { 1.0 }).collect();
        let scalar = |v: f64| Param::from_tensor(Tensor::<B, 1>::from_floats([v as f32], device));
        CrfRnn {
            w_appearance: scalar(self.w_appearance),
            w_smoothness: scalar(self.w_smoothness),
            log_theta_beta: scalar(self.theta_beta.max(1e-6).ln()),
            compatibility: Param::from_tensor(Tensor::<B, 1>::from_floats(potts.as_slice(), device).reshape([c, c])),
            iterations: self.iterations,
            radius: self.radius,
            theta_alpha: self.theta_alpha,
            theta_gamma: self.theta_gamma,
        }
    }
}

/// Offsets `[dz, dy, dx]` of the window: every non-zero offset within `radius` (Euclidean, in voxels) along the
/// axes flagged `active`, in a fixed order.
pub fn window_offsets(radius: f64, active: [bool; 3]) -> Vec<[i64; 3]> {
    let r = radius.max(0.0).floor() as i64;
    let span = |a: bool| if a { -r..=r } else { 0..=0 };
    let mut out = Vec::new();
    for dz in span(active[0]) {
        for dy in span(active[1]) {
            for dx in span(active[2]) {
                let d2 = (dz * dz + dy * dy + dx * dx) as f64;
                if d2 > 0.0 && d2 <= radius * radius + 1e-9 {
                    out.push([dz, dy, dx]);
                }
            }
        }
    }
    out
}

/// Spatial factor `exp(−|d|² / 2θ²)` of each offset, normalised to sum to one.
pub fn spatial_kernel(offsets: &[[i64; 3]], theta: f64) -> Vec<f64> {
    let raw: Vec<f64> =
        offsets.iter().map(|o| (-((o[0] * o[0] + o[1] * o[1] + o[2] * o[2]) as f64) / (2.0 * theta * theta)).exp()).collect();
    let total: f64 = raw.iter().sum();
    raw.iter().map(|v| v / total.max(f64::MIN_POSITIVE)).collect()
}

impl<B: Backend> CrfRnn<B> {
    /// Mean-field iterations.
    pub fn iterations(&self) -> usize {
        self.iterations
    }

    /// Refines `unary` (`[n, classes, d, h, w]`, log-probabilities or logits) with the image `image`
    /// (`[n, channels, d, h, w]`, the intensities the appearance kernel compares) into logits of the same shape.
    pub fn forward(&self, unary: Tensor<B, 5>, image: Tensor<B, 5>) -> Tensor<B, 5> {
        let [n, c, d, h, w] = unary.dims();
        let offsets = window_offsets(self.radius, [d > 1, h > 1, w > 1]);
        if offsets.is_empty() || self.iterations == 0 {
            return unary;
        }
        let device = unary.device();
        let r = self.radius.max(0.0).floor() as usize;
        let pads = [if d > 1 { r } else { 0 }, if h > 1 { r } else { 0 }, if w > 1 { r } else { 0 }];
        let window = |t: &Tensor<B, 5>, o: &[i64; 3]| -> Tensor<B, 5> {
            let [tn, tc, ..] = t.dims();
            let start = |a: usize| (pads[a] as i64 + o[a]) as usize;
            t.clone().slice([0..tn, 0..tc, start(0)..start(0) + d, start(1)..start(1) + h, start(2)..start(2) + w])
        };
        // Per-offset pairwise weights [n, O, 1, d, h, w], fixed over the iterations.
        let padded_image = pad_zeros(image.clone(), pads);
        let distances: Vec<Tensor<B, 5>> =
            offsets.iter().map(|o| (image.clone() - window(&padded_image, o)).powi_scalar(2).sum_dim(1)).collect();
        let distances = Tensor::cat(distances, 1);
        let o_count = offsets.len();
        let column = |v: Vec<f64>| {
            Tensor::<B, 1>::from_floats(v.iter().map(|&x| x as f32).collect::<Vec<_>>().as_slice(), &device).reshape([1, o_count, 1, 1, 1])
        };
        let k_alpha = column(spatial_kernel(&offsets, self.theta_alpha));
        let k_gamma = column(spatial_kernel(&offsets, self.theta_gamma));
        let inv_two_beta2 = (self.log_theta_beta.val() * (-2.0)).exp().mul_scalar(0.5).reshape([1, 1, 1, 1, 1]);
        let appearance = (distances.neg() * inv_two_beta2).exp() * k_alpha;
        let weights =
            appearance * self.w_appearance.val().reshape([1, 1, 1, 1, 1]) + k_gamma * self.w_smoothness.val().reshape([1, 1, 1, 1, 1]);
        let weights: Tensor<B, 6> = weights.unsqueeze_dim(2);
        let compat: Tensor<B, 3> = self.compatibility.val().unsqueeze();
        let mut logits = unary.clone();
        for _ in 0..self.iterations {
            let q = pad_zeros(softmax(logits, 1), pads);
            let shifted: Vec<Tensor<B, 5>> = offsets.iter().map(|o| window(&q, o)).collect();
            let message = (Tensor::stack::<6>(shifted, 1) * weights.clone()).sum_dim(1).reshape([n, c, d * h * w]);
            let pairwise = compat.clone().matmul(message).reshape([n, c, d, h, w]);
            logits = unary.clone() - pairwise;
        }
        logits
    }
}

/// Zeros around the three spatial axes of `[n, c, d, h, w]`: `pads[a]` on each side of axis `2 + a`.
fn pad_zeros<B: Backend>(t: Tensor<B, 5>, pads: [usize; 3]) -> Tensor<B, 5> {
    let mut t = t;
    for (a, &p) in pads.iter().enumerate() {
        if p == 0 {
            continue;
        }
        let mut dims = t.dims();
        dims[2 + a] = p;
        let zeros = Tensor::<B, 5>::zeros(dims, &t.device());
        t = Tensor::cat(vec![zeros.clone(), t, zeros], 2 + a);
    }
    t
}
