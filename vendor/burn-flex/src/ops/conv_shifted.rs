//! Unit-stride convolutions by kernel tap over a zero-padded copy of the input, without an im2col
//! matrix.
//!
//! With the input zero-padded to `(Dp, Hp, Wp)`, output position `(z, y, x)` is given the index
//! `j = z·Hp·Wp + y·Wp + x` on the padded grid, and tap `t = (kz, ky, kx)` reads the padded input at
//! `j + off(t)`, `off(t) = kz·dz·Hp·Wp + ky·dy·Wp + kx·dx`. For a range of grid positions, the
//! input channels at one tap are therefore a plain strided matrix (`positions × C`, unit row
//! stride, one padded map between columns), so
//!
//! * forward: `Y[:, range] = Σ_t W_t · Xpad[:, range + off(t)]`, `K` GEMMs of depth `C` accumulated
//!   into a tile buffer whose valid positions are copied out (the grid's `Wp − Wo` columns per row
//!   and `Hp − Ho` rows per plane are computed and dropped);
//! * weight gradient: `dW_t += dY[:, range] · Xpad[:, range + off(t)]ᵀ`, with the output gradient
//!   gathered onto the grid (zeros at the dropped positions);
//! * input gradient: the forward convolution of the output gradient, padded by
//!   `(k − 1)·d − p`, with the kernel flipped and its channel axes exchanged.
//!
//! The padded copy is read once per tap from cache instead of being expanded `K` times into an
//! im2col matrix. In f32 on CPUs with AVX2 or AVX-512, the forward pass and the weight gradient run
//! the register-blocked kernels of [`conv_direct`], which keep a block of the result in registers
//! across all taps (forward) or all positions (weight gradient) and take the output positions only,
//! not the grid's dropped ones: in vectors inside one output row ([`RowVectors`]), or, for the forward
//! pass with AVX-512 where the lanes do not divide the rows, in vectors of consecutive output positions
//! that run from one row into the next, each loaded as two masked loads ([`SpanVectors`]), so that no
//! lane is spent past a row's end; otherwise (f64, baseline x86-64) each tap is one GEMM of depth `C`
//! adding into the tile's result. Measured faster than im2col for 8–32 channels in and out (the 2D and
//! 3D U-Nets' first levels, the centre-point detector, the CRNN), and with the AVX-512 kernels for the
//! forward pass and input gradient of deeper layers up to 128 channels from 1,024 positions
//! ([`DEEP_CHANNELS`]: the 2D U-Net's 64-channel level, the decoders' 96 → 32 convolutions after a skip
//! connection; 5 × 5 layers of 32 channels or more, such as RED-CNN's, and deep 3 × 3 ones of many tiles go
//! to `conv_winograd` first),
//! whose weight gradients stay on im2col's GEMM (faster there), and for the forward pass and weight gradient
//! of convolutions of 1–7 input channels ([`FEW_IN_CHANNELS`]: first layers on images of one or two channels,
//! LeNet-5's two layers), whose im2col matrix is `K` times the input and whose GEMM reduces over as few as 9
//! rows, and of 1–3 output channels ([`FEW_OUTPUTS`]: last layers onto a complex image or a displacement
//! field, whose input gradient is then the forward pass of few inputs), whose GEMM has as few rows. Strided
//! convolutions, more than 128 channels and small maps ([`MIN_POSITIONS`], [`DEEP_MIN_POSITIONS`],
//! [`FEW_MIN_POSITIONS`]) keep im2col.

use alloc::borrow::Cow;
use core::any::TypeId;
use core::mem::ManuallyDrop;
use alloc::vec;
use alloc::vec::Vec;

use super::conv_direct::{self, Blocking, Span};
use crate::simd::aligned::SIMD_ALIGN;
use super::conv_gemm::{from_transposed, gemm_into, grow_scratch, par_items, transpose_block, weight_grad_sum, ConvElem, ConvGeom, SyncPtr};

/// Channel counts (input and output) of the convolutions that take this path: fewer would make the tap
/// GEMMs too shallow, more makes im2col's single deep GEMM the faster one.
const CHANNELS: core::ops::RangeInclusive<usize> = 8..=32;

/// Fewest output positions per sample: tiles stay inside one sample, so smaller maps (CNN + LSTM's 32²
/// frames, the deepest 3D levels) would make many short GEMMs and a wide padding border; im2col's tiles
/// span samples there.
const MIN_POSITIONS: usize = 4096;

/// Grid positions per tile: a tile's `positions × C_out` result stays in L2.
const TILE_BYTES: usize = 256 << 10;
const MIN_TILE: usize = 256;
const MAX_TILE: usize = 4096;

/// Input channels of the convolutions that take this path where the register-blocked kernels run (f32 on
/// AVX2 / AVX-512): up to 64, which covers VoxelMorph's decoder (up-sampled features concatenated with the
/// encoder's: up to 64 channels in, 32 out).
/// Output channels stay in [`CHANNELS`] here: with 64 out (the 3D U-Net's third level) the by-tap weight
/// gradient was no faster than im2col's; the forward passes of deeper convolutions are [`deep`]'s.
const DIRECT_IN_CHANNELS: core::ops::RangeInclusive<usize> = 8..=64;

/// Channel counts (input and output) of the deeper convolutions that take this path with the AVX-512
/// kernels, at least one of them above the shallow ranges.
const DEEP_CHANNELS: core::ops::RangeInclusive<usize> = 8..=128;

/// Fewest output positions per sample of the deeper convolutions: their kernels keep a block of
/// results in registers across `C · K ≥ 800` products, so small maps cost no more per position.
const DEEP_MIN_POSITIONS: usize = 1024;

/// Unit stride and a kernel of more than one tap.
fn by_tap_shape(g: &ConvGeom) -> bool {
    g.stride == [1; 3] && g.k_len() > 1
}

/// The shallow convolutions: 8–32 channels out, up to 64 in with the register-blocked kernels, at
/// least [`MIN_POSITIONS`] output positions.
fn shallow(g: &ConvGeom) -> bool {
    let in_channels = match Blocking::current() {
        Some(_) => DIRECT_IN_CHANNELS,
        None => CHANNELS,
    };
    in_channels.contains(&g.c_in) && CHANNELS.contains(&g.c_out) && g.s_out() >= MIN_POSITIONS
}

/// Whether elements `T` run the register-blocked kernels here: f32 on a CPU that has them.
fn direct_f32<T: ConvElem>() -> bool {
    TypeId::of::<T>() == TypeId::of::<f32>() && Blocking::current().is_some()
}

/// Input channels of the convolutions with few inputs (the first layers of networks on images of one or two
/// channels) that take this path with the register-blocked kernels in f32.
const FEW_IN_CHANNELS: core::ops::Range<usize> = 1..8;

/// Output channels of those: at least half of the forward kernel's block of eight used.
const FEW_OUT_CHANNELS: core::ops::RangeInclusive<usize> = 4..=32;

/// Fewest output positions per sample of those: LeNet-5's second layer (10 × 10) ran faster by tap too.
const FEW_MIN_POSITIONS: usize = 64;

/// Fewest (input channel, tap) pairs and output positions per sample of those whose weight gradient runs
/// here: with a single channel and 3 × 3 taps (9 pairs) the weight gradient was faster by im2col.
const FEW_GRAD_PAIRS: usize = 16;
const FEW_GRAD_POSITIONS: usize = 256;

/// The convolutions of few input channels whose forward pass takes this path: f32 with the register-blocked
/// kernels, whose reductions run over channels and taps together (im2col's GEMM has a reduction of
/// `C_in · K` rows, as short as 9, and writes an im2col matrix `K` times the input's size).
fn few_inputs<T: ConvElem>(g: &ConvGeom) -> bool {
    direct_f32::<T>()
        && FEW_IN_CHANNELS.contains(&g.c_in)
        && FEW_OUT_CHANNELS.contains(&g.c_out)
        && g.s_out() >= FEW_MIN_POSITIONS
}

/// Output channels of the convolutions with few outputs (the last layers of networks that return images of
/// one to three channels: a complex image, a displacement field) whose forward pass and weight gradient run
/// here with the register-blocked kernels in f32: their im2col matrix is `K` times the input (288 rows for 32
/// channels 3 × 3) and their GEMM has as few rows as output channels. The kernels' blocks of output channels
/// are then partly zero: on maps of 128² (two samples, 8–32 channels in, 1–3 out) the forward pass still ran
/// 1.1–1.8× as fast as im2col's and the weight gradient with the input gradient 1.6–4.6× (AVX-512 and AVX2);
/// on one sample of 64² (8 → 1) the forward pass ran slower, 0.023 → 0.04 ms.
const FEW_OUTPUTS: core::ops::Range<usize> = 1..4;

/// The convolutions of few output channels ([`FEW_OUTPUTS`]) and [`DIRECT_IN_CHANNELS`] inputs, f32 with the
/// register-blocked kernels, at least [`MIN_POSITIONS`] output positions per sample.
fn few_outputs<T: ConvElem>(g: &ConvGeom) -> bool {
    direct_f32::<T>()
        && FEW_OUTPUTS.contains(&g.c_out)
        && DIRECT_IN_CHANNELS.contains(&g.c_in)
        && g.s_out() >= MIN_POSITIONS
}

/// The deeper convolutions whose forward pass runs here with the AVX-512 kernels ([`DEEP_CHANNELS`],
/// output rows at least one vector wide).
fn deep(g: &ConvGeom) -> bool {
    Blocking::current().is_some_and(|b| b.spans() && g.output[2] >= b.lanes)
        && DEEP_CHANNELS.contains(&g.c_in)
        && DEEP_CHANNELS.contains(&g.c_out)
        && (g.c_in > *DIRECT_IN_CHANNELS.end() || g.c_out > *CHANNELS.end())
        && g.s_out() >= DEEP_MIN_POSITIONS
}

/// Whether the forward convolution of `g` (elements `T`) takes this path.
pub(crate) fn applies<T: ConvElem>(g: &ConvGeom) -> bool {
    by_tap_shape(g) && (shallow(g) || deep(g) || few_inputs::<T>(g) || few_outputs::<T>(g))
}

/// Whether the weight gradient of `g` (elements `T`) takes this path: the shallow convolutions (at 96
/// channels the by-tap weight gradient ran slower than im2col's GEMM) and those of few input channels
/// with enough pairs and positions.
pub(crate) fn weight_grad_applies<T: ConvElem>(g: &ConvGeom) -> bool {
    by_tap_shape(g)
        && (shallow(g)
            || few_outputs::<T>(g)
            || (few_inputs::<T>(g) && g.c_in * g.k_len() >= FEW_GRAD_PAIRS && g.s_out() >= FEW_GRAD_POSITIONS))
}

/// Whether the input gradient of `g` (elements `T`) takes this path: unit stride, no padding beyond the
/// kernel's reach (the flipped convolution's padding `(k − 1)·d − p` is not negative), and `g` shallow or
/// the flipped convolution deep or of few inputs (the input gradient of a last layer onto one to three
/// channels). The input gradient of a first layer of few inputs stays on im2col: its matrix has as few rows
/// as the input's channels times the taps, and by tap it ran slower (a block of eight output channels for
/// two).
pub(crate) fn data_grad_applies<T: ConvElem>(g: &ConvGeom) -> bool {
    let f = flipped(g);
    by_tap_shape(g)
        && (0..3).all(|i| g.padding[i] <= (g.kernel[i] - 1) * g.dilation[i])
        && (shallow(g) || deep(&f) || few_inputs::<T>(&f))
}

/// The convolution whose forward pass is the input gradient of `g`: channels exchanged, `g`'s output
/// padded by `(k − 1)·d − p` (callers check it is not negative).
pub(crate) fn flipped(g: &ConvGeom) -> ConvGeom {
    let padding = core::array::from_fn(|i| ((g.kernel[i] - 1) * g.dilation[i]).saturating_sub(g.padding[i]));
    ConvGeom { c_in: g.c_out, c_out: g.c_in, input: g.output, output: g.input, padding, ..*g }
}

/// The padded grid of a unit-stride convolution.
struct Grid {
    /// Padded input size `(Dp, Hp, Wp)`.
    dims: [usize; 3],
    /// Elements of one padded map.
    len: usize,
    /// Offset of each tap, in the weights' tap order.
    offsets: Vec<usize>,
    /// Grid positions `0..span` cover every output position.
    span: usize,
}

impl Grid {
    fn new(g: &ConvGeom) -> Self {
        let dims: [usize; 3] = core::array::from_fn(|i| g.input[i] + 2 * g.padding[i]);
        let plane = dims[1] * dims[2];
        let mut offsets = Vec::with_capacity(g.k_len());
        for kz in 0..g.kernel[0] {
            for ky in 0..g.kernel[1] {
                for kx in 0..g.kernel[2] {
                    offsets.push(kz * g.dilation[0] * plane + ky * g.dilation[1] * dims[2] + kx * g.dilation[2]);
                }
            }
        }
        let [od, oh, ow] = g.output;
        let span = (od - 1) * plane + (oh - 1) * dims[2] + ow;
        Self { dims, len: plane * dims[0], offsets, span }
    }

    /// Tiles `(sample, first position, end)` over `0..span` of every sample, at least two per thread
    /// where the work allows.
    fn tiles(&self, batch: usize, c_out: usize) -> Vec<(usize, usize, usize)> {
        let size = tile_size(batch * self.span, c_out);
        let mut tiles = Vec::new();
        for b in 0..batch {
            let mut j = 0;
            while j < self.span {
                let e = (j + size).min(self.span);
                tiles.push((b, j, e));
                j = e;
            }
        }
        tiles
    }

    /// Calls `f(position, output offset, length)` for each run of output positions in `j0..j1`: grid
    /// positions `position..position + length` are output elements `offset..offset + length` of one
    /// output map.
    fn runs(&self, output: [usize; 3], j0: usize, j1: usize, mut f: impl FnMut(usize, usize, usize)) {
        let wp = self.dims[2];
        let hp = self.dims[1];
        let [od, oh, ow] = output;
        for row in j0 / wp..j1.div_ceil(wp) {
            let (z, y) = (row / hp, row % hp);
            if z >= od || y >= oh {
                continue;
            }
            let start = (row * wp).max(j0);
            let end = (row * wp + ow).min(j1);
            if start < end {
                f(start, (z * oh + y) * ow + start - row * wp, end - start);
            }
        }
    }
}

/// Tile length in grid positions for `total` positions of `c_out` channels: a tile's result stays in
/// L2, and there are at least two tiles per thread where the work allows.
fn tile_size(total: usize, c_out: usize) -> usize {
    let threads = super::conv_gemm::num_threads();
    let size = (TILE_BYTES / (4 * c_out.max(1))).clamp(MIN_TILE, MAX_TILE);
    if total / size < 2 * threads { total.div_ceil(2 * threads).max(64) } else { size }
}

/// Tiles `(sample, first vector, end)` over the `count` vectors of `lanes` positions of each of `batch`
/// samples, each a multiple of `unit` vectors long but a sample's last.
fn vector_tiles(count: usize, lanes: usize, batch: usize, c_out: usize, unit: usize) -> Vec<(usize, usize, usize)> {
    let size = (tile_size(batch * count * lanes, c_out) / lanes).next_multiple_of(unit).max(unit);
    let mut tiles = Vec::new();
    for b in 0..batch {
        let mut v = 0;
        while v < count {
            let e = (v + size).min(count);
            tiles.push((b, v, e));
            v = e;
        }
    }
    tiles
}

/// A sample's output positions in the vectors one direct forward kernel takes.
trait Vectors: Sync {
    /// What the kernel takes per vector.
    type Start: Copy + Send + Sync;
    /// Vectors per sample.
    fn count(&self) -> usize;
    /// The vectors `v0..v1`, followed by copies of the last up to a multiple of `unit`.
    fn starts(&self, v0: usize, v1: usize, unit: usize) -> Vec<Self::Start>;
    /// Vectors at the start of `v0..v1` whose lanes are the sample's output positions `v·lanes..` (`v0 ≤
    /// v`), all of them, in whole groups of `unit`.
    fn in_order(&self, v0: usize, v1: usize, unit: usize) -> usize;
    /// Calls `f(element, output offset, length)` for each run of output positions of vectors `v0..v1`:
    /// elements `element..element + length` of a compact result (vector `v` at `(v − v0)·lanes`) are
    /// output elements `offset..offset + length` of one output map.
    fn runs(&self, v0: usize, v1: usize, f: &mut dyn FnMut(usize, usize, usize));
    /// [`conv_direct::forward_tile`] or its counterpart for these vectors.
    ///
    /// # Safety
    /// The kernel's contract, with `starts` from [`Vectors::starts`] on a sample's padded maps at `x`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn forward(
        &self,
        b: Blocking,
        x: *const f32,
        grid: &Grid,
        wp: &[f32],
        c_in: usize,
        blocks: usize,
        starts: &[Self::Start],
        acc: *mut f32,
        stride: usize,
    );
}

/// The output positions of one sample as the direct kernels take them: vectors of `lanes` consecutive
/// grid positions inside one output row, `⌈Wo / lanes⌉` per row (a row's last vector runs into the
/// padding columns when `lanes` does not divide `Wo`). Unlike a range of the grid, the vectors skip the
/// positions between output rows and planes, which are no output.
struct RowVectors {
    lanes: usize,
    /// Padded grid `(Dp, Hp, Wp)`.
    grid: [usize; 3],
    output: [usize; 3],
    /// Vectors per output row.
    per_row: usize,
    /// Vectors per sample.
    count: usize,
}

impl RowVectors {
    fn new(g: &ConvGeom, grid: &Grid, lanes: usize) -> Self {
        let [od, oh, ow] = g.output;
        let per_row = ow.div_ceil(lanes);
        Self { lanes, grid: grid.dims, output: g.output, per_row, count: od * oh * per_row }
    }

    /// Vector `v` of a sample: its first grid position, its first output position, and how many of
    /// its lanes are output positions.
    fn vector(&self, v: usize) -> (usize, usize, usize) {
        let [_, oh, ow] = self.output;
        let (row, x) = (v / self.per_row, (v % self.per_row) * self.lanes);
        let (z, y) = (row / oh, row % oh);
        ((z * self.grid[1] + y) * self.grid[2] + x, row * ow + x, self.lanes.min(ow - x))
    }
}

impl Vectors for RowVectors {
    type Start = usize;

    fn count(&self) -> usize {
        self.count
    }

    fn starts(&self, v0: usize, v1: usize, unit: usize) -> Vec<usize> {
        let mut starts: Vec<usize> = (v0..v1).map(|v| self.vector(v).0).collect();
        let last = starts.last().copied().unwrap_or(0);
        starts.resize((v1 - v0).next_multiple_of(unit), last);
        starts
    }

    fn in_order(&self, v0: usize, v1: usize, unit: usize) -> usize {
        if self.output[2] % self.lanes == 0 { (v1 - v0) / unit * unit } else { 0 }
    }

    fn runs(&self, v0: usize, v1: usize, f: &mut dyn FnMut(usize, usize, usize)) {
        // (element, offset, length) of the run being extended
        let mut run: Option<(usize, usize, usize)> = None;
        for v in v0..v1 {
            let (_, o, l) = self.vector(v);
            let e = (v - v0) * self.lanes;
            run = match run {
                Some((re, ro, rl)) if re + rl == e && ro + rl == o => Some((re, ro, rl + l)),
                Some(r) => {
                    f(r.0, r.1, r.2);
                    Some((e, o, l))
                }
                None => Some((e, o, l)),
            };
        }
        if let Some((e, o, l)) = run {
            f(e, o, l);
        }
    }

    unsafe fn forward(
        &self,
        b: Blocking,
        x: *const f32,
        grid: &Grid,
        wp: &[f32],
        c_in: usize,
        blocks: usize,
        starts: &[usize],
        acc: *mut f32,
        stride: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { conv_direct::forward_tile(b, x, grid.len, &grid.offsets, wp, c_in, blocks, starts, acc, stride) }
    }
}

/// The output positions of one sample in output order, in vectors of `lanes` consecutive positions
/// that run from one output row into the next ([`Span`]; AVX-512's masked loads, rows at least one
/// vector wide): no lane is wasted where `lanes` does not divide `Wo`, only a sample's last vector may
/// be partly used.
struct SpanVectors {
    lanes: usize,
    s_out: usize,
    spans: Vec<Span>,
}

impl SpanVectors {
    fn new(g: &ConvGeom, grid: &Grid, lanes: usize) -> Self {
        let [_, oh, ow] = g.output;
        debug_assert!(ow >= lanes && lanes <= 16);
        let s_out = g.s_out();
        let at = |p: usize| {
            let (row, x) = (p / ow, p % ow);
            (row / oh * grid.dims[1] + row % oh) * grid.dims[2] + x
        };
        let mask = |r: core::ops::Range<usize>| ((1u32 << r.end) - (1u32 << r.start)) as u16;
        let spans = (0..s_out.div_ceil(lanes))
            .map(|i| {
                let p = i * lanes;
                let n = lanes.min(s_out - p);
                let first = n.min(ow - p % ow);
                let start = at(p);
                // With rows at least `lanes` wide, the lanes past the row are the next row's first.
                let gap = if first < n { at(p + first) - start - first } else { 0 };
                Span { start, gap, first: mask(0..first), second: mask(first..n) }
            })
            .collect();
        Self { lanes, s_out, spans }
    }
}

impl Vectors for SpanVectors {
    type Start = Span;

    fn count(&self) -> usize {
        self.spans.len()
    }

    fn starts(&self, v0: usize, v1: usize, unit: usize) -> Vec<Span> {
        let mut starts = self.spans[v0..v1].to_vec();
        let last = starts.last().copied().unwrap_or_default();
        starts.resize((v1 - v0).next_multiple_of(unit), last);
        starts
    }

    fn in_order(&self, v0: usize, v1: usize, unit: usize) -> usize {
        // Every vector but a partly used last one.
        let whole = self.s_out / self.lanes;
        v1.min(whole).saturating_sub(v0) / unit * unit
    }

    fn runs(&self, v0: usize, v1: usize, f: &mut dyn FnMut(usize, usize, usize)) {
        let (first, end) = (v0 * self.lanes, (v1 * self.lanes).min(self.s_out));
        if first < end {
            f(0, first, end - first);
        }
    }

    unsafe fn forward(
        &self,
        b: Blocking,
        x: *const f32,
        grid: &Grid,
        wp: &[f32],
        c_in: usize,
        blocks: usize,
        starts: &[Span],
        acc: *mut f32,
        stride: usize,
    ) {
        // SAFETY: the caller's contract.
        unsafe { conv_direct::forward_span_tile(b, x, grid.len, &grid.offsets, wp, c_in, blocks, starts, acc, stride) }
    }
}

/// `x [batch, ch, input]` zero-padded by `padding` on each side into `grid`'s maps (borrowed when there
/// is no padding).
/// With `slack > 0`, always a copy, followed by `slack` zeros (room for reads past the last map).
///
/// The maps are filled in parallel, each written once: the input's rows copied, only the border
/// zeroed.
fn pad<'a, T: ConvElem>(
    x: &'a [T],
    batch: usize,
    ch: usize,
    input: [usize; 3],
    padding: [usize; 3],
    grid: &Grid,
    slack: usize,
) -> Cow<'a, [T]> {
    if padding == [0; 3] && slack == 0 {
        return Cow::Borrowed(x);
    }
    let [d, h, w] = input;
    let [_, hp, wp] = grid.dims;
    let s_in = d * h * w;
    let maps = batch * ch;
    assert!(x.len() >= maps * s_in, "pad: input shorter than its shape");
    let total = maps * grid.len + slack;
    let mut out: Vec<T> = Vec::with_capacity(total);
    let base = SyncPtr(out.as_mut_ptr());
    par_items(maps, || (), |m, _| {
        // SAFETY: item m writes elements m·len..(m + 1)·len of the allocation and no other item does;
        // the rows copied lie inside x (length asserted) and inside the map (the grid is the input plus
        // its padding). The element types are floats, whose zero is all-zero bytes.
        unsafe {
            let map = base.get().add(m * grid.len);
            let src = x.as_ptr().add(m * s_in);
            let mut at = 0;
            for z in 0..d {
                for y in 0..h {
                    let dst = ((z + padding[0]) * hp + y + padding[1]) * wp + padding[2];
                    core::ptr::write_bytes(map.add(at), 0, dst - at);
                    core::ptr::copy_nonoverlapping(src.add((z * h + y) * w), map.add(dst), w);
                    at = dst + w;
                }
            }
            core::ptr::write_bytes(map.add(at), 0, grid.len - at);
        }
    });
    // SAFETY: the maps are written above; the slack is the rest of the allocation.
    unsafe {
        core::ptr::write_bytes(base.get().add(maps * grid.len), 0, slack);
        out.set_len(total);
    }
    Cow::Owned(out)
}

/// Forward convolution of unit stride ([`applies`]): `x [batch, c_in, input]`, `w [c_out, c_in,
/// kernel]` → `[batch, c_out, output]`.
pub(crate) fn conv_forward<T: ConvElem>(x: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    if let (Some(b), Some(x), Some(w)) = (Blocking::current(), as_f32(x), as_f32(w)) {
        return from_f32(forward_direct(b, x, w, g));
    }
    let grid = Grid::new(g);
    let xp = pad(x, g.batch, g.c_in, g.input, g.padding, &grid, 0);
    let (k_len, col_rows) = (g.k_len(), g.col_rows());
    let tiles = grid.tiles(g.batch, g.c_out);
    let parallel_gemm = tiles.len() == 1;
    let runs = |(_, j0, j1): (usize, usize, usize), f: &mut dyn FnMut(usize, usize, usize)| {
        grid.runs(g.output, j0, j1, |j, o, l| f(j - j0, o, l))
    };
    forward_tiles(g, &tiles, runs, |(b, j0, j1), acc, _| {
        let n = j1 - j0;
        // The first tap's GEMM overwrites every element.
        grow_scratch(acc, n * g.c_out);
        let xb = &xp[b * g.c_in * grid.len..(b + 1) * g.c_in * grid.len];
        for (tap, off) in grid.offsets.iter().enumerate() {
            // SAFETY: acc holds n × c_out (element (j, co) at acc[co·n + j]); input channel c of
            // position j at xb[c·len + off + j0 + j], inside the map since j0 + j + off < len; weight
            // (c, co) of this tap at w[co·col_rows + c·K + tap].
            unsafe {
                gemm_into(
                    n, g.c_out, g.c_in,
                    acc.as_mut_ptr(), 1, n, tap > 0,
                    xb.as_ptr().add(off + j0), 1, grid.len as isize,
                    w.as_ptr().add(tap), k_len as isize, col_rows as isize,
                    parallel_gemm,
                );
            }
        }
        n
    })
}

/// Runs `compute(tile, acc, out)` over every tile `(sample, first, end)` — it leaves the tile's result
/// in the per-worker buffer `acc`, output channel `co` of result element `e` at `acc[co·stride + e]`,
/// and returns `stride`; it may also write output positions straight into `out` (`[batch, c_out,
/// output]`) — and copies each tile's remaining output positions into `out`: `runs(tile, f)` calls
/// `f(element, output offset, length)` for each run of them.
fn forward_tiles<T: ConvElem>(
    g: &ConvGeom,
    tiles: &[(usize, usize, usize)],
    runs: impl Fn((usize, usize, usize), &mut dyn FnMut(usize, usize, usize)) + Sync + Send,
    compute: impl Fn((usize, usize, usize), &mut Vec<T>, SyncPtr<T>) -> usize + Sync + Send,
) -> Vec<T> {
    let s_out = g.s_out();
    let len = g.batch * g.c_out * s_out;
    let mut out: Vec<T> = Vec::with_capacity(len);
    let out_ptr = SyncPtr(out.as_mut_ptr());
    par_items(tiles.len(), Vec::<T>::new, |t, acc| {
        let b = tiles[t].0;
        let stride = compute(tiles[t], acc, out_ptr);
        runs(tiles[t], &mut |e, o, l| {
            for co in 0..g.c_out {
                let src = &acc[co * stride + e..][..l];
                // SAFETY: every output element is one grid position, and tiles do not overlap.
                unsafe {
                    let dst = out_ptr.get().add((b * g.c_out + co) * s_out + o);
                    core::ptr::copy_nonoverlapping(src.as_ptr(), dst, l);
                }
            }
        });
    });
    // SAFETY: the callers' tiles cover every output position of every sample, and each tile's compute
    // and runs write all c_out channels of its positions.
    unsafe { out.set_len(len) };
    out
}

/// Input gradient of a unit-stride convolution ([`data_grad_applies`]): `dy [batch, c_out, output]`,
/// `w [c_out, c_in, kernel]` → `dx [batch, c_in, input]`, as the forward convolution of `dy` with the
/// flipped kernel.
pub(crate) fn conv_data_grad<T: ConvElem>(dy: &[T], w: &[T], g: &ConvGeom) -> Vec<T> {
    data_grad_as_forward(dy, w, g, conv_forward)
}

/// The input gradient of a unit-stride convolution `g` (padding at most `(k − 1)·d`) as `forward(dy, w',
/// g')`: the forward convolution of the output gradient with the flipped kernel `w'[c][co][t] =
/// w[co][c][K − 1 − t]` over the geometry [`flipped`]`(g)`.
pub(crate) fn data_grad_as_forward<T: ConvElem>(
    dy: &[T],
    w: &[T],
    g: &ConvGeom,
    forward: impl FnOnce(&[T], &[T], &ConvGeom) -> Vec<T>,
) -> Vec<T> {
    let k_len = g.k_len();
    let mut flipped_w = vec![T::zero(); w.len()];
    for co in 0..g.c_out {
        for c in 0..g.c_in {
            let src = &w[(co * g.c_in + c) * k_len..][..k_len];
            let dst = &mut flipped_w[(c * g.c_out + co) * k_len..][..k_len];
            for (d, s) in dst.iter_mut().zip(src.iter().rev()) {
                *d = *s;
            }
        }
    }
    forward(dy, &flipped_w, &flipped(g))
}

/// Weight gradient of a unit-stride convolution ([`applies`]): `x [batch, c_in, input]`, `dy [batch,
/// c_out, output]` → `dw [c_out, c_in, kernel]`.
pub(crate) fn conv_weight_grad<T: ConvElem>(x: &[T], dy: &[T], g: &ConvGeom) -> Vec<T> {
    if let (Some(b), Some(x), Some(dy)) = (Blocking::current(), as_f32(x), as_f32(dy)) {
        return from_f32(weight_grad_direct(b, x, dy, g));
    }
    let grid = Grid::new(g);
    let xp = pad(x, g.batch, g.c_in, g.input, g.padding, &grid, 0);
    let s_out = g.s_out();
    let (k_len, col_rows) = (g.k_len(), g.col_rows());
    let len = g.c_out * col_rows;
    let tiles = grid.tiles(g.batch, g.c_out);
    // The accumulator is dWᵀ (element (co, c·K + t) at acc[(c·K + t)·c_out + co]) so that the output
    // gradient, gathered transposed, is a column-major left operand (see the im2col weight gradient).
    let step = |acc: &mut Vec<T>, dyt: &mut Vec<T>, tile: (usize, usize, usize), par: bool| {
        let (b, j0, j1) = tile;
        let n = j1 - j0;
        dyt.clear();
        dyt.resize(n * g.c_out, T::zero());
        let dyb = &dy[b * g.c_out * s_out..(b + 1) * g.c_out * s_out];
        grid.runs(g.output, j0, j1, |j, o, len| {
            transpose_block(dyb, s_out, o, len, g.c_out, &mut dyt[(j - j0) * g.c_out..]);
        });
        let xb = &xp[b * g.c_in * grid.len..(b + 1) * g.c_in * grid.len];
        for (tap, off) in grid.offsets.iter().enumerate() {
            // SAFETY: acc holds c_out × col_rows at the strides above; dY (co, j) at dyt[j·c_out + co];
            // input (j, c) at xb[c·len + off + j0 + j], inside the map.
            unsafe {
                gemm_into(
                    g.c_out, g.c_in, n,
                    acc.as_mut_ptr().add(tap * g.c_out), 1, k_len * g.c_out, true,
                    dyt.as_ptr(), 1, g.c_out as isize,
                    xb.as_ptr().add(off + j0), 1, grid.len as isize,
                    par,
                );
            }
        }
    };
    from_transposed(&weight_grad_sum(&tiles, len, step), g.c_out, col_rows)
}

/// `s` as f32 when `T` is f32 (the direct kernels' element type).
pub(crate) fn as_f32<T: ConvElem>(s: &[T]) -> Option<&[f32]> {
    (TypeId::of::<T>() == TypeId::of::<f32>()).then(|| bytemuck::cast_slice(s))
}

/// `v` as a `Vec<T>`, for `T` = f32 (after [`as_f32`] returned `Some`).
pub(crate) fn from_f32<T: ConvElem>(v: Vec<f32>) -> Vec<T> {
    assert!(TypeId::of::<T>() == TypeId::of::<f32>(), "direct kernels return f32");
    let mut v = ManuallyDrop::new(v);
    // SAFETY: T is f32 (asserted), so pointer, length, capacity and allocation layout carry over.
    unsafe { Vec::from_raw_parts(v.as_mut_ptr().cast::<T>(), v.len(), v.capacity()) }
}

/// [`conv_forward`] with the register-blocked kernels of [`conv_direct`]: over vectors that span output
/// rows ([`SpanVectors`]) where the CPU has them and `lanes` does not divide the rows, over the output
/// rows' vectors ([`RowVectors`]) otherwise.
fn forward_direct(b: Blocking, x: &[f32], w: &[f32], g: &ConvGeom) -> Vec<f32> {
    let grid = Grid::new(g);
    let ow = g.output[2];
    if b.spans() && ow % b.lanes != 0 && ow >= b.lanes {
        // A masked lane reads nothing: no slack past the last map.
        let xp = pad(x, g.batch, g.c_in, g.input, g.padding, &grid, 0);
        forward_vectors(b, &xp, w, g, &grid, &SpanVectors::new(g, &grid, b.lanes))
    } else {
        // A row's last vector reads up to lanes − 1 positions past the row's last input; for the sample's
        // last row that is past its last map, which the slack covers.
        let xp = pad(x, g.batch, g.c_in, g.input, g.padding, &grid, b.lanes);
        forward_vectors(b, &xp, w, g, &grid, &RowVectors::new(g, &grid, b.lanes))
    }
}

/// The forward convolution over `vectors`, `xp` the padded input (every vector's reads inside it).
fn forward_vectors<V: Vectors>(b: Blocking, xp: &[f32], w: &[f32], g: &ConvGeom, grid: &Grid, vectors: &V) -> Vec<f32> {
    let co = b.fwd_channels;
    let blocks = g.c_out.div_ceil(co);
    let wp = conv_direct::pack_weights(w, g.c_out, g.c_in, g.k_len(), co);
    let (lanes, nv) = (b.lanes, b.fwd_vectors);
    let tiles = vector_tiles(vectors.count(), lanes, g.batch, g.c_out, nv);
    // Where the blocks cover exactly the output channels, a tile's leading vectors whose lanes are the
    // sample's output positions in order are written straight into the output in whole blocks; the
    // rest go through `acc`.
    let direct = |(_, v0, v1): (usize, usize, usize)| if blocks * co == g.c_out { vectors.in_order(v0, v1, nv) } else { 0 };
    let runs = |tile: (usize, usize, usize), f: &mut dyn FnMut(usize, usize, usize)| vectors.runs(tile.1 + direct(tile), tile.2, f);
    let s_out = g.s_out();
    forward_tiles(g, &tiles, runs, |tile, acc: &mut Vec<f32>, out: SyncPtr<f32>| {
        let (bi, v0, v1) = tile;
        let x = xp[bi * g.c_in * grid.len..].as_ptr();
        let starts = vectors.starts(v0, v1, nv);
        let skip = direct(tile);
        let (in_order, rest) = starts.split_at(skip);
        if !in_order.is_empty() {
            // SAFETY: skip is a multiple of nv; the reads are as below; the vectors write channels
            // 0..c_out of output positions v0·lanes..(v0 + skip)·lanes of sample bi (`in_order`), inside
            // its maps, which no other tile writes.
            unsafe {
                vectors.forward(b, x, grid, &wp, g.c_in, blocks, in_order, out.get().add(bi * g.c_out * s_out + v0 * lanes), s_out);
            }
        }
        let n = rest.len() * lanes;
        grow_scratch(acc, n * blocks * co);
        if !rest.is_empty() {
            // SAFETY: rest.len() is a multiple of fwd_vectors; every vector reads inside this sample's
            // padded maps or past them inside `xp` (the caller's padding and slack); acc holds blocks·co
            // rows of n; the blocking is the CPU's own.
            unsafe { vectors.forward(b, x, grid, &wp, g.c_in, blocks, rest, acc.as_mut_ptr(), n) };
        }
        n
    })
}

/// Positions of one weight-gradient pass over a tile: its output-gradient and input rows stay in L1.
const WG_CHUNK: usize = 1024;

/// [`conv_weight_grad`] with the register-blocked kernel of [`conv_direct`], over the output rows'
/// vectors ([`RowVectors`]); `dw [c_out, c_in, kernel]`.
fn weight_grad_direct(b: Blocking, x: &[f32], dy: &[f32], g: &ConvGeom) -> Vec<f32> {
    let grid = Grid::new(g);
    let lanes = b.lanes;
    let vectors = RowVectors::new(g, &grid, lanes);
    let xp = pad(x, g.batch, g.c_in, g.input, g.padding, &grid, lanes);
    let s_out = g.s_out();
    let rows = g.c_out.next_multiple_of(b.wg_out);
    let tiles = vector_tiles(vectors.count, lanes, g.batch, g.c_out, 1);
    let step = |acc: &mut Vec<f32>, dyv: &mut Vec<f32>, tile: (usize, usize, usize), _: bool| {
        let (bi, v0, v1) = tile;
        let starts = vectors.starts(v0, v1, 1);
        let n = starts.len() * lanes;
        // The output gradient in the vectors' compact layout: zeros in lanes past a row's end and in the
        // rows beyond c_out. Rows start on SIMD_ALIGN boundaries (n is a multiple of the lanes), so that
        // the kernel's output-gradient loads do not straddle cache lines; the buffer is the worker's own
        // `Vec`, reused across tiles, so the rows start at the first aligned element in it.
        const PER_ALIGN: usize = SIMD_ALIGN / core::mem::size_of::<f32>();
        dyv.clear();
        dyv.resize(rows * n + PER_ALIGN - 1, 0.0);
        let a = (PER_ALIGN - (dyv.as_ptr() as usize / core::mem::size_of::<f32>()) % PER_ALIGN) % PER_ALIGN;
        let dyv = &mut dyv[a..];
        let dyb = &dy[bi * g.c_out * s_out..(bi + 1) * g.c_out * s_out];
        vectors.runs(v0, v1, &mut |e, o, l| {
            for c in 0..g.c_out {
                dyv[c * n + e..][..l].copy_from_slice(&dyb[c * s_out + o..][..l]);
            }
        });
        for (i, chunk) in starts.chunks(WG_CHUNK / lanes).enumerate() {
            // SAFETY: dyv holds `rows` rows of n, this chunk's vectors from element i·WG_CHUNK; every
            // vector's input reads end at most lanes − 1 past this sample's last map (next sample or
            // slack); acc holds c_out·c_in·K; the blocking is the CPU's own.
            unsafe {
                conv_direct::weight_grad_tile(
                    b,
                    xp.as_ptr().add(bi * g.c_in * grid.len),
                    grid.len,
                    &grid.offsets,
                    chunk,
                    dyv.as_ptr().add(i * WG_CHUNK),
                    n,
                    g.c_out,
                    g.c_in,
                    acc,
                );
            }
        }
    };
    weight_grad_sum(&tiles, g.c_out * g.col_rows(), step)
}
