//! Unit-stride 2D convolutions of deep 5 × 5 and 3 × 3 layers by Winograd's minimal filtering F(2 × 2,
//! 5 × 5) and F(4 × 4, 3 × 3), in f32 with the register-blocked forward kernel of [`conv_direct`].
//!
//! With the six interpolation points 0, 1, −1, 2, −2 and ∞, an `m × m` block of outputs of an `r × r`
//! kernel (`m = 7 − r`) is `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A` for the 6 × 6 input patch `d` the block
//! reads (patches overlap by `r − 1`; `Bᵀ` is the interpolation matrix of the points, `G` and `A`
//! their evaluation matrices for the kernel and the output block, the interpolation's denominators
//! folded into `G`). Summed over input channels, each of the 36 elements `ξ` of the transformed patch
//! is one matrix product over a block of tiles:
//! `M_ξ (C_out × tiles) = U_ξ (C_out × C_in) · V_ξ (C_in × tiles)` — 36 products per pair of channels
//! and tile where the definition takes `m²·r²` (100 for F(2, 5): 2.78 × fewer; 144 for F(4, 3): 4 ×).
//!
//! * weights: `U = G g Gᵀ` once per call (in f64), packed for [`conv_direct::forward_tile`];
//! * input: `V = Bᵀ d B` per input channel: the vertical pass along the input rows of each segment
//!   (a run of tiles along one tile row, its columns followed by a halo of `5 / m` that holds the last
//!   tile's overlap), the horizontal one over the `m` phases of a block's segments laid end to end
//!   (column `u·m + q` of the rows at `[q][u]`), so that both run in vectors across the block's columns
//!   (a halo column's result is computed and not used);
//! * products: the forward kernel with one tap, `Σ_c U_ξ[o][c] · V_ξ[c][t]` for the block's tiles
//!   (8 output channels × 48 tiles in registers with AVX-512);
//! * output: `Aᵀ M A` per output channel along the block, clipped at the maps' edges.
//!
//! The transforms cost `O(C·36)` per tile against the products' `O(C_in·C_out·36)`, so the path is
//! taken for deep layers only ([`MIN_CHANNELS`], [`DEEP_3X3_AVX512`], [`DEEP_3X3_AVX2`]). The input gradient of such a convolution is the
//! forward convolution of the output gradient with the flipped kernel (`conv_shifted`), so it runs
//! here too, as does a transposed convolution's forward pass. The weight gradient is a sum over tiles
//! of Winograd's F(r, m) over the same points ([`conv_weight_grad`]): the same input transform, the
//! output gradient's `m × m` blocks transformed by `G_m`, one product per `ξ` reducing over the tiles
//! (a GEMM, or for fewer than 64 channels the weight-gradient kernel of [`conv_direct`] with one tap).

use alloc::vec;
use alloc::vec::Vec;

use super::conv_direct::{self, Blocking};
use super::conv_gemm::{ConvGeom, SyncPtr, gemm_into, grow_scratch, par_items, weight_grad_sum};
use super::vectorised::vectorised;

/// Points per axis of the transformed patch.
const ALPHA: usize = 6;
/// Elements of a transformed patch.
const XI: usize = ALPHA * ALPHA;
/// The finite interpolation points; ∞ is the sixth.
const POINTS: [f64; ALPHA - 1] = [0.0, 1.0, -1.0, 2.0, -2.0];

/// Fewest input and output channels of a 5 × 5 layer (F(2, 5)): below, the transforms (per channel)
/// outweigh the products saved (per pair of channels).
const MIN_CHANNELS: usize = 32;
/// The 3 × 3 layers (F(4, 3), whose output transform is heavier and whose products per tile are fewer than
/// F(2, 5)'s) that take the path with AVX-512: (fewest input and output channels, fewest tiles of 4 × 4
/// outputs) pairs, any of which suffices. The weight transform (per pair of channels) and each block's
/// transforms (per channel) are amortised over the tiles: 64 channels from 256 tiles (the 2D U-Net's
/// 128-channel level, batch 8 on 16² maps, has 128; both threads get blocks). With 32 channels (32 → 32 on
/// 2 × 128², 2,048 tiles) the path ran about as fast as the by-tap kernels on a Zen 5 (full-width AVX-512), in
/// the CRNN, which is made of such layers (0.99–1.05 × by tap over five alternations), and faster on a Zen 4
/// (AVX-512 on 256-bit datapaths: the CRNN 1.09–1.39 × and the 2D U-Net's training, whose first level is 32
/// channels on 8 × 128², 1.06–1.09 × in release builds back to back), so it takes them from 2,048 tiles, and
/// 16 channels too, as with AVX2 (on the Zen 4 the CNN + LSTM, whose second layer is 16 → 32 on 320 × 16²,
/// 1.05–1.12 ×).
const DEEP_3X3_AVX512: [(usize, usize); 2] = [(64, 256), (16, 2048)];
/// The same with AVX2, whose by-tap kernels run half as many products per instruction as AVX-512's, so
/// that the transforms pay off sooner: 32 channels from 256 tiles, 16 from 2,048.
const DEEP_3X3_AVX2: [(usize, usize); 2] = [(32, 256), (16, 2048)];
/// Fewest output rows and columns: a map of fewer than 8 × 8 outputs wastes most of its border tiles.
const MIN_SIDE: usize = 8;
/// Columns per block (a segment's tiles and its halo): a block's transformed input and products
/// (`36 · (C_in + C_out)` floats per column) stay near L2 for 96 channels, and the transforms' loops
/// run over all of a block's columns at once. The forward kernel computes whole groups of 48 columns with
/// AVX-512 (24 with AVX2), and 144 is three of them: the four segments of 33 columns of a 128-wide map fill
/// 132 of them (with 128 columns per block, three segments filled 99 of 144).
const BLOCK_COLS: usize = 144;
/// Most tiles of one segment: longer tile rows are cut into segments of equal length.
const MAX_SEGMENT: usize = BLOCK_COLS - 2;
/// Fewest input and output channels for which the weight gradient's products per `ξ` go through the GEMM
/// crate (`C_out × C_in`, reducing over a block's columns) rather than the weight-gradient kernel of
/// [`conv_direct`]: the kernel sums each block of accumulators across lanes once per block of columns, the
/// GEMM packs its operands once per product, which pays for many channels (RED-CNN's 96-channel 5 × 5 layers
/// trained 1.16–1.22 × as fast through the GEMM as through the kernel, with AVX-512).
const GEMM_WG_CHANNELS: usize = 64;
/// Columns per strip of the transforms' passes ([`columns`]): one AVX-512 vector.
const STRIP: usize = 16;

/// The kernels of the path, if `g` takes it: a 2D (unit depth) convolution of unit stride and dilation
/// with at least [`MIN_SIDE`] outputs per side, on a CPU with the register-blocked kernels, either 5 × 5
/// with [`MIN_CHANNELS`] channels in and out, or 3 × 3 with the channels and tiles of 4 × 4 outputs of
/// [`DEEP_3X3_AVX512`] or [`DEEP_3X3_AVX2`].
pub(crate) fn kernels(g: &ConvGeom) -> Option<Blocking> {
    let [_, ho, wo] = g.output;
    let plane = g.input[0] == 1
        && g.output[0] == 1
        && g.padding[0] == 0
        && g.stride == [1; 3]
        && g.dilation == [1; 3]
        && ho >= MIN_SIDE
        && wo >= MIN_SIDE;
    if !plane {
        return None;
    }
    let b = Blocking::current()?;
    let channels = g.c_in.min(g.c_out);
    let tiles = g.batch * ho.div_ceil(4) * wo.div_ceil(4);
    let deep = match g.kernel {
        [1, 5, 5] => channels >= MIN_CHANNELS,
        [1, 3, 3] => {
            let rule: &[(usize, usize)] = if b.lanes >= 16 { &DEEP_3X3_AVX512 } else { &DEEP_3X3_AVX2 };
            rule.iter().any(|&(c, t)| channels >= c && tiles >= t)
        }
        _ => false,
    };
    deep.then_some(b)
}

/// Forward convolution `x [batch, c_in, 1, H, W]`, `w [c_out, c_in, 1, r, r]` → `[batch, c_out, 1, Ho,
/// Wo]` for a geometry [`kernels`] accepted.
pub(crate) fn conv_forward(b: Blocking, x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    match g.kernel[1] {
        5 => forward::<2>(b, x, w, g),
        3 => forward::<4>(b, x, w, g),
        r => unreachable!("no Winograd transform for {r} × {r} kernels"),
    }
}

/// `Bᵀ d` for the six points: row `i` of `Bᵀ` holds the coefficients of `Π_{j ≠ i}(x − p_j)` over the
/// finite points (`i < 5`) and of `Π_j (x − p_j)` (`i = 5`).
#[inline(always)]
fn bt(d: [f32; ALPHA]) -> [f32; ALPHA] {
    let (s12, d12) = (d[1] + d[2], d[1] - d[2]);
    let (s34, d34) = (d[3] + d[4], d[4] - d[3]);
    let e = d[4] - d[2];
    let f = 2.0 * (d[3] - d[1]);
    [4.0 * d[0] - 5.0 * d[2] + d[4], s34 - 4.0 * s12, d34 + 4.0 * d12, e + f, e - f, 4.0 * d[1] - 5.0 * d[3] + d[5]]
}

/// `Aᵀ d`: row `a` of `Aᵀ` is `p_i^a` at the finite points, and 1 at ∞ in the last row.
#[inline(always)]
fn at<const M: usize>(d: [f32; ALPHA]) -> [f32; M] {
    let (s12, d12) = (d[1] + d[2], d[1] - d[2]);
    let (s34, d34) = (d[3] + d[4], d[3] - d[4]);
    let mut y = [0.0; M];
    y[0] = d[0] + s12 + s34;
    if M == 2 {
        y[1] = d12 + 2.0 * d34 + d[5];
    } else {
        y[1] = d12 + 2.0 * d34;
        y[2] = s12 + 4.0 * s34;
        y[3] = d12 + 8.0 * d34 + d[5];
    }
    y
}

/// The evaluation matrix of `n`-element polynomials at the six points, stored transposed (`e[a][i]` =
/// `p_i^a`; 1 at ∞ for the last coefficient), with each finite point's row divided by `Π_{j ≠ i}(p_i −
/// p_j)` where `scaled` (the interpolation's denominators, folded into `G`).
fn eval_matrix(n: usize, scaled: bool) -> Vec<[f64; ALPHA]> {
    let mut e = vec![[0.0; ALPHA]; n];
    for (i, p) in POINTS.iter().enumerate() {
        let den: f64 = POINTS.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, q)| p - q).product();
        for (a, row) in e.iter_mut().enumerate() {
            row[i] = p.powi(a as i32) / if scaled { den } else { 1.0 };
        }
    }
    e[n - 1][ALPHA - 1] = 1.0;
    e
}

/// `U_ξ = (G g Gᵀ)_ξ` of every pair of channels, packed per `ξ` for the forward kernel: element `(o, c)`
/// of `ξ` at `ξ·rows·c_in + (cb·c_in + c)·co + o` with `o = cb·co + o'`, zeros for `o ≥ c_out`, `rows`
/// = `c_out` rounded up to `co`.
fn transform_weights(w: &[f32], c_out: usize, c_in: usize, r: usize, co: usize) -> Vec<f32> {
    let gm = eval_matrix(r, true);
    let rows = c_out.div_ceil(co) * co;
    let mut packed = vec![0.0f32; XI * rows * c_in];
    for o in 0..c_out {
        for c in 0..c_in {
            let k = &w[(o * c_in + c) * r * r..][..r * r];
            // half[a][l] = Σ_b g[a][b] G[l][b]; U[kk][l] = Σ_a G[kk][a] half[a][l].
            let mut half = [[0.0f64; ALPHA]; 5];
            for (a, h) in half.iter_mut().enumerate().take(r) {
                for (b, gb) in gm.iter().enumerate() {
                    let v = f64::from(k[a * r + b]);
                    for (hl, gl) in h.iter_mut().zip(gb) {
                        *hl += v * gl;
                    }
                }
            }
            for kk in 0..ALPHA {
                let mut u = [0.0f64; ALPHA];
                for (h, ga) in half.iter().zip(&gm) {
                    for (ul, hl) in u.iter_mut().zip(h) {
                        *ul += ga[kk] * hl;
                    }
                }
                for (l, ul) in u.iter().enumerate() {
                    packed[(kk * ALPHA + l) * rows * c_in + ((o / co) * c_in + c) * co + o % co] = *ul as f32;
                }
            }
        }
    }
    packed
}

/// Per-worker buffers.
#[derive(Default)]
struct Scratch {
    /// Transformed input of a block: `(ξ, c, t)` at `(ξ·c_in + c)·stride + t`.
    v: Vec<f32>,
    /// Products of a block: `(ξ, o, t)` at `(ξ·rows + o)·stride + t`.
    m: Vec<f32>,
    /// The vertical pass: six rows of `stride · M` columns.
    rows: Vec<f32>,
    /// One row in phases; the output transform's passes.
    phases: Vec<f32>,
    /// Zeros standing in for input rows outside the map.
    zeros: Vec<f32>,
}

/// A run of `count` tiles from tile `(ty, tx0)` of one sample, at column `col` of its block.
#[derive(Clone, Copy, Debug)]
struct Segment {
    sample: usize,
    ty: usize,
    tx0: usize,
    count: usize,
    col: usize,
}

/// The segments of `batch` maps of `th × tw` tiles (tile rows longer than [`MAX_SEGMENT`] cut into equal
/// parts), grouped into blocks of at most [`BLOCK_COLS`] columns (one segment at least): the segments
/// and, per block, its range of segments and its columns.
fn blocks(batch: usize, th: usize, tw: usize, halo: usize) -> (Vec<Segment>, Vec<(usize, usize, usize)>) {
    let parts = tw.div_ceil(MAX_SEGMENT);
    let per = tw.div_ceil(parts);
    let (mut segs, mut blocks) = (Vec::new(), Vec::new());
    let (mut first, mut col) = (0, 0);
    for sample in 0..batch {
        for ty in 0..th {
            for tx0 in (0..tw).step_by(per) {
                let count = per.min(tw - tx0);
                if col > 0 && col + count + halo > BLOCK_COLS {
                    blocks.push((first, segs.len(), col));
                    (first, col) = (segs.len(), 0);
                }
                segs.push(Segment { sample, ty, tx0, count, col });
                col += count + halo;
            }
        }
    }
    if col > 0 {
        blocks.push((first, segs.len(), col));
    }
    (segs, blocks)
}

/// Splits `buf` into six slices of `len` elements starting `stride` apart.
#[inline(always)]
fn six_mut(buf: &mut [f32], stride: usize, len: usize) -> [&mut [f32]; ALPHA] {
    let (s0, rest) = buf.split_at_mut(stride);
    let (s1, rest) = rest.split_at_mut(stride);
    let (s2, rest) = rest.split_at_mut(stride);
    let (s3, rest) = rest.split_at_mut(stride);
    let (s4, s5) = rest.split_at_mut(stride);
    [&mut s0[..len], &mut s1[..len], &mut s2[..len], &mut s3[..len], &mut s4[..len], &mut s5[..len]]
}

/// `dst[k][x] = f([src[0][x], …])[k]` for `x < len`, in strips of [`STRIP`] columns, then at most one of
/// `STRIP / 2` and one of `STRIP / 4` (the rows of 28 × 28 maps: 16 + 8 + 4 columns; of 14 × 14 maps: 8 + 4,
/// 2 left), each copied through local arrays: the
/// slices of `src` and `dst` may overlap as far as the compiler knows (they come in arrays), the locals may
/// not, so the strips' loops vectorise across the columns. The strips' copies have their length known
/// (vector moves, not calls to `memcpy`); the last `len mod (STRIP / 4)` columns go one by one.
#[inline(always)]
fn columns<const N: usize, const K: usize>(src: [&[f32]; N], dst: [&mut [f32]; K], len: usize, f: impl Fn([f32; N]) -> [f32; K]) {
    let src = src.map(|s| &s[..len]);
    let mut dst = dst.map(|d| &mut d[..len]);
    let whole = len - len % STRIP;
    for x in (0..whole).step_by(STRIP) {
        strip::<STRIP, N, K>(&src, &mut dst, x, &f);
    }
    let mut x = whole;
    if len - x >= STRIP / 2 {
        strip::<{ STRIP / 2 }, N, K>(&src, &mut dst, x, &f);
        x += STRIP / 2;
    }
    if len - x >= STRIP / 4 {
        strip::<{ STRIP / 4 }, N, K>(&src, &mut dst, x, &f);
        x += STRIP / 4;
    }
    for x in x..len {
        let v = f(core::array::from_fn(|i| src[i][x]));
        for (d, v) in dst.iter_mut().zip(v) {
            d[x] = v;
        }
    }
}

/// One strip of [`columns`]: columns `x..x + S`.
#[inline(always)]
fn strip<const S: usize, const N: usize, const K: usize>(
    src: &[&[f32]; N],
    dst: &mut [&mut [f32]; K],
    x: usize,
    f: &impl Fn([f32; N]) -> [f32; K],
) {
    let mut a = [[0.0f32; S]; N];
    for (a, s) in a.iter_mut().zip(src) {
        a.copy_from_slice(&s[x..x + S]);
    }
    let mut out = [[0.0f32; S]; K];
    for l in 0..S {
        let v = f(core::array::from_fn(|i| a[i][l]));
        for (o, v) in out.iter_mut().zip(v) {
            o[l] = v;
        }
    }
    for (d, o) in dst.iter_mut().zip(&out) {
        d[x..x + S].copy_from_slice(o);
    }
}

/// The vertical pass `Bᵀ d` of one segment of one input map (`plane`, `h × w`, zero-padded by `pad`):
/// columns `x0..x0 + width` of input rows `y0..y0 + 6` (zeros outside the map) into `rows[k·stride + x]`.
#[inline(always)]
fn vertical(plane: &[f32], [h, w]: [usize; 2], [y0, x0]: [isize; 2], width: usize, rows: &mut [f32], stride: usize, zeros: &[f32]) {
    // Columns c0..c1 of the segment lie inside the map.
    let c0 = (-x0).clamp(0, width as isize) as usize;
    let c1 = (w as isize - x0).clamp(c0 as isize, width as isize) as usize;
    let n = c1 - c0;
    let src: [&[f32]; ALPHA] = core::array::from_fn(|i| {
        let y = y0 + i as isize;
        if y >= 0 && (y as usize) < h && n > 0 { &plane[y as usize * w + (x0 + c0 as isize) as usize..][..n] } else { &zeros[..n] }
    });
    let [r0, r1, r2, r3, r4, r5] = six_mut(rows, stride, width);
    for r in [&mut *r0, &mut *r1, &mut *r2, &mut *r3, &mut *r4, &mut *r5] {
        r[..c0].fill(0.0);
        r[c1..].fill(0.0);
    }
    let dst = [&mut r0[c0..c1], &mut r1[c0..c1], &mut r2[c0..c1], &mut r3[c0..c1], &mut r4[c0..c1], &mut r5[c0..c1]];
    columns(src, dst, n, bt);
}

/// `dst[q·stride + t] = src[t·M + q]` for every phase `q < M` and column `t < src.len() / M`: all phases in one
/// loop, so that the loads form one interleaved group (vector loads and shuffles, not a gather per phase).
#[inline(always)]
fn deinterleave<const M: usize>(src: &[f32], dst: &mut [f32], stride: usize) {
    let cols = src.len() / M;
    let src = &src[..cols * M];
    let mut parts = dst.chunks_mut(stride);
    let mut ph: [&mut [f32]; M] = core::array::from_fn(|_| &mut parts.next().unwrap_or_default()[..cols]);
    for t in 0..cols {
        for (q, p) in ph.iter_mut().enumerate() {
            p[t] = src[t * M + q];
        }
    }
}

/// `dst[t·M + q] = src[q·cols + t]` for every phase `q < M` and column `t < cols = dst.len() / M`, the inverse
/// of [`deinterleave`]: one loop, one interleaved group of stores (`conv_gemm::transpose_block`, for any number
/// of rows, stores one row at a time: a strided store per element for four phases).
#[inline(always)]
fn interleave<const M: usize>(src: &[f32], dst: &mut [f32]) {
    let cols = dst.len() / M;
    let dst = &mut dst[..cols * M];
    let ph: [&[f32]; M] = core::array::from_fn(|q| &src[q * cols..][..cols]);
    for t in 0..cols {
        for (q, p) in ph.iter().enumerate() {
            dst[t * M + q] = p[t];
        }
    }
}

/// The horizontal pass `(Bᵀ d) B` over a block's `cols` columns: row `k` of the vertical pass (`rows`,
/// `wide · M` elements) in phases, then `dst[(k·6 + l)·stride + t]` for every column `t < wide`, where `wide ≥
/// cols` is a whole number of strips ([`widened`]; the columns past `cols` are computed and not used).
#[inline(always)]
fn horizontal<const M: usize>(rows: &[f32], k: usize, (cols, wide): (usize, usize), phases: &mut [f32], dst: &mut [f32], stride: usize) {
    let halo = (ALPHA - 1) / M;
    let plen = wide + halo;
    let ph = &mut phases[..M * plen];
    deinterleave::<M>(&rows[..wide * M], ph, plen);
    for q in 0..M {
        ph[q * plen + cols..(q + 1) * plen].fill(0.0);
    }
    // Element j of the tile at column t is column t·M + j: phase j mod M, index t + j / M.
    let d: [&[f32]; ALPHA] = core::array::from_fn(|j| &ph[(j % M) * plen + j / M..][..wide]);
    columns(d, six_mut(&mut dst[k * ALPHA * stride..], stride, wide), wide, bt);
}

/// A block's `cols` columns rounded up to whole strips of [`STRIP`] within the buffers' `stride` (at least
/// the widest block's columns): the passes across a block then run without a scalar tail.
#[inline(always)]
fn widened(cols: usize, stride: usize) -> usize {
    cols.next_multiple_of(STRIP).min(stride)
}

/// `Aᵀ M A` of one output channel over `cols` columns of a block (products `src[ξ·stride + t]`; a whole
/// number of strips, [`widened`], the segments' columns among them), written
/// into the segments' tiles of `out` (`[batch, c_out, ho, wo]` at channel `o`), clipped at the maps'
/// edges.
///
/// # Safety
/// `out` holds the `batch · c_out` maps of `map_out = ho · wo` elements, and no other thread writes the
/// segments' tiles of channel `o`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn output_block<const M: usize>(
    src: &[f32],
    stride: usize,
    cols: usize,
    segs: &[Segment],
    out: *mut f32,
    (o, c_out): (usize, usize),
    [ho, wo]: [usize; 2],
    z: &mut Vec<f32>,
) {
    // First pass: z[(l·M + a)·cols + t] = Σ_k Aᵀ[a][k] · M[k·6 + l][t].
    grow_scratch(z, (M * ALPHA + 2 * M) * cols);
    let (zs, rest) = z.split_at_mut(M * ALPHA * cols);
    let (row, ph) = rest.split_at_mut(M * cols);
    for (l, zl) in zs.chunks_exact_mut(M * cols).enumerate() {
        let d: [&[f32]; ALPHA] = core::array::from_fn(|k| &src[(k * ALPHA + l) * stride..][..cols]);
        let mut parts = zl.chunks_exact_mut(cols);
        let z: [&mut [f32]; M] = core::array::from_fn(|_| parts.next().unwrap_or_default());
        columns(d, z, cols, at::<M>);
    }
    for a in 0..M {
        // Second pass, in phases: ph[b·cols + t] = Σ_l z[(l·M + a)·cols + t] · A[l][b], then row[t·M + b].
        let d: [&[f32]; ALPHA] = core::array::from_fn(|l| &zs[(l * M + a) * cols..][..cols]);
        let mut parts = ph.chunks_exact_mut(cols);
        columns(d, core::array::from_fn::<_, M, _>(|_| parts.next().unwrap_or_default()), cols, at::<M>);
        interleave::<M>(ph, &mut row[..cols * M]);
        for s in segs {
            let y = s.ty * M + a;
            if y < ho {
                let x0 = s.tx0 * M;
                let len = (s.count * M).min(wo - x0);
                // SAFETY: row y < ho, columns x0..x0 + len ≤ wo of map (sample, o).
                unsafe {
                    let dst = out.add((s.sample * c_out + o) * ho * wo + y * wo + x0);
                    core::ptr::copy_nonoverlapping(row[s.col * M..].as_ptr(), dst, len);
                }
            }
        }
    }
}

/// The transformed input of a block of `cols` columns into `s.v`: `(ξ, c, t)` at `(ξ·c_in + c)·stride +
/// t`, for the tiles of `segs` of `x [batch, c_in, 1, H, W]`.
#[inline(always)]
fn input_block<const M: usize>(x: &[f32], g: &ConvGeom, segs: &[Segment], (cols, stride): (usize, usize), s: &mut Scratch) {
    let halo = (ALPHA - 1) / M;
    let [_, h, w] = g.input;
    let pad = [g.padding[1] as isize, g.padding[2] as isize];
    grow_scratch(&mut s.v, XI * g.c_in * stride);
    grow_scratch(&mut s.rows, ALPHA * stride * M);
    grow_scratch(&mut s.phases, (M * ALPHA + M) * stride);
    grow_scratch(&mut s.zeros, (MAX_SEGMENT + halo) * M);
    let wide = widened(cols, stride);
    for c in 0..g.c_in {
        for seg in segs {
            let plane = &x[(seg.sample * g.c_in + c) * h * w..][..h * w];
            let origin = [(seg.ty * M) as isize - pad[0], (seg.tx0 * M) as isize - pad[1]];
            let width = (seg.count + halo) * M;
            vertical(plane, [h, w], origin, width, &mut s.rows[seg.col * M..], stride * M, &s.zeros);
        }
        for k in 0..ALPHA {
            let row = &s.rows[k * stride * M..][..wide * M];
            horizontal::<M>(row, k, (cols, wide), &mut s.phases, &mut s.v[c * stride..], g.c_in * stride);
        }
    }
}

/// The transformed output gradient of a block of `cols` columns into `s.m`: `E = G_M e G_Mᵀ` of each
/// `M × M` tile `e` of `dy [batch, c_out, 1, Ho, Wo]` (zeros outside the map), `(ξ, o, t)` at `(ξ·c_out
/// + o)·stride + t`, zeros at the segments' halo columns and past the block's. `gk[k][i]` is `G_M`. Like
/// the input's, the vertical pass runs along each segment's rows and the horizontal one across the whole
/// block, in phases.
#[inline(always)]
fn output_grad_block<const M: usize>(
    dy: &[f32],
    g: &ConvGeom,
    segs: &[Segment],
    (cols, stride): (usize, usize),
    gk: &[[f32; M]; ALPHA],
    s: &mut Scratch,
) {
    let halo = (ALPHA - 1) / M;
    let [_, ho, wo] = g.output;
    let wide = widened(cols, stride);
    grow_scratch(&mut s.m, XI * g.c_out * stride);
    grow_scratch(&mut s.rows, ALPHA * stride * M);
    grow_scratch(&mut s.phases, M * stride);
    grow_scratch(&mut s.zeros, MAX_SEGMENT * M);
    for o in 0..g.c_out {
        for seg in segs {
            // Vertical: r_k[x] = Σ_i G[k][i] · dy[ty·M + i][x0 + x] over the segment's columns, zeros past the
            // map's last row and column and over the halo.
            let plane = &dy[(seg.sample * g.c_out + o) * ho * wo..][..ho * wo];
            let x0 = seg.tx0 * M;
            let n = (seg.count * M).min(wo - x0);
            let src: [&[f32]; M] = core::array::from_fn(|i| {
                let y = seg.ty * M + i;
                if y < ho { &plane[y * wo + x0..][..n] } else { &s.zeros[..n] }
            });
            let width = (seg.count + halo) * M;
            let [r0, r1, r2, r3, r4, r5] = six_mut(&mut s.rows[seg.col * M..], stride * M, width);
            columns(src, [&mut *r0, &mut *r1, &mut *r2, &mut *r3, &mut *r4, &mut *r5], n, |d| gm_times(gk, d));
            for r in [r0, r1, r2, r3, r4, r5] {
                r[n..].fill(0.0);
            }
        }
        // Horizontal: E[k·6 + l][t] = Σ_j G[l][j] · r_k[t·M + j], the row in phases (phase j at `j·stride`).
        for k in 0..ALPHA {
            let row = &s.rows[k * stride * M..][..wide * M];
            let ph = &mut s.phases[..M * stride];
            deinterleave::<M>(row, ph, stride);
            for p in ph.chunks_exact_mut(stride) {
                p[cols..wide].fill(0.0);
            }
            let d: [&[f32]; M] = core::array::from_fn(|j| &ph[j * stride..][..wide]);
            let dst = &mut s.m[(k * ALPHA * g.c_out + o) * stride..];
            columns(d, six_mut(dst, g.c_out * stride, wide), wide, |e| gm_times(gk, e));
        }
    }
}

/// `G_M e` for `gk[k][i]` = `G_M[k][i]`.
#[inline(always)]
fn gm_times<const M: usize>(gk: &[[f32; M]; ALPHA], e: [f32; M]) -> [f32; ALPHA] {
    core::array::from_fn(|k| {
        let mut sum = 0.0;
        for (gi, ei) in gk[k].iter().zip(&e) {
            sum += gi * ei;
        }
        sum
    })
}

/// Weight gradient `x [batch, c_in, 1, H, W]`, `dy [batch, c_out, 1, Ho, Wo]` → `dw [c_out, c_in, 1, r, r]`
/// for a geometry [`kernels`] accepted. Each tile's share of `dw` is the correlation of its 6 × 6 input
/// patch with its `M × M` block of `dy`, Winograd's F(r, M) over the same six points: `A_rᵀ [(G_M e
/// G_Mᵀ) ⊙ (Bᵀ d B)] A_r`, so that summed over tiles `dw_ξ (C_out × C_in) = Σ_t E_ξ[o][t] · V_ξ[c][t]`,
/// one product per `ξ` over a block's columns (a GEMM, or below [`GEMM_WG_CHANNELS`] channels
/// [`block_weight_grad`]), accumulated per worker, then `A_rᵀ · A_r` per pair of channels.
pub(crate) fn conv_weight_grad(b: Blocking, x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    match g.kernel[1] {
        5 => weight_grad::<2>(b, x, dy, g),
        3 => weight_grad::<4>(b, x, dy, g),
        r => unreachable!("no Winograd transform for {r} × {r} kernels"),
    }
}

/// [`conv_weight_grad`] for blocks of `M × M` outputs (`r = 7 − M`).
fn weight_grad<const M: usize>(b: Blocking, x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let r = ALPHA + 1 - M;
    let [_, ho, wo] = g.output;
    let (segs, blocks) = blocks(g.batch, ho.div_ceil(M), wo.div_ceil(M), (ALPHA - 1) / M);
    let stride = blocks.iter().map(|blk| blk.2).max().unwrap_or(0).next_multiple_of(STRIP);
    let gm = eval_matrix(M, true);
    let gk: [[f32; M]; ALPHA] = core::array::from_fn(|k| core::array::from_fn(|i| gm[i][k] as f32));
    let pairs = g.c_out * g.c_in;
    // The vectors of the widest block, for the weight-gradient kernel.
    let starts: Vec<usize> = (0..stride / b.lanes).map(|i| i * b.lanes).collect();
    let ids: Vec<usize> = (0..blocks.len()).collect();
    let acc = weight_grad_sum(&ids, XI * pairs, |acc: &mut Vec<f32>, s: &mut Scratch, bi: usize, par: bool| {
        let (first, end, cols) = blocks[bi];
        let segs = &segs[first..end];
        vectorised(
            #[inline(always)]
            || {
                input_block::<M>(x, g, segs, (cols, stride), s);
                output_grad_block::<M>(dy, g, segs, (cols, stride), &gk, s);
            },
        );
        if g.c_in.min(g.c_out) < GEMM_WG_CHANNELS {
            block_weight_grad(b, s, (g.c_out, g.c_in), (&starts[..cols.div_ceil(b.lanes)], stride), acc);
            return;
        }
        for xi in 0..XI {
            // SAFETY: dw_ξ is c_out × c_in (row stride c_in) inside acc; E_ξ (o, t) at o·stride + t and
            // V_ξ (t, c) at c·stride + t for t < cols, inside their buffers.
            unsafe {
                gemm_into(
                    g.c_out,
                    g.c_in,
                    cols,
                    acc.as_mut_ptr().add(xi * pairs),
                    g.c_in,
                    1,
                    true,
                    s.m.as_ptr().add(xi * g.c_out * stride),
                    stride as isize,
                    1,
                    s.v.as_ptr().add(xi * g.c_in * stride),
                    1,
                    stride as isize,
                    par,
                );
            }
        }
    });
    // dw[a][b] = Σ_k Σ_l A[k][a] · acc[k·6 + l] · A[l][b] per pair of channels, as plain loops like the
    // weight transform's (iterator sums there compiled to a call per element).
    let am = eval_matrix(r, false);
    let mut dw = vec![0.0f32; pairs * r * r];
    for (pair, out) in dw.chunks_exact_mut(r * r).enumerate() {
        let mut u = [0.0f64; XI];
        for (xi, v) in u.iter_mut().enumerate() {
            *v = f64::from(acc[xi * pairs + pair]);
        }
        for (a, ea) in am.iter().enumerate() {
            // half[l] = Σ_k A[k][a] · u[k·6 + l]
            let mut half = [0.0f64; ALPHA];
            for (k, e) in ea.iter().enumerate() {
                for (h, v) in half.iter_mut().zip(&u[k * ALPHA..(k + 1) * ALPHA]) {
                    *h += e * v;
                }
            }
            for (o, eb) in out[a * r..(a + 1) * r].iter_mut().zip(&am) {
                let mut sum = 0.0f64;
                for (h, e) in half.iter().zip(eb) {
                    sum += h * e;
                }
                *o = sum as f32;
            }
        }
    }
    dw
}

/// One block's share of the weight gradient by the weight-gradient kernel of [`conv_direct`] with one tap:
/// `acc[ξ·c_out·c_in + o·c_in + c] += Σ_t E_ξ[o][t] · V_ξ[c][t]` over the vectors starting at `starts`, which
/// cover the block's columns (V and E are zero past them).
fn block_weight_grad(b: Blocking, s: &mut Scratch, (c_out, c_in): (usize, usize), (starts, stride): (&[usize], usize), acc: &mut [f32]) {
    // The kernel reads up to `wg_out − 1` rows past E_ξ's last: the next ξ's, or zeros past the last.
    grow_scratch(&mut s.m, (XI * c_out + b.wg_out) * stride);
    for (xi, dw) in acc.chunks_exact_mut(c_out * c_in).enumerate() {
        // SAFETY: V_ξ holds c_in rows of `stride` ≥ starts.len()·lanes columns, E_ξ c_out rows (and the
        // rows read past them, above); the CPU has `b`'s instruction set.
        unsafe {
            conv_direct::weight_grad_tile(
                b,
                s.v.as_ptr().add(xi * c_in * stride),
                stride,
                &[0],
                starts,
                s.m.as_ptr().add(xi * c_out * stride),
                stride,
                c_out,
                c_in,
                dw,
            );
        }
    }
}

/// [`conv_forward`] for blocks of `M × M` outputs (`r = 7 − M`).
fn forward<const M: usize>(b: Blocking, x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let r = ALPHA + 1 - M;
    let [_, ho, wo] = g.output;
    let (segs, blocks) = blocks(g.batch, ho.div_ceil(M), wo.div_ceil(M), (ALPHA - 1) / M);
    let group = b.lanes * b.fwd_vectors;
    let stride = blocks.iter().map(|blk| blk.2).max().unwrap_or(0).div_ceil(group) * group;
    let co_blocks = g.c_out.div_ceil(b.fwd_channels);
    let rows = co_blocks * b.fwd_channels;
    let packed = transform_weights(w, g.c_out, g.c_in, r, b.fwd_channels);
    let wp_len = rows * g.c_in;
    let starts: Vec<usize> = (0..stride / b.lanes).map(|i| i * b.lanes).collect();
    let len = g.batch * g.c_out * ho * wo;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    par_items(blocks.len(), Scratch::default, |bi, s| {
        let (first, end, cols) = blocks[bi];
        let segs = &segs[first..end];
        let vectors = cols.div_ceil(group) * group / b.lanes;
        // Columns past `cols` that the products read hold stale values; their products are not read.
        grow_scratch(&mut s.m, XI * rows * stride);
        grow_scratch(&mut s.phases, (M * ALPHA + M) * stride);
        vectorised(
            #[inline(always)]
            || input_block::<M>(x, g, segs, (cols, stride), s),
        );
        for xi in 0..XI {
            // SAFETY: V_ξ holds c_in rows of `stride` ≥ vectors·lanes columns; M_ξ holds `rows` rows of
            // `stride`; the packed weights of ξ are `rows · c_in` long; the CPU has `b`'s instructions.
            unsafe {
                conv_direct::forward_tile(
                    b,
                    s.v.as_ptr().add(xi * g.c_in * stride),
                    stride,
                    &[0],
                    &packed[xi * wp_len..][..wp_len],
                    g.c_in,
                    co_blocks,
                    &starts[..vectors],
                    s.m.as_mut_ptr().add(xi * rows * stride),
                    stride,
                );
            }
        }
        let (m, z) = (&s.m, &mut s.phases);
        vectorised(
            #[inline(always)]
            || {
                let wide = widened(cols, stride);
                for o in 0..g.c_out {
                    // SAFETY: blocks write disjoint tiles.
                    unsafe { output_block::<M>(&m[o * stride..], rows * stride, wide, segs, out_ptr.get(), (o, g.c_out), [ho, wo], z) };
                }
            },
        );
    });
    // SAFETY: the segments cover every tile of every map, and each block writes its segments' tiles of
    // all c_out maps.
    unsafe { out.set_len(len) };
    out
}
