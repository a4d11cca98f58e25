//! Convolutions and transposed convolutions as im2col / col2im + GEMM, computed in the tensors' own
//! NC(D)HW layout: forward, input gradient and weight gradient.
//!
//! Every 1D/2D/3D convolution is expressed as a 3D one (unit depth and height where absent). The
//! output positions are cut into tiles of whole output rows; a tile's im2col matrix
//! (`C·K` rows × tile columns) is packed once and fed to `gemm`:
//!
//! * forward: `Y[b][:, tile] = W (Co × C·K) · col`, written straight into the output;
//! * input gradient: `col = Wᵀ · dY[b][:, tile]`, scattered back with col2im (workers own disjoint
//!   input channels, so no two threads add into the same element);
//! * weight gradient: `dW += dY[b][:, tile] · colᵀ`, one accumulator per worker, summed at the end.
//!
//! A transposed convolution is the input gradient of the convolution whose input is its output,
//! so the same three kernels serve it (forward = input gradient, input gradient = forward, weight
//! gradient = weight gradient with the roles of input and output gradient exchanged).
//!
//! When several samples fit one tile (deep layers with small spatial size), the tile spans whole
//! samples so that the weights are packed once for many samples.

use alloc::vec;
use alloc::vec::Vec;
use burn_backend::DType;
use burn_backend::ops::FloatTensorOps;
use burn_std::{Bytes, FloatDType, Shape};
use bytemuck::Pod;
use num_traits::Float;

use super::{conv_panel, conv_rows, conv_shifted, conv_winograd};
use crate::{Flex, FlexTensor, Layout};

/// Target number of elements of one tile's im2col matrix (512 KiB in f32: packed and consumed in L2).
const TILE_ELEMS: usize = 1 << 17;
/// Smallest and largest number of output columns a tile aims for.
const MIN_TILE_COLS: usize = 256;
const MAX_TILE_COLS: usize = 4096;

/// Geometry of one convolution with `groups == 1`, in 3D.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeom {
    /// Number of samples.
    pub batch: usize,
    /// Channels of the convolution's input.
    pub c_in: usize,
    /// Channels of the convolution's output.
    pub c_out: usize,
    /// Input spatial size (depth, height, width).
    pub input: [usize; 3],
    /// Output spatial size (depth, height, width).
    pub output: [usize; 3],
    /// Kernel size.
    pub kernel: [usize; 3],
    /// Stride.
    pub stride: [usize; 3],
    /// Zero padding on each side.
    pub padding: [usize; 3],
    /// Dilation.
    pub dilation: [usize; 3],
}

impl ConvGeom {
    pub(crate) fn k_len(&self) -> usize {
        self.kernel.iter().product()
    }
    pub(crate) fn col_rows(&self) -> usize {
        self.c_in * self.k_len()
    }
    fn s_in(&self) -> usize {
        self.input.iter().product()
    }
    pub(crate) fn s_out(&self) -> usize {
        self.output.iter().product()
    }
    fn rows_per_sample(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Tiles as ranges of global output rows (`b·D·H + d·H + h`): inside one sample, or spanning
    /// whole samples.
    fn tiles(&self) -> Vec<(usize, usize)> {
        let row_len = self.output[2].max(1);
        let rps = self.rows_per_sample();
        let total = self.batch * rps;
        if total == 0 {
            return Vec::new();
        }
        let cols = (TILE_ELEMS / self.col_rows().max(1)).clamp(MIN_TILE_COLS, MAX_TILE_COLS);
        let mut tile_rows = (cols / row_len).max(1);
        // Keep both cores busy: at least four tiles where the work allows it.
        let threads = num_threads();
        if total / tile_rows < 2 * threads && total >= 2 * threads {
            tile_rows = total.div_ceil(2 * threads);
        }
        let mut tiles = Vec::new();
        if tile_rows >= rps {
            let samples = (tile_rows / rps).max(1);
            let mut b = 0;
            while b < self.batch {
                let e = (b + samples).min(self.batch);
                tiles.push((b * rps, e * rps));
                b = e;
            }
        } else {
            for b in 0..self.batch {
                let mut r = 0;
                while r < rps {
                    let e = (r + tile_rows).min(rps);
                    tiles.push((b * rps + r, b * rps + e));
                    r = e;
                }
            }
        }
        tiles
    }
}

#[cfg(feature = "rayon")]
pub(crate) fn num_threads() -> usize {
    rayon::current_num_threads()
}
#[cfg(not(feature = "rayon"))]
pub(crate) fn num_threads() -> usize {
    1
}

/// Element types the kernels run on natively.
pub(crate) trait ConvElem: Float + Pod + Send + Sync + core::ops::AddAssign + 'static {}
impl ConvElem for f32 {}
impl ConvElem for f64 {}

/// Range of output indices `o` (along one axis) whose input index `o·s + k·d − p` lies in `0..n`.
#[inline]
pub(super) fn valid_range(out: usize, n: usize, s: usize, off: isize) -> (usize, usize) {
    // i = o*s + off, need 0 <= i < n
    let lo = if off >= 0 { 0 } else { ((-off) as usize).div_ceil(s) };
    let hi_num = n as isize - off; // o*s < hi_num
    let hi = if hi_num <= 0 { 0 } else { (hi_num as usize).div_ceil(s) };
    (lo.min(out), hi.min(out).max(lo.min(out)))
}

/// One run of a tile's im2col row: `rows` consecutive tile rows whose col segments
/// `col[col_off .. col_off + rows · out_w]` read input rows that follow each other in memory
/// (`x[src + r · in_w ..]` for row `r`), or that all lie in the padding (`src == None`).
/// Columns `lo..hi` of each row are inside the input; column `o` of row `r` reads
/// `src + r · in_w + o · sw + ix0`.
#[derive(Clone, Copy)]
struct Run {
    col_off: usize,
    src: Option<usize>,
    rows: usize,
    lo: usize,
    hi: usize,
    ix0: isize,
}

/// Visits every im2col row of a tile as runs of tile rows (see [`Run`]). Rows are merged only when
/// both the col segments and the input rows are contiguous (unit stride along the width and
/// `out_w == in_w`, the "same" convolutions of encoder–decoder networks), so a run is one flat
/// copy with the padding columns fixed up afterwards.
#[inline]
fn for_each_run(g: &ConvGeom, tile: (usize, usize), tcols: usize, c_range: (usize, usize), mut f: impl FnMut(Run)) {
    let [kd, kh, kw] = g.kernel;
    let [in_d, in_h, in_w] = g.input;
    let [_, out_h, out_w] = g.output;
    let [sd, sh, sw] = g.stride;
    let [pd, ph, pw] = g.padding;
    let [dd, dh, dw] = g.dilation;
    let rps = g.rows_per_sample();
    let s_in = g.s_in();
    let k_len = g.k_len();
    let mergeable = sw == 1 && out_w == in_w;
    // The runs depend on the tap's depth and row only, not on the channel or the tap's column:
    // per (kz, ky), the runs as (first tile row, rows, input offset without the channel's).
    let mut runs: Vec<Vec<(usize, usize, Option<usize>)>> = Vec::with_capacity(kd * kh);
    for kz in 0..kd {
        for ky in 0..kh {
            let (dz, dy) = ((kz * dd) as isize, (ky * dh) as isize);
            let mut list: Vec<(usize, usize, Option<usize>)> = Vec::new();
            for i in 0..tile.1 - tile.0 {
                let gr = tile.0 + i;
                let b = gr / rps;
                let rem = gr % rps;
                let (od, oh) = (rem / out_h, rem % out_h);
                let iz = (od * sd) as isize - pd as isize + dz;
                let iy = (oh * sh) as isize - ph as isize + dy;
                let src = if iz < 0 || iz >= in_d as isize || iy < 0 || iy >= in_h as isize {
                    None
                } else {
                    Some(b * g.c_in * s_in + (iz as usize * in_h + iy as usize) * in_w)
                };
                if let Some(last) = list.last_mut() {
                    let follows = match (last.2, src) {
                        (None, None) => true,
                        (Some(a), Some(b)) => mergeable && b == a + last.1 * in_w,
                        _ => false,
                    };
                    if follows {
                        last.1 += 1;
                        continue;
                    }
                }
                list.push((i, 1, src));
            }
            runs.push(list);
        }
    }
    for c in c_range.0..c_range.1 {
        for (kzy, list) in runs.iter().enumerate() {
            for kx in 0..kw {
                let row = ((c - c_range.0) * k_len) + kzy * kw + kx;
                let ix0 = (kx * dw) as isize - pw as isize;
                let (lo, hi) = valid_range(out_w, in_w, sw, ix0);
                for &(i, rows, src) in list {
                    f(Run { col_off: row * tcols + i * out_w, src: src.map(|s| s + c * s_in), rows, lo, hi, ix0 });
                }
            }
        }
    }
}

/// Packs the im2col matrix of channels `c_range` for a tile: `col[(c·K + k) · tcols + j]`.
fn im2col<T: ConvElem>(
    x: &[T],
    g: &ConvGeom,
    tile: (usize, usize),
    c_range: (usize, usize),
    col: &mut [T],
) {
    let out_w = g.output[2];
    let sw = g.stride[2];
    let tcols = (tile.1 - tile.0) * out_w;
    let rows2 = stride2_rows::<T>(sw);
    for_each_run(g, tile, tcols, c_range, |Run { col_off, src, rows, lo, hi, ix0 }| {
        let dst = &mut col[col_off..col_off + rows * out_w];
        let Some(src) = src else {
            dst.fill(T::zero());
            return;
        };
        if lo >= hi {
            dst.fill(T::zero());
            return;
        }
        if rows > 1 {
            // One flat copy across the run (rows are contiguous on both sides), then the columns
            // that fall in the padding, which the flat copy filled from neighbouring rows.
            let first = lo;
            let last = (rows - 1) * out_w + hi;
            let start = (src as isize + ix0 + first as isize) as usize;
            dst[first..last].copy_from_slice(&x[start..start + (last - first)]);
            for r in 0..rows {
                zero_outside(&mut dst[r * out_w..(r + 1) * out_w], lo, hi);
            }
            return;
        }
        zero_outside(dst, lo, hi);
        let start = (src as isize + (lo * sw) as isize + ix0) as usize;
        match sw {
            1 => copy_row(&mut dst[lo..hi], &x[start..start + (hi - lo)]),
            // A constant stride lets the gather be unrolled (and vectorised) without per-element
            // bounds checks: stride 2 is every strided convolution of the reference networks.
            2 => {
                let (d, s) = (&mut dst[lo..hi], &x[start..start + (hi - lo - 1) * 2 + 1]);
                match rows2 {
                    // SAFETY: `T` is f32 where `rows2` is given; `s` holds the `2·n − 1` elements the
                    // gather reads for the `n` it writes into `d`.
                    Some((gather, _)) => unsafe { gather(d.as_mut_ptr().cast(), s.as_ptr().cast(), d.len()) },
                    None => gather_strided(d, s, 2),
                }
            }
            s => gather_strided(&mut dst[lo..hi], &x[start..start + (hi - lo - 1) * s + 1], s),
        }
    });
}

/// The stride-2 row kernels of `conv_rows` for rows of stride `sw` in `T`, where they apply (f32, stride 2,
/// AVX-512 or AVX2).
#[inline]
fn stride2_rows<T: ConvElem>(sw: usize) -> Option<(conv_rows::RowFn, conv_rows::RowFn)> {
    if sw == 2 && core::any::TypeId::of::<T>() == core::any::TypeId::of::<f32>() {
        conv_rows::stride2()
    } else {
        None
    }
}

/// `dst.copy_from_slice(src)`, without a call for rows of up to 16 elements (the rows of valid
/// convolutions on small maps, e.g. LeNet-5's 10-wide second layer, where a `memcpy` call per row costs
/// more than its copy): two fixed-size copies that overlap in the middle.
#[inline(always)]
fn copy_row<T: Copy>(dst: &mut [T], src: &[T]) {
    let n = dst.len();
    assert_eq!(n, src.len(), "copy_row: lengths differ");
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    // SAFETY: both slices hold n elements (asserted), each copy below stays inside 0..n, and the
    // slices do not overlap (one is borrowed mutably, the other shared).
    unsafe {
        match n {
            0 => {}
            1..4 => {
                *d = *s;
                *d.add(n / 2) = *s.add(n / 2);
                *d.add(n - 1) = *s.add(n - 1);
            }
            4..8 => {
                core::ptr::copy_nonoverlapping(s, d, 4);
                core::ptr::copy_nonoverlapping(s.add(n - 4), d.add(n - 4), 4);
            }
            8..=16 => {
                core::ptr::copy_nonoverlapping(s, d, 8);
                core::ptr::copy_nonoverlapping(s.add(n - 8), d.add(n - 8), 8);
            }
            _ => dst.copy_from_slice(src),
        }
    }
}

/// `dst[j] = src[j · stride]`; `src` holds at least `(dst.len() − 1) · stride + 1` elements.
#[inline(always)]
fn gather_strided<T: Copy>(dst: &mut [T], src: &[T], stride: usize) {
    assert!(dst.is_empty() || (dst.len() - 1) * stride < src.len());
    for (j, d) in dst.iter_mut().enumerate() {
        // SAFETY: `j · stride ≤ (dst.len() − 1) · stride < src.len()` (asserted above).
        *d = unsafe { *src.get_unchecked(j * stride) };
    }
}

/// Zeroes `row[..lo]` and `row[hi..]` (the columns of an im2col row that lie in the padding; a
/// few elements, written one by one rather than through a call).
#[inline(always)]
fn zero_outside<T: ConvElem>(row: &mut [T], lo: usize, hi: usize) {
    match lo {
        0 => {}
        1 => row[0] = T::zero(),
        _ => row[..lo].fill(T::zero()),
    }
    match row.len() - hi {
        0 => {}
        1 => row[hi] = T::zero(),
        _ => row[hi..].fill(T::zero()),
    }
}

/// Adds a tile's column matrix for channels `c_range` back into `dx` (col2im). The padding
/// columns of `col` are zeroed on the way (it is scratch).
///
/// # Safety
/// `dx` must point to `batch · c_in · s_in` elements and no other thread may touch the channels in
/// `c_range` of the tile's samples.
unsafe fn col2im<T: ConvElem>(
    col: &mut [T],
    g: &ConvGeom,
    tile: (usize, usize),
    c_range: (usize, usize),
    dx: *mut T,
) {
    let out_w = g.output[2];
    let sw = g.stride[2];
    let tcols = (tile.1 - tile.0) * out_w;
    let rows2 = stride2_rows::<T>(sw);
    for_each_run(g, tile, tcols, c_range, |Run { col_off, src, rows, lo, hi, ix0 }| {
        let Some(src) = src else { return };
        if lo >= hi {
            return;
        }
        let seg = &mut col[col_off..col_off + rows * out_w];
        if rows > 1 {
            // Zero the padding columns, then one flat add across the run: the zeroed columns land
            // on neighbouring rows' elements and add nothing.
            for r in 0..rows {
                zero_outside(&mut seg[r * out_w..(r + 1) * out_w], lo, hi);
            }
            let first = lo;
            let last = (rows - 1) * out_w + hi;
            let start = (src as isize + ix0 + first as isize) as usize;
            // SAFETY: `start .. start + (last − first)` lies in the run's input rows (columns
            // `lo..hi` of the first and last row are inside the input); channel ownership by contract.
            let d = unsafe { core::slice::from_raw_parts_mut(dx.add(start), last - first) };
            add_assign(d, &seg[first..last]);
            return;
        }
        let start = (src as isize + (lo * sw) as isize + ix0) as usize;
        // SAFETY: in bounds by construction of the segment; channel ownership by contract.
        unsafe {
            match (sw, rows2) {
                // `T` is f32 where `rows2` is given.
                (2, Some((_, scatter_add))) => scatter_add(dx.add(start).cast(), seg[lo..hi].as_ptr().cast(), hi - lo),
                (2, None) => add_strided(dx.add(start), &seg[lo..hi], 2),
                (s, _) => add_strided(dx.add(start), &seg[lo..hi], s),
            }
        }
    });
}

/// `dst[j · stride] += src[j]` (with a constant stride the loop is unrolled).
///
/// # Safety
/// `dst` must be valid for reads and writes of `(src.len() − 1) · stride + 1` elements.
#[inline(always)]
unsafe fn add_strided<T: ConvElem>(dst: *mut T, src: &[T], stride: usize) {
    for (j, v) in src.iter().enumerate() {
        // SAFETY: by the caller's contract.
        unsafe { *dst.add(j * stride) += *v };
    }
}

/// `dst[i] += src[i]`, compiled for the widest vector instructions the CPU has (the crate's own
/// code is built for the baseline x86-64, whose SSE adds four floats at a time).
#[inline]
fn add_assign<T: ConvElem>(dst: &mut [T], src: &[T]) {
    super::vectorised::vectorised(
        #[inline(always)]
        || {
            for (a, v) in dst.iter_mut().zip(src) {
                *a += *v;
            }
        },
    );
}

/// `dst (m × n) = [dst +] lhs (m × k) · rhs (k × n)` with arbitrary strides (row stride, column stride).
#[allow(clippy::too_many_arguments)]
#[inline]
pub(crate) unsafe fn gemm_into<T: ConvElem>(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut T,
    dst_rs: usize,
    dst_cs: usize,
    accumulate: bool,
    lhs: *const T,
    lhs_rs: isize,
    lhs_cs: isize,
    rhs: *const T,
    rhs_rs: isize,
    rhs_cs: isize,
    parallel: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    #[cfg(feature = "rayon")]
    let par = if parallel { gemm::Parallelism::Rayon(0) } else { gemm::Parallelism::None };
    #[cfg(not(feature = "rayon"))]
    let par = {
        let _ = parallel;
        gemm::Parallelism::None
    };
    // SAFETY: the caller guarantees every pointer covers the strided matrix it describes.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst,
            dst_cs as isize,
            dst_rs as isize,
            accumulate,
            lhs,
            lhs_cs,
            lhs_rs,
            rhs,
            rhs_cs,
            rhs_rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

/// A raw pointer that may cross threads; users guarantee disjoint writes.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: only used for writes to disjoint regions (see each use).
unsafe impl<T> Send for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Sync for SyncPtr<T> {}
impl<T> SyncPtr<T> {
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Runs `f(i, scratch)` for `i in 0..n`, in parallel when there is more than one item.
pub(crate) fn par_items<S: Send>(n: usize, init: impl Fn() -> S + Sync + Send, f: impl Fn(usize, &mut S) + Sync + Send) {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        if n > 1 {
            (0..n).into_par_iter().with_min_len(1).for_each_init(init, |s, i| f(i, s));
            return;
        }
    }
    let mut s = init();
    for i in 0..n {
        f(i, &mut s);
    }
}

/// Gathers a tile's block of a `[batch, ch, s]` tensor into `out`: the `ch × tcols` matrix row-major
/// (row stride `tcols`), or with `transposed` its transpose (`tcols × ch`, row stride `ch`).
///
/// The tensor's own rows are one feature map apart (`s` elements, often a power of two): read in
/// place, a GEMM's packing walks `ch` streams that share cache sets, and a row-major left operand is
/// packed through a scalar gather. The gathered copy is small (one tile) and read from cache.
fn gather_tile<T: ConvElem>(
    data: &[T],
    ch: usize,
    s: usize,
    rps: usize,
    row_len: usize,
    tile: (usize, usize),
    transposed: bool,
    out: &mut Vec<T>,
) {
    let tcols = (tile.1 - tile.0) * row_len;
    // The tile's columns are written in full below.
    grow_scratch(out, ch * tcols);
    let mut j0 = 0;
    let mut r = tile.0;
    while r < tile.1 {
        // The part of the tile inside sample `b`: its columns `p0..p1`.
        let b = r / rps;
        let end = tile.1.min((b + 1) * rps);
        let (p0, p1) = ((r - b * rps) * row_len, (end - b * rps) * row_len);
        let src = &data[b * ch * s..(b + 1) * ch * s];
        if transposed {
            transpose_block(src, s, p0, p1 - p0, ch, &mut out[j0 * ch..]);
        } else {
            for c in 0..ch {
                out[c * tcols + j0..c * tcols + j0 + p1 - p0].copy_from_slice(&src[c * s + p0..c * s + p1]);
            }
        }
        j0 += p1 - p0;
        r = end;
    }
}

/// Makes a scratch buffer that is written in full before it is read hold at least `len` elements:
/// grown (the new elements zeroed) when shorter, otherwise left as it is — its old contents are not
/// cleared, and its users address it by their own strides, not by its length.
pub(super) fn grow_scratch<T: ConvElem>(buf: &mut Vec<T>, len: usize) {
    if buf.len() < len {
        buf.resize(len, T::zero());
    }
}

/// `dst[j·ch + c] = src[c·s + p0 + j]` for `j < cols`, `c < ch`, in blocks that stay in L1.
pub(crate) fn transpose_block<T: ConvElem>(src: &[T], s: usize, p0: usize, cols: usize, ch: usize, dst: &mut [T]) {
    const BLOCK: usize = 64;
    crate::ops::vectorised::vectorised(
        #[inline(always)]
        || {
            for jb in (0..cols).step_by(BLOCK) {
                let w = BLOCK.min(cols - jb);
                for c in 0..ch {
                    let row = &src[c * s + p0 + jb..][..w];
                    for (j, v) in row.iter().enumerate() {
                        dst[(jb + j) * ch + c] = *v;
                    }
                }
            }
        },
    );
}

/// Forward convolution: `x [batch, c_in, input]`, `w [c_out, c_in, kernel]` → `[batch, c_out, output]`.
pub(crate) fn conv_forward<T: ConvElem>(x: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    if let (Some(xf), Some(wf)) = (conv_shifted::as_f32(x), conv_shifted::as_f32(w))
        && let Some(b) = conv_winograd::kernels(g)
    {
        return conv_shifted::from_f32(conv_winograd::conv_forward(b, xf, wf, g));
    }
    if conv_shifted::applies::<T>(g) {
        return conv_shifted::conv_forward(x, w, g);
    }
    if let (Some(xf), Some(wf)) = (conv_shifted::as_f32(x), conv_shifted::as_f32(w))
        && let Some(k) = conv_panel::forward_kernels(g)
    {
        return conv_shifted::from_f32(conv_panel::conv_forward(k, xf, wf, g));
    }
    let s_out = g.s_out();
    let len = g.batch * g.c_out * s_out;
    let mut out: Vec<T> = Vec::with_capacity(len);
    if len == 0 {
        return out;
    }
    if g.col_rows() == 0 {
        out.resize(len, T::zero());
        return out;
    }
    let col_rows = g.col_rows();
    let row_len = g.output[2];
    let rps = g.rows_per_sample();
    let tiles = g.tiles();
    let parallel_gemm = tiles.len() == 1;
    let out_ptr = SyncPtr(out.as_mut_ptr());
    par_items(
        tiles.len(),
        || (Vec::<T>::new(), Vec::<T>::new()),
        |t, (col, tmp)| {
            let tile = tiles[t];
            let tcols = (tile.1 - tile.0) * row_len;
            col.resize(col_rows * tcols, T::zero());
            im2col(x, g, tile, (0, g.c_in), col);
            let b0 = tile.0 / rps;
            let single = b0 == (tile.1 - 1) / rps;
            // SAFETY: tiles write disjoint output columns; the matrices lie inside their buffers.
            unsafe {
                if single {
                    let off = b0 * g.c_out * s_out + (tile.0 - b0 * rps) * row_len;
                    gemm_into(
                        g.c_out, tcols, col_rows,
                        out_ptr.get().add(off), s_out, 1, false,
                        w.as_ptr(), col_rows as isize, 1,
                        col.as_ptr(), tcols as isize, 1,
                        parallel_gemm,
                    );
                } else if s_out >= col_rows {
                    // Whole samples whose maps are at least as long as the reduction: one GEMM per
                    // sample straight into its output (repacking the weights per sample costs less
                    // than copying the outputs out of a multi-sample buffer).
                    for (i, b) in (b0..tile.1 / rps).enumerate() {
                        gemm_into(
                            g.c_out, s_out, col_rows,
                            out_ptr.get().add(b * g.c_out * s_out), s_out, 1, false,
                            w.as_ptr(), col_rows as isize, 1,
                            col.as_ptr().add(i * s_out), tcols as isize, 1,
                            parallel_gemm,
                        );
                    }
                } else {
                    // Every element is written by the GEMM (no accumulation): only grown, not cleared.
                    grow_scratch(tmp, g.c_out * tcols);
                    gemm_into(
                        g.c_out, tcols, col_rows,
                        tmp.as_mut_ptr(), tcols, 1, false,
                        w.as_ptr(), col_rows as isize, 1,
                        col.as_ptr(), tcols as isize, 1,
                        parallel_gemm,
                    );
                    let b1 = tile.1 / rps;
                    for b in b0..b1 {
                        for c in 0..g.c_out {
                            let src = &tmp[c * tcols + (b - b0) * s_out..][..s_out];
                            let dst = out_ptr.get().add((b * g.c_out + c) * s_out);
                            core::ptr::copy_nonoverlapping(src.as_ptr(), dst, s_out);
                        }
                    }
                }
            }
        },
    );
    // SAFETY: the tiles cover every output row of every sample, and each tile's GEMM (or its copy
    // out of the multi-sample buffer) writes all `c_out` channels of its columns.
    unsafe { out.set_len(len) };
    out
}

/// Input gradient (col2im): `dy [batch, c_out, output]`, `w [c_out, c_in, kernel]` →
/// `dx [batch, c_in, input]`.
pub(crate) fn conv_data_grad<T: ConvElem>(dy: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    // The forward convolution of dy with the flipped kernel, padded by (k − 1) − p ≥ 0.
    if let (Some(dyf), Some(wf)) = (conv_shifted::as_f32(dy), conv_shifted::as_f32(w))
        && (0..3).all(|i| g.padding[i] < g.kernel[i])
        && let Some(b) = conv_winograd::kernels(&conv_shifted::flipped(g))
    {
        let grad = conv_shifted::data_grad_as_forward(dyf, wf, g, |d, w, fg| conv_winograd::conv_forward(b, d, w, fg));
        return conv_shifted::from_f32(grad);
    }
    if conv_shifted::data_grad_applies::<T>(g) {
        return conv_shifted::conv_data_grad(dy, w, g);
    }
    if let (Some(dyf), Some(wf)) = (conv_shifted::as_f32(dy), conv_shifted::as_f32(w))
        && let Some(k) = conv_panel::data_grad_kernels(g)
    {
        return conv_shifted::from_f32(conv_panel::conv_data_grad(k, dyf, wf, g));
    }
    let mut dx = vec![T::zero(); g.batch * g.c_in * g.s_in()];
    if dx.is_empty() || g.s_out() == 0 {
        return dx;
    }
    let k_len = g.k_len();
    let col_rows = g.col_rows();
    let row_len = g.output[2];
    let rps = g.rows_per_sample();
    let s_out = g.s_out();
    let tiles = g.tiles();
    // Workers own disjoint input channels.
    let chunks = num_threads().min(g.c_in).max(1);
    let per = g.c_in.div_ceil(chunks);
    let chunks = g.c_in.div_ceil(per);
    let parallel_gemm = chunks == 1;
    let dx_ptr = SyncPtr(dx.as_mut_ptr());
    par_items(
        chunks,
        || (Vec::<T>::new(), Vec::<T>::new()),
        |ci, (col, tmp)| {
            let c_range = (ci * per, ((ci + 1) * per).min(g.c_in));
            let rows = (c_range.1 - c_range.0) * k_len;
            for &tile in &tiles {
                let tcols = (tile.1 - tile.0) * row_len;
                gather_tile(dy, g.c_out, s_out, rps, row_len, tile, false, tmp);
                col.resize(rows * tcols, T::zero());
                // SAFETY: Wᵀ rows of this chunk: element (r, co) at w[co·col_rows + c0·K + r].
                unsafe {
                    gemm_into(
                        rows, tcols, g.c_out,
                        col.as_mut_ptr(), tcols, 1, false,
                        w.as_ptr().add(c_range.0 * k_len), 1, col_rows as isize,
                        tmp.as_ptr(), tcols as isize, 1,
                        parallel_gemm,
                    );
                    col2im(col, g, tile, c_range, dx_ptr.get());
                }
            }
        },
    );
    dx
}

/// Weight gradient: `x [batch, c_in, input]`, `dy [batch, c_out, output]` → `dw [c_out, c_in, kernel]`.
pub(crate) fn conv_weight_grad<T: ConvElem>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    if let (Some(xf), Some(dyf)) = (conv_shifted::as_f32(x), conv_shifted::as_f32(dy))
        && let Some(b) = conv_winograd::kernels(g)
    {
        return conv_shifted::from_f32(conv_winograd::conv_weight_grad(b, xf, dyf, g));
    }
    if conv_shifted::weight_grad_applies::<T>(g) {
        return conv_shifted::conv_weight_grad(x, dy, g);
    }
    if let (Some(xf), Some(dyf)) = (conv_shifted::as_f32(x), conv_shifted::as_f32(dy))
        && let Some(k) = conv_panel::weight_grad_kernels(g)
    {
        return conv_shifted::from_f32(conv_panel::conv_weight_grad(k, xf, dyf, g));
    }
    let col_rows = g.col_rows();
    let len = g.c_out * col_rows;
    if len == 0 || g.batch * g.s_out() == 0 {
        return vec![T::zero(); len];
    }
    let row_len = g.output[2];
    let rps = g.rows_per_sample();
    let s_out = g.s_out();
    let tiles = g.tiles();
    // The GEMM computes a column-major destination and transposes the problem when given a
    // row-major one, and it packs its left operand when that is read with a row stride (a scalar
    // gather). For `dW (c_out × C·K) = dY · colᵀ` stored row-major, the left operand becomes the
    // im2col matrix (`C·K` rows per column); accumulating `dWᵀ` (column-major `c_out × C·K`)
    // keeps `dY` (`c_out` rows) on the left and reads the im2col matrix in place. Pack the
    // smaller one; the final transpose is `c_out · C·K` elements. The `dY` tile is gathered
    // transposed in that case, so the left operand is column-major and packed by plain copies.
    let transposed = g.c_out <= col_rows;
    // Element (co, r) of the accumulator: row-major `dW`, or column-major (`dWᵀ` row-major).
    let (acc_rs, acc_cs) = if transposed { (1, g.c_out) } else { (col_rows, 1) };
    let step = |acc: &mut Vec<T>, (col, tmp): &mut (Vec<T>, Vec<T>), tile: (usize, usize), par: bool| {
        let tcols = (tile.1 - tile.0) * row_len;
        col.resize(col_rows * tcols, T::zero());
        im2col(x, g, tile, (0, g.c_in), col);
        gather_tile(dy, g.c_out, s_out, rps, row_len, tile, transposed, tmp);
        // dY element (co, j): tmp[j·c_out + co] when gathered transposed, else tmp[co·tcols + j].
        let (dy_rs, dy_cs) = if transposed { (1, g.c_out) } else { (tcols, 1) };
        // SAFETY: acc holds c_out × col_rows elements at the strides above; colᵀ element (j, r)
        // at col[r·tcols + j]; tmp holds the c_out × tcols tile at the strides above.
        unsafe {
            gemm_into(
                g.c_out, col_rows, tcols,
                acc.as_mut_ptr(), acc_rs, acc_cs, true,
                tmp.as_ptr(), dy_rs as isize, dy_cs as isize,
                col.as_ptr(), 1, tcols as isize,
                par,
            );
        }
    };
    let acc = weight_grad_sum(&tiles, len, step);
    if !transposed {
        return acc;
    }
    from_transposed(&acc, g.c_out, col_rows)
}

/// `dW [c_out, rows]` from its transpose `dWᵀ [rows, c_out]` (the accumulators of the weight gradients), through
/// [`transpose_block`]'s blocks: writing one element per output row in turn, a stride of `rows` elements, touched
/// a cache line per element (2 % of ResNet-18's step).
pub(crate) fn from_transposed<T: ConvElem>(acc: &[T], c_out: usize, rows: usize) -> Vec<T> {
    let mut dw = vec![T::zero(); c_out * rows];
    transpose_block(acc, c_out, 0, c_out, rows, &mut dw);
    dw
}

/// Runs `step` over every tile into accumulators of `len` elements (one per worker, summed), each worker
/// with its own scratch `S`.
pub(crate) fn weight_grad_sum<T: ConvElem, S: Default, Tile: Copy + Sync>(
    tiles: &[Tile],
    len: usize,
    step: impl Fn(&mut Vec<T>, &mut S, Tile, bool) + Sync,
) -> Vec<T> {
    #[cfg(feature = "rayon")]
    {
        use rayon::prelude::*;
        let threads = num_threads();
        if tiles.len() > 1 && threads > 1 {
            let per = tiles.len().div_ceil(threads);
            let parts: Vec<Vec<T>> = tiles
                .par_chunks(per)
                .map(|chunk| {
                    let mut acc = vec![T::zero(); len];
                    let mut scratch = S::default();
                    for &tile in chunk {
                        step(&mut acc, &mut scratch, tile, false);
                    }
                    acc
                })
                .collect();
            let mut parts = parts.into_iter();
            let mut acc = parts.next().unwrap_or_else(|| vec![T::zero(); len]);
            for p in parts {
                for (a, b) in acc.iter_mut().zip(p) {
                    *a += b;
                }
            }
            return acc;
        }
    }
    let mut acc = vec![T::zero(); len];
    let mut scratch = S::default();
    let par = tiles.len() == 1;
    for &tile in tiles {
        step(&mut acc, &mut scratch, tile, par);
    }
    acc
}

/// Per-channel sum over batch and space of `[batch, ch, s]`, in 16 interleaved partial sums per
/// map (vector lanes) added at the end.
fn channel_sums<T: ConvElem>(dy: &[T], batch: usize, ch: usize, s: usize) -> Vec<T> {
    const LANES: usize = 16;
    let mut out = vec![T::zero(); ch];
    crate::ops::vectorised::vectorised(
        #[inline(always)]
        || {
            for b in 0..batch {
                for (c, o) in out.iter_mut().enumerate() {
                    let seg = &dy[(b * ch + c) * s..(b * ch + c + 1) * s];
                    let mut lanes = [T::zero(); LANES];
                    let mut chunks = seg.chunks_exact(LANES);
                    for chunk in &mut chunks {
                        for (l, v) in lanes.iter_mut().zip(chunk) {
                            *l += *v;
                        }
                    }
                    let mut acc = T::zero();
                    for v in chunks.remainder() {
                        acc += *v;
                    }
                    for l in lanes {
                        acc += l;
                    }
                    *o += acc;
                }
            }
        },
    );
    out
}

/// `out [batch, ch, s]` plus `bias[c]` at every element of channel `c`, the bias (`[ch]`) being the third of a
/// convolution's `inputs` (input, weights, bias) where it has one.
fn with_bias<T: ConvElem>(mut out: Vec<T>, inputs: &[&[T]], (batch, ch, s): (usize, usize, usize)) -> Vec<T> {
    if let Some(bias) = inputs.get(2) {
        add_bias(&mut out, bias, batch, ch, s);
    }
    out
}

fn add_bias<T: ConvElem>(out: &mut [T], bias: &[T], batch: usize, ch: usize, s: usize) {
    for b in 0..batch {
        for (c, bv) in bias.iter().enumerate().take(ch) {
            for v in &mut out[(b * ch + c) * s..(b * ch + c + 1) * s] {
                *v += *bv;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tensor-level entry points (any rank 3–5, any float dtype, any number of groups)
// ---------------------------------------------------------------------------------------------

/// Options of an N-d convolution lifted to 3D.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Opts3 {
    pub stride: [usize; 3],
    pub padding: [usize; 3],
    pub dilation: [usize; 3],
    pub groups: usize,
}

impl Opts3 {
    /// Lifts N-d options (N = 1, 2, 3) to 3D with unit leading axes.
    pub fn lift<const N: usize>(stride: [usize; N], padding: [usize; N], dilation: [usize; N], groups: usize) -> Self {
        let mut s = [1; 3];
        let mut p = [0; 3];
        let mut d = [1; 3];
        s[3 - N..].copy_from_slice(&stride);
        p[3 - N..].copy_from_slice(&padding);
        d[3 - N..].copy_from_slice(&dilation);
        Self { stride: s, padding: p, dilation: d, groups }
    }
}

/// `[n, c, spatial…]` of rank 3–5 as `(n, c, [d, h, w])`.
fn split_shape(shape: &[usize]) -> (usize, usize, [usize; 3]) {
    let mut sp = [1; 3];
    let r = shape.len() - 2;
    sp[3 - r..].copy_from_slice(&shape[2..]);
    (shape[0], shape[1], sp)
}

fn join_shape(n: usize, c: usize, sp: [usize; 3], rank: usize) -> Shape {
    let mut v = vec![n, c];
    v.extend_from_slice(&sp[3 - (rank - 2)..]);
    Shape::from(v)
}

fn out_size(i: usize, k: usize, s: usize, p: usize, d: usize) -> usize {
    let span = d * (k - 1) + 1;
    if i + 2 * p < span { 0 } else { (i + 2 * p - span) / s + 1 }
}

/// Runs `f` on f32 or f64 data; half-precision tensors are computed in f32 and cast back.
fn with_float(
    tensors: Vec<FlexTensor>,
    f32_fn: impl FnOnce(&[&[f32]]) -> Vec<f32>,
    f64_fn: impl FnOnce(&[&[f64]]) -> Vec<f64>,
    shape: Shape,
) -> FlexTensor {
    let dtype = tensors[0].dtype();
    match dtype {
        DType::F64 => {
            let ts: Vec<FlexTensor> = tensors.iter().map(|t| t.to_contiguous()).collect();
            let slices: Vec<&[f64]> = ts.iter().map(|t| t.storage::<f64>()).collect();
            let out = f64_fn(&slices);
            FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F64)
        }
        DType::F32 => {
            let ts: Vec<FlexTensor> = tensors.iter().map(|t| t.to_contiguous()).collect();
            let slices: Vec<&[f32]> = ts.iter().map(|t| t.storage::<f32>()).collect();
            let out = f32_fn(&slices);
            FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32)
        }
        other => {
            let ts: Vec<FlexTensor> = tensors
                .into_iter()
                .map(|t| Flex::float_cast(t, FloatDType::F32).to_contiguous())
                .collect();
            let slices: Vec<&[f32]> = ts.iter().map(|t| t.storage::<f32>()).collect();
            let out = f32_fn(&slices);
            let t = FlexTensor::new(Bytes::from_elems(out), Layout::contiguous(shape), DType::F32);
            Flex::float_cast(t, FloatDType::from(other))
        }
    }
}

/// Channel block `g` of `groups` of a `[n, c, …]` tensor, made contiguous.
fn group_slice(t: &FlexTensor, g: usize, groups: usize) -> FlexTensor {
    let c = t.layout().shape()[1];
    let per = c / groups;
    t.narrow(1, g * per, per).to_contiguous()
}

/// Row block `g` of `groups` of a weight tensor (its first dim).
fn group_rows(w: &FlexTensor, g: usize, groups: usize) -> FlexTensor {
    let per = w.layout().shape()[0] / groups;
    w.narrow(0, g * per, per)
}

/// Concatenates per-group results along `dim`.
fn cat_groups(parts: Vec<FlexTensor>, dim: usize) -> FlexTensor {
    if parts.len() == 1 {
        return parts.into_iter().next().expect("one part");
    }
    Flex::float_cat(parts, dim)
}

/// Forward convolution (`groups` allowed); `bias` added per output channel.
pub(crate) fn conv(x: FlexTensor, w: FlexTensor, bias: Option<FlexTensor>, o: Opts3) -> FlexTensor {
    let rank = x.layout().shape().len();
    if o.groups > 1 {
        let parts = (0..o.groups)
            .map(|g| conv(group_slice(&x, g, o.groups), group_rows(&w, g, o.groups), None, Opts3 { groups: 1, ..o }))
            .collect();
        let out = cat_groups(parts, 1);
        return match bias {
            Some(b) => add_bias_tensor(out, b),
            None => out,
        };
    }
    let (n, c_in, input) = split_shape(x.layout().shape());
    let (c_out, _, kernel) = split_shape(w.layout().shape());
    let output = core::array::from_fn(|i| out_size(input[i], kernel[i], o.stride[i], o.padding[i], o.dilation[i]));
    let g = ConvGeom { batch: n, c_in, c_out, input, output, kernel, stride: o.stride, padding: o.padding, dilation: o.dilation };
    let shape = join_shape(n, c_out, output, rank);
    let s_out = g.s_out();
    let ts = [x, w].into_iter().chain(bias).collect();
    with_float(
        ts,
        |s| with_bias(conv_forward(s[0], s[1], &g), s, (n, c_out, s_out)),
        |s| with_bias(conv_forward(s[0], s[1], &g), s, (n, c_out, s_out)),
        shape,
    )
}

/// `out [n, c, …]` plus `bias [c]` per channel: in place where `out` is a fresh result of f32 or f64 (the
/// grouped convolutions' concatenated parts), otherwise into a copy.
fn add_bias_tensor(mut out: FlexTensor, bias: FlexTensor) -> FlexTensor {
    let shape = out.layout().shape().clone();
    let (n, c, sp) = split_shape(&shape);
    let s: usize = sp.iter().product();
    let fresh = out.is_unique() && out.layout().is_contiguous() && out.layout().start_offset() == 0;
    if fresh && bias.dtype() == out.dtype() {
        let bias = bias.to_contiguous();
        match out.dtype() {
            DType::F32 => add_bias(out.storage_mut::<f32>(), bias.storage::<f32>(), n, c, s),
            DType::F64 => add_bias(out.storage_mut::<f64>(), bias.storage::<f64>(), n, c, s),
            _ => return add_bias_copy(out, bias, (n, c, s), shape),
        }
        return out;
    }
    add_bias_copy(out, bias, (n, c, s), shape)
}

/// [`add_bias_tensor`] into a copy of `out`.
fn add_bias_copy(out: FlexTensor, bias: FlexTensor, (n, c, s): (usize, usize, usize), shape: Shape) -> FlexTensor {
    with_float(
        vec![out, bias],
        |t| {
            let mut o = t[0].to_vec();
            add_bias(&mut o, t[1], n, c, s);
            o
        },
        |t| {
            let mut o = t[0].to_vec();
            add_bias(&mut o, t[1], n, c, s);
            o
        },
        shape,
    )
}

/// Input gradient of a convolution of an input shaped `x_shape`.
pub(crate) fn conv_x_backward(x_shape: &[usize], w: FlexTensor, dy: FlexTensor, o: Opts3) -> FlexTensor {
    if o.groups > 1 {
        let mut gshape = x_shape.to_vec();
        gshape[1] /= o.groups;
        let parts = (0..o.groups)
            .map(|g| conv_x_backward(&gshape, group_rows(&w, g, o.groups), group_slice(&dy, g, o.groups), Opts3 { groups: 1, ..o }))
            .collect();
        return cat_groups(parts, 1);
    }
    let rank = x_shape.len();
    let (n, c_in, input) = split_shape(x_shape);
    let (_, c_out, output) = split_shape(dy.layout().shape());
    let (_, _, kernel) = split_shape(w.layout().shape());
    let g = ConvGeom { batch: n, c_in, c_out, input, output, kernel, stride: o.stride, padding: o.padding, dilation: o.dilation };
    with_float(vec![dy, w], |s| conv_data_grad(s[0], s[1], &g), |s| conv_data_grad(s[0], s[1], &g), join_shape(n, c_in, input, rank))
}

/// Weight gradient of a convolution with weights shaped `w_shape`.
pub(crate) fn conv_weight_backward(x: FlexTensor, w_shape: &[usize], dy: FlexTensor, o: Opts3) -> FlexTensor {
    if o.groups > 1 {
        let mut gshape = w_shape.to_vec();
        gshape[0] /= o.groups;
        let parts = (0..o.groups)
            .map(|g| conv_weight_backward(group_slice(&x, g, o.groups), &gshape, group_slice(&dy, g, o.groups), Opts3 { groups: 1, ..o }))
            .collect();
        return cat_groups(parts, 0);
    }
    let (n, c_in, input) = split_shape(x.layout().shape());
    let (_, c_out, output) = split_shape(dy.layout().shape());
    let (_, _, kernel) = split_shape(w_shape);
    let g = ConvGeom { batch: n, c_in, c_out, input, output, kernel, stride: o.stride, padding: o.padding, dilation: o.dilation };
    with_float(vec![x, dy], |s| conv_weight_grad(s[0], s[1], &g), |s| conv_weight_grad(s[0], s[1], &g), Shape::from(w_shape.to_vec()))
}

/// Gradient of a per-channel bias: sums of `dy` over batch and space, shaped like the bias.
pub(crate) fn bias_backward(dy: FlexTensor, bias_shape: Shape) -> FlexTensor {
    let (n, c, sp) = split_shape(dy.layout().shape());
    let s: usize = sp.iter().product();
    with_float(vec![dy], |t| channel_sums(t[0], n, c, s), |t| channel_sums(t[0], n, c, s), bias_shape)
}

/// Transposed convolution: `x [n, c_in_t, …]`, `w [c_in_t, c_out_t / groups, k…]`.
pub(crate) fn conv_transpose(x: FlexTensor, w: FlexTensor, bias: Option<FlexTensor>, o: Opts3, padding_out: [usize; 3]) -> FlexTensor {
    let rank = x.layout().shape().len();
    let (n, c_in_t, input) = split_shape(x.layout().shape());
    let (_, c_out_g, kernel) = split_shape(w.layout().shape());
    let output: [usize; 3] = core::array::from_fn(|i| {
        (input[i] - 1) * o.stride[i] + o.dilation[i] * (kernel[i] - 1) + padding_out[i] + 1 - 2 * o.padding[i]
    });
    if o.groups > 1 {
        let parts = (0..o.groups)
            .map(|g| conv_transpose(group_slice(&x, g, o.groups), group_rows(&w, g, o.groups), None, Opts3 { groups: 1, ..o }, padding_out))
            .collect();
        let out = cat_groups(parts, 1);
        return match bias {
            Some(b) => add_bias_tensor(out, b),
            None => out,
        };
    }
    // The convolution whose input gradient this is: input = this output, output = this input.
    let g = ConvGeom { batch: n, c_in: c_out_g, c_out: c_in_t, input: output, output: input, kernel, stride: o.stride, padding: o.padding, dilation: o.dilation };
    let s_out: usize = output.iter().product();
    // The bias is added to the result in place, as the forward convolution's is (not to a copy of it).
    let ts = [x, w].into_iter().chain(bias).collect();
    with_float(
        ts,
        |s| with_bias(conv_data_grad(s[0], s[1], &g), s, (n, c_out_g, s_out)),
        |s| with_bias(conv_data_grad(s[0], s[1], &g), s, (n, c_out_g, s_out)),
        join_shape(n, c_out_g, output, rank),
    )
}

/// Input gradient of a transposed convolution: the forward convolution of `dy` with the same weights.
pub(crate) fn conv_transpose_x_backward(w: FlexTensor, dy: FlexTensor, o: Opts3) -> FlexTensor {
    conv(dy, w, None, o)
}

/// Weight gradient of a transposed convolution: the convolution weight gradient with input `dy`
/// and output gradient `x`.
pub(crate) fn conv_transpose_weight_backward(x: FlexTensor, w_shape: &[usize], dy: FlexTensor, o: Opts3) -> FlexTensor {
    conv_weight_backward(dy, w_shape, x, o)
}
