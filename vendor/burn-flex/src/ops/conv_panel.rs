//! Convolutions of deep, small maps as GEMMs whose columns are samples, over the taps that land
//! inside the input only.
//!
//! im2col + GEMM multiplies the zeros that padding puts into the im2col matrix: a 3 × 3 convolution
//! with unit padding reads padding in 31 % of its products on 4 × 4 maps, 18 % on 7 × 7 and 9 % on
//! 14 × 14. Here one output position is computed for up to [`NR`] samples at once (the columns of the
//! `gemm` crate's micro-kernel), over the taps that land inside the input at that position: no product
//! with padding is formed, the input is read in place into one small panel per position and group of
//! samples (no im2col matrix), and the weights are packed once per call into the micro-kernel's row
//! panels (not once per tile).
//!
//! One kernel computes
//!
//! `dst[b][m][p] = Σ_{(t, q) ∈ taps(p)} Σ_k lhs(m, t, k) · src[b][k][q]`
//!
//! which is the forward pass (`m` the output channels, `k` the input channels, `q` the input position
//! that tap `t` of output position `p` reads) and the input gradient (`m` the input channels, `k` the
//! output channels, `q` the output position whose tap `t` reads input position `p`), for any stride,
//! padding and dilation. The sums run over the taps in increasing order, the channels in increasing
//! order within a tap, in blocks whose packed weights stay in L2.

use alloc::vec;
use alloc::vec::Vec;

use super::conv_gemm::{ConvGeom, SyncPtr, num_threads, par_items};
use super::vectorised::{VectorIsa, vector_isa};

/// Columns of the micro-kernels (samples per panel).
const NR: usize = 6;

/// Bytes of packed weights one block of the reduction keeps in L2 (all output channels).
const LHS_BLOCK_BYTES: usize = 512 << 10;

/// The signature of the `gemm` crate's micro-kernels (`gemm_common::microkernel::MicroKernelFn<f32>`):
/// `m, n, k, dst, packed_lhs, packed_rhs, dst_cs, dst_rs, lhs_cs, rhs_rs, rhs_cs, alpha, beta,
/// alpha_status, conj_dst, conj_lhs, conj_rhs, next_lhs`; it computes `dst = beta·lhs·rhs` (status 0)
/// or `dst += beta·lhs·rhs` (status 1) for an `m × n` block, `m` at most its vectors of rows, `n` its
/// columns.
type MicroKernel = unsafe fn(
    usize,
    usize,
    usize,
    *mut f32,
    *const f32,
    *const f32,
    isize,
    isize,
    isize,
    isize,
    isize,
    f32,
    f32,
    u8,
    bool,
    bool,
    bool,
    *const f32,
);

/// The micro-kernels of one instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    /// f32 lanes per vector.
    lanes: usize,
    /// `table[v − 1][n − 1]` computes `v` vectors of rows by `n` columns.
    table: &'static [[MicroKernel; NR]],
}

impl Kernels {
    /// The widest kernels the CPU runs (and the crate's cap allows), if any.
    fn current() -> Option<Self> {
        let isa = vector_isa();
        #[cfg(all(feature = "x86-v4", target_arch = "x86_64"))]
        if isa == VectorIsa::Avx512 {
            return Some(Self { lanes: 16, table: &gemm_f32::microkernel::avx512f::f32::UKR });
        }
        #[cfg(target_arch = "x86_64")]
        if isa != VectorIsa::Baseline {
            return Some(Self { lanes: 8, table: &gemm_f32::microkernel::fma::f32::UKR });
        }
        let _ = isa;
        None
    }

    /// Rows of one packed weight panel.
    fn mr(self) -> usize {
        self.lanes * self.table.len()
    }

    /// The kernels of at most as many vectors of rows as leave `m` rows at least two panels (one
    /// vector at least): 64 rows with AVX-512 take two panels of two vectors instead of one panel of four.
    fn for_rows(self, m: usize) -> Self {
        let vectors = (m / (2 * self.lanes)).clamp(1, self.table.len());
        Self { table: &self.table[..vectors], ..self }
    }
}

/// Per destination position, the taps that read inside the source and the source position each
/// reads, in increasing tap order.
struct Taps {
    /// Destination position `p`'s pairs are `pairs[start[p]..start[p + 1]]`.
    start: Vec<usize>,
    /// (tap, source position).
    pairs: Vec<(usize, usize)>,
}

impl Taps {
    /// Combines per-axis lists (depth, height, width: for each destination index, its (kernel index,
    /// source index) pairs) over a source of spatial size `src`.
    fn from_axes(axes: [Vec<Vec<(usize, usize)>>; 3], kernel: [usize; 3], src: [usize; 3]) -> Self {
        let mut start = vec![0];
        let mut pairs = Vec::new();
        for d in &axes[0] {
            for h in &axes[1] {
                for w in &axes[2] {
                    for &(kd, qd) in d {
                        for &(kh, qh) in h {
                            for &(kw, qw) in w {
                                pairs.push(((kd * kernel[1] + kh) * kernel[2] + kw, (qd * src[1] + qh) * src[2] + qw));
                            }
                        }
                    }
                    start.push(pairs.len());
                }
            }
        }
        Self { start, pairs }
    }

    /// The forward pass: output position → (tap, input position).
    fn forward(g: &ConvGeom) -> Self {
        let axes = core::array::from_fn(|i| {
            (0..g.output[i])
                .map(|o| {
                    (0..g.kernel[i])
                        .filter_map(|k| {
                            let q = (o * g.stride[i] + k * g.dilation[i]).checked_sub(g.padding[i])?;
                            (q < g.input[i]).then_some((k, q))
                        })
                        .collect()
                })
                .collect()
        });
        Self::from_axes(axes, g.kernel, g.input)
    }

    /// The input gradient: input position → (tap, output position).
    fn data_grad(g: &ConvGeom) -> Self {
        let axes = core::array::from_fn(|i| {
            (0..g.input[i])
                .map(|q| {
                    (0..g.kernel[i])
                        .filter_map(|k| {
                            let r = (q + g.padding[i]).checked_sub(k * g.dilation[i])?;
                            let o = r / g.stride[i];
                            (r % g.stride[i] == 0 && o < g.output[i]).then_some((k, o))
                        })
                        .collect()
                })
                .collect()
        });
        Self::from_axes(axes, g.kernel, g.output)
    }

    fn of(&self, p: usize) -> &[(usize, usize)] {
        &self.pairs[self.start[p]..self.start[p + 1]]
    }
}

/// Whether the convolutions of `g` (f32) take this path: a CPU with the micro-kernels, at least two
/// panels of weights (each packed input panel serves all of them), a batch that fills most of a
/// panel's columns, at least `min_reduced` channels summed per tap, and maps of at most
/// [`MAX_POSITIONS`] positions.
fn shape_applies(k: Kernels, batch: usize, m: usize, s_dst: usize, (reduced, min_reduced): (usize, usize)) -> bool {
    batch >= 2 * NR && m >= 2 * k.mr() && reduced >= min_reduced && s_dst <= MAX_POSITIONS
}

/// The fewest channels summed per tap of the forward pass and input gradient onto `s_dst` positions.
fn min_reduced(s_dst: usize) -> usize {
    if s_dst <= SMALL_POSITIONS { MIN_REDUCED_SMALL } else { MIN_REDUCED }
}

/// Fewest channels summed per tap. Each micro-kernel call sums one tap's channels (or several taps'
/// where they read consecutive positions) and reads and writes its block of the result once; at 64
/// channels those calls cost more than the padded products and im2col saved on ResNet-18's 64 → 128
/// stride-2 layer onto 14 × 14 (forward at batch 128: 22.0 ms by im2col, 24.4 here).
const MIN_REDUCED: usize = 128;

/// Fewest channels summed per tap for the forward pass and input gradient onto maps of at most
/// [`SMALL_POSITIONS`] positions, whose im2col rows are short: the convolutional auto-encoder's 64 →
/// 128 stride-2 layer onto 8 × 8 (forward at batch 64: 3.65 ms by im2col, 3.44 here) and the input
/// gradient of its transposed 128 → 64 layer from 8 × 8 (6.6 and 5.4 ms).
const MIN_REDUCED_SMALL: usize = 64;
/// See [`MIN_REDUCED_SMALL`].
const SMALL_POSITIONS: usize = 64;

/// Largest number of destination positions per sample taken here. Above it the maps are large
/// enough that im2col's contiguous rows (and the by-tap kernels) serve better: the padded share of
/// the products falls with the map's size, and gathering one panel per position and group of samples
/// reads each input row once per position.
const MAX_POSITIONS: usize = 256;

/// The kernels the forward pass of `g` (f32) runs here with, if it does.
pub(crate) fn forward_kernels(g: &ConvGeom) -> Option<Kernels> {
    Kernels::current()
        .map(|k| k.for_rows(g.c_out))
        .filter(|&k| g.k_len() > 1 && shape_applies(k, g.batch, g.c_out, g.s_out(), (g.c_in, min_reduced(g.s_out()))))
}

/// The kernels the input gradient of `g` (f32) runs here with, if it does.
pub(crate) fn data_grad_kernels(g: &ConvGeom) -> Option<Kernels> {
    Kernels::current()
        .map(|k| k.for_rows(g.c_in))
        .filter(|&k| {
            let s_in = g.input.iter().product();
            g.k_len() > 1 && shape_applies(k, g.batch, g.c_in, s_in, (g.c_out, min_reduced(s_in)))
        })
}

/// Forward convolution: `x [batch, c_in, input]`, `w [c_out, c_in, kernel]` → `[batch, c_out, output]`.
/// `k` from [`forward_kernels`].
pub(crate) fn conv_forward(k: Kernels, x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let t = g.k_len();
    let (c_in, c_out) = (g.c_in, g.c_out);
    let packed = pack(k, c_out, c_in, t, |m, r, tap| w[(m * c_in + r) * t + tap]);
    let taps = Taps::forward(g);
    run(k, x, c_in, g.input.iter().product(), &packed, c_out, t, &taps, g.batch, g.s_out())
}

/// Input gradient: `dy [batch, c_out, output]`, `w [c_out, c_in, kernel]` → `dx [batch, c_in, input]`.
/// `k` from [`data_grad_kernels`].
pub(crate) fn conv_data_grad(k: Kernels, dy: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let t = g.k_len();
    let (c_in, c_out) = (g.c_in, g.c_out);
    let packed = pack(k, c_in, c_out, t, |m, r, tap| w[(r * c_in + m) * t + tap]);
    let taps = Taps::data_grad(g);
    run(k, dy, c_out, g.s_out(), &packed, c_in, t, &taps, g.batch, g.input.iter().product())
}

/// The kernels the weight gradient of `g` (f32) runs here with, if it does.
pub(crate) fn weight_grad_kernels(g: &ConvGeom) -> Option<Kernels> {
    Kernels::current().filter(|&k| {
        g.k_len() > 1
            && g.input.iter().product::<usize>() <= MAX_GRAD_POSITIONS
            && shape_applies(k, g.batch, g.c_out, g.s_out(), (g.c_in, MIN_REDUCED))
    })
}

/// Largest number of input positions per sample for the weight gradient here: on larger maps the
/// panels of the input (one copy of it) and the shorter reductions per call cost more than the
/// padded products saved.
const MAX_GRAD_POSITIONS: usize = 64;

/// Weight gradient: `x [batch, c_in, input]`, `dy [batch, c_out, output]` → `dw [c_out, c_in, kernel]`.
/// `k` from [`weight_grad_kernels`].
///
/// Per tap, `dW_t (c_out × c_in) = Σ_{p, b} dy[b][·][p] · x[b][·][q(p, t)]` over the output positions
/// whose tap `t` reads inside the input: the output gradient in row panels by position and sample
/// (`[c_out / mr][p][b][mr]`), the input in column panels by position and sample (`[c_in / NR][q][b][NR]`),
/// so that a run of positions along a row is one micro-kernel call reading both in place.
pub(crate) fn conv_weight_grad(k: Kernels, x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let mr = k.mr();
    let (batch, c_in, c_out, taps) = (g.batch, g.c_in, g.c_out, g.k_len());
    let (s_in, s_out) = (g.input.iter().product::<usize>(), g.s_out());
    let blocks = c_out.div_ceil(mr);
    let col_panels = c_in.div_ceil(NR);
    let dyp = channel_panels(dy, batch, c_out, s_out, mr);
    let xp = channel_panels(x, batch, c_in, s_in, NR);
    let reads = reads(&Taps::forward(g), s_out, taps);
    // Positions per block of the reduction: the row panels of all output channels over them stay in L2.
    let p_blk = (LHS_BLOCK_BYTES / (blocks * mr * batch * 4)).max(1);
    // `dWᵀ` (`[c_in][tap][c_out]`): a block's rows (output channels) contiguous, turned into `dW` by the
    // same transpose as im2col's weight gradient.
    let mut dwt = vec![0.0f32; taps * c_in * c_out];
    let dst = SyncPtr(dwt.as_mut_ptr());
    let items = taps * col_panels;
    let chunks = (4 * num_threads()).min(items).max(1);
    let per = items.div_ceil(chunks);
    par_items(
        items.div_ceil(per),
        || Vec::<bool>::new(),
        |ch, written| {
            let (i0, i1) = (ch * per, ((ch + 1) * per).min(items));
            written.clear();
            written.resize(i1 - i0, false);
            for pb0 in (0..s_out).step_by(p_blk) {
                let pb1 = (pb0 + p_blk).min(s_out);
                for item in i0..i1 {
                    let (t, cp) = (item / col_panels, item % col_panels);
                    let nc = NR.min(c_in - cp * NR);
                    let mut p = pb0;
                    while p < pb1 {
                        let q = reads[p * taps + t];
                        if q == usize::MAX {
                            p += 1;
                            continue;
                        }
                        // A run of positions whose tap `t` reads consecutive input positions.
                        let mut e = p + 1;
                        while e < pb1 && reads[e * taps + t] == q + (e - p) {
                            e += 1;
                        }
                        let status = if written[item - i0] { 1 } else { 0 };
                        written[item - i0] = true;
                        for b in 0..blocks {
                            let rows = mr.min(c_out - b * mr);
                            let kernel = k.table[rows.div_ceil(k.lanes) - 1][nc - 1];
                            // SAFETY: the destination block (`rows` × `nc` at column stride `taps · c_out`) lies
                            // inside `dwt` and belongs to this item only; the row panels hold `(e − p)·batch`
                            // steps of `mr` from position `p`, the column panels as many steps of `NR` from
                            // input position `q`; the CPU has the kernel's instructions.
                            unsafe {
                                kernel(
                                    rows,
                                    nc,
                                    (e - p) * batch,
                                    dst.get().add((cp * NR * taps + t) * c_out + b * mr),
                                    dyp.as_ptr().add((b * s_out + p) * batch * mr),
                                    xp.as_ptr().add((cp * s_in + q) * batch * NR),
                                    (taps * c_out) as isize,
                                    1,
                                    mr as isize,
                                    NR as isize,
                                    1,
                                    1.0,
                                    1.0,
                                    status,
                                    false,
                                    false,
                                    false,
                                    core::ptr::null(),
                                );
                            }
                        }
                        p = e;
                    }
                }
            }
        },
    );
    // Taps no position reaches stay zero.
    super::conv_gemm::from_transposed(&dwt, c_out, c_in * taps)
}

/// `src [batch, ch, s]` in panels of `w` channels, `[ch / w][s][batch][w]` (channels past `ch` zero).
fn channel_panels(src: &[f32], batch: usize, ch: usize, s: usize, w: usize) -> Vec<f32> {
    let panels = ch.div_ceil(w);
    let panel_len = s * batch * w;
    let mut out = vec![0.0f32; panels * panel_len];
    let ptr = SyncPtr(out.as_mut_ptr());
    par_items(
        panels,
        || (),
        |pn, _| {
            // SAFETY: panel `pn` writes its own `panel_len` elements only.
            let dst = unsafe { core::slice::from_raw_parts_mut(ptr.get().add(pn * panel_len), panel_len) };
            super::vectorised::vectorised(
                #[inline(always)]
                || {
                    for b in 0..batch {
                        for i in 0..w.min(ch - pn * w) {
                            let row = &src[(b * ch + pn * w + i) * s..][..s];
                            for (pos, v) in row.iter().enumerate() {
                                dst[(pos * batch + b) * w + i] = *v;
                            }
                        }
                    }
                },
            );
        },
    );
    out
}

/// `reads[p·taps + t]`: the source position tap `t` of destination position `p` reads, `usize::MAX`
/// where it reads padding.
fn reads(pairs: &Taps, s_dst: usize, taps: usize) -> Vec<usize> {
    let mut reads = vec![usize::MAX; s_dst * taps];
    for p in 0..s_dst {
        for &(t, q) in pairs.of(p) {
            reads[p * taps + t] = q;
        }
    }
    reads
}

/// Packs `lhs(m, t, r)` (`m < rows`, `r < reduced`, `t < taps`) into panels of `mr` rows:
/// element `(m, t, r)` at `[m / mr][t][r][m % mr]`, rows past `rows` zero.
fn pack(k: Kernels, rows: usize, reduced: usize, taps: usize, at: impl Fn(usize, usize, usize) -> f32 + Sync) -> Vec<f32> {
    let mr = k.mr();
    let blocks = rows.div_ceil(mr);
    let panel = taps * reduced * mr;
    let mut out = vec![0.0f32; blocks * panel];
    let ptr = SyncPtr(out.as_mut_ptr());
    par_items(
        blocks,
        || (),
        |b, _| {
            // SAFETY: block `b` writes its own panel `[b·panel, (b + 1)·panel)` only.
            let dst = unsafe { core::slice::from_raw_parts_mut(ptr.get().add(b * panel), panel) };
            for r in 0..reduced {
                for i in 0..mr.min(rows - b * mr) {
                    for t in 0..taps {
                        dst[(t * reduced + r) * mr + i] = at(b * mr + i, r, t);
                    }
                }
            }
        },
    );
    out
}

/// `src [batch, reduced, s_src]` in groups of [`NR`] samples, each group `[s_src, reduced, NR]` (samples
/// past the batch zero): at one source position, consecutive reduction steps are consecutive runs of
/// `NR` values, the layout the micro-kernels read as a packed panel.
fn sample_panels(src: &[f32], batch: usize, reduced: usize, s_src: usize) -> Vec<f32> {
    let groups = batch.div_ceil(NR);
    let group_len = s_src * reduced * NR;
    let mut out = vec![0.0f32; groups * group_len];
    let ptr = SyncPtr(out.as_mut_ptr());
    par_items(
        groups,
        || (),
        |g, _| {
            // SAFETY: group `g` writes its own `group_len` elements only.
            let dst = unsafe { core::slice::from_raw_parts_mut(ptr.get().add(g * group_len), group_len) };
            super::vectorised::vectorised(
                #[inline(always)]
                || {
                    let nb = NR.min(batch - g * NR);
                    let samples = &src[g * NR * reduced * s_src..][..nb * reduced * s_src];
                    // Channel by channel, each position's `nb` values written together: the lines being
                    // filled (one per position) stay in L1 while the channels advance through them.
                    for r in 0..reduced {
                        for q in 0..s_src {
                            let out = &mut dst[(q * reduced + r) * NR..][..nb];
                            for (j, v) in out.iter_mut().enumerate() {
                                *v = samples[(j * reduced + r) * s_src + q];
                            }
                        }
                    }
                },
            );
        },
    );
    out
}

/// Consecutive reduction steps of one destination position read in one micro-kernel call: packed
/// weights from step `lo` (tap · reduced + channel), source panels from step `src` (source position ·
/// reduced + channel).
#[derive(Clone, Copy)]
struct Run {
    lo: usize,
    len: usize,
    src: usize,
}

/// `dst [batch, m, s_dst]` from `src [batch, reduced, s_src]`, the packed weights (see [`pack`]) and
/// the taps of every destination position.
#[allow(clippy::too_many_arguments)]
fn run(
    k: Kernels,
    src: &[f32],
    reduced: usize,
    s_src: usize,
    packed: &[f32],
    m: usize,
    taps: usize,
    pairs: &Taps,
    batch: usize,
    s_dst: usize,
) -> Vec<f32> {
    let mr = k.mr();
    let blocks = m.div_ceil(mr);
    let panel_len = taps * reduced * mr;
    // Reduction block over (tap, channel): the packed weights of all row panels over `kc` steps stay
    // in L2.
    let depth = taps * reduced;
    let kc = (LHS_BLOCK_BYTES / (blocks * mr * 4)).clamp(k.lanes, depth.max(k.lanes));
    let groups = batch.div_ceil(NR);
    let xs = sample_panels(src, batch, reduced, s_src);
    let group_len = s_src * reduced * NR;
    // Sample-major layout of the result (`[batch, s_dst, m]`): a panel's columns are `s_dst · m` apart
    // and its rows contiguous, the layout the micro-kernels store with vectors.
    let mut nhwc = vec![0.0f32; batch * s_dst * m];
    let dst = SyncPtr(nhwc.as_mut_ptr());
    par_items(
        groups,
        || (Vec::<bool>::new(), Vec::<Run>::new()),
        |g, (written, runs)| {
            let b0 = g * NR;
            let nb = NR.min(batch - b0);
            let xg = &xs[g * group_len..][..group_len];
            written.clear();
            written.resize(s_dst, false);
            for k0 in (0..depth).step_by(kc) {
                let k1 = (k0 + kc).min(depth);
                for p in 0..s_dst {
                    // The block's part of each tap of `p` that reads inside the source. Consecutive taps
                    // that read consecutive source positions are one run: in the group's panels a
                    // position's last channel is followed by the next position's first.
                    runs.clear();
                    for &(t, q) in pairs.of(p) {
                        let lo = k0.max(t * reduced);
                        let hi = k1.min((t + 1) * reduced);
                        if lo >= hi {
                            continue;
                        }
                        let src = q * reduced + lo - t * reduced;
                        match runs.last_mut() {
                            Some(run) if run.lo + run.len == lo && run.src + run.len == src => run.len += hi - lo,
                            _ => runs.push(Run { lo, len: hi - lo, src }),
                        }
                    }
                    if runs.is_empty() {
                        continue;
                    }
                    let first = !written[p];
                    written[p] = true;
                    for b in 0..blocks {
                        let rows = mr.min(m - b * mr);
                        let kernel = k.table[rows.div_ceil(k.lanes) - 1][nb - 1];
                        for (i, run) in runs.iter().enumerate() {
                            let status = if first && i == 0 { 0 } else { 1 };
                            // SAFETY: the destination block (`rows` × `nb` at column stride `s_dst · m`)
                            // lies inside `nhwc` and belongs to this group and position only; the packed
                            // weights hold `run.len` steps of `mr` rows from `run.lo`, the group's panels
                            // as many steps of `NR` from `run.src`; the CPU has the kernel's instructions.
                            unsafe {
                                kernel(
                                    rows,
                                    nb,
                                    run.len,
                                    dst.get().add((b0 * s_dst + p) * m + b * mr),
                                    packed.as_ptr().add(b * panel_len + run.lo * mr),
                                    xg.as_ptr().add(run.src * NR),
                                    (s_dst * m) as isize,
                                    1,
                                    mr as isize,
                                    NR as isize,
                                    1,
                                    1.0,
                                    1.0,
                                    status,
                                    false,
                                    false,
                                    false,
                                    core::ptr::null(),
                                );
                            }
                        }
                    }
                }
            }
        },
    );
    // Positions no tap reaches stay zero (the buffer starts zeroed). Back to `[batch, m, s_dst]`.
    if s_dst == 1 {
        return nhwc;
    }
    let mut out = vec![0.0f32; batch * m * s_dst];
    let out_ptr = SyncPtr(out.as_mut_ptr());
    par_items(
        batch,
        || (),
        |b, _| {
            // SAFETY: sample `b` writes its own `m · s_dst` elements only.
            let o = unsafe { core::slice::from_raw_parts_mut(out_ptr.get().add(b * m * s_dst), m * s_dst) };
            super::conv_gemm::transpose_block(&nhwc[b * s_dst * m..(b + 1) * s_dst * m], m, 0, m, s_dst, o);
        },
    );
    out
}
