//! Register-blocked kernels for the by-tap convolutions in f32, compiled for AVX-512 and for AVX2 and
//! chosen at run time ([`super::vectorised::vector_isa`]).
//!
//! Both work on the zero-padded grid of `conv_shifted`: input channel `c` of grid position `j` at tap
//! `t` is `x[c·len + off(t) + j]`. Positions come in vectors: a vector is [`Blocking::lanes`]
//! consecutive grid positions from a given start (`starts[i]`), so that a tile can skip the grid
//! positions that are no output (the padding columns and rows between output rows). With AVX-512 the
//! forward kernel also takes vectors that run from the end of one output row into the start of the
//! next ([`Span`]), each loaded as two masked loads, so that no lane goes past a row's end.
//!
//! * Forward: a block of output channels × [`Blocking::fwd_vectors`] position vectors is held in
//!   vector registers across all input channels and taps (`Σ_c Σ_t w[o][c][t] · x[c·len + off(t) +
//!   j]`), the positions loaded as vectors and each weight broadcast, then stored once. One tap's GEMM
//!   per call instead would read and write the block's result once per tap and pack its operands each
//!   time.
//! * Weight gradient: a block of output channels × consecutive (input channel, tap) pairs is held in
//!   registers while the position vectors stream through (`Σ_j dy[o][j] · x[c·len + off(t) + j]`), then
//!   reduced across lanes into `dw[o][c][t]`.
//!
//! With AVX2 both kernels keep twelve accumulators in the sixteen vector registers, and their inner
//! loops are written in assembly ([`avx2_forward`], [`avx2_weight_grad`]): the compiler's register
//! allocation of the generic loops below moved and spilled accumulators at that pressure, and with
//! eight accumulators (the most it kept in registers) the fused multiply-adds wait on their latency.
//!
//! Results are compact: vector `i`'s positions are elements `i·lanes..(i + 1)·lanes` of a result (or
//! output-gradient) row. Callers make every vector's inputs readable (a vector may run past the end of
//! an output row into the padding; its extra results are dropped, its extra output-gradient elements
//! are zeros).

use alloc::vec;
use alloc::vec::Vec;

use super::vectorised::{VectorIsa, vector_isa};

/// Register blocking of one instruction set.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Blocking {
    isa: VectorIsa,
    /// Floats per vector register.
    pub(crate) lanes: usize,
    /// Forward: output channels per block.
    pub(crate) fwd_channels: usize,
    /// Forward: position vectors per block.
    pub(crate) fwd_vectors: usize,
    /// Weight gradient: output channels per block.
    pub(crate) wg_out: usize,
}

impl Blocking {
    /// The blocking of the instruction set the CPU runs the crate's loops with, if it has direct kernels.
    pub(crate) fn current() -> Option<Self> {
        match vector_isa() {
            // 8 channels × 3 vectors of 16 positions: 24 accumulators, 3 position vectors and one
            // broadcast weight in 32 registers.
            VectorIsa::Avx512 => Some(Self {
                isa: VectorIsa::Avx512,
                lanes: 16,
                fwd_channels: AVX512_FWD[0],
                fwd_vectors: AVX512_FWD[1],
                wg_out: 4,
            }),
            // Forward: 4 channels × 3 vectors of 8 positions, 12 accumulators of 16 registers, seven loads
            // per twelve FMAs ([`avx2_forward`]); weight gradient: 2 output channels × 6 pairs
            // ([`avx2_weight_grad`]).
            VectorIsa::Avx2 => Some(Self {
                isa: VectorIsa::Avx2,
                lanes: 8,
                fwd_channels: avx2_forward::CO,
                fwd_vectors: avx2_forward::NV,
                wg_out: avx2_weight_grad::CO,
            }),
            VectorIsa::Baseline => None,
        }
    }

    /// Whether the forward kernel takes vectors that span two output rows ([`Span`], masked loads).
    pub(crate) fn spans(&self) -> bool {
        matches!(self.isa, VectorIsa::Avx512)
    }
}

/// The AVX-512 forward blocking, output channels × position vectors, shared by both forward kernels.
const AVX512_FWD: [usize; 2] = [8, 3];

/// A vector of [`Blocking::lanes`] consecutive output positions that may run from the end of one output
/// row into the start of the next ([`forward_span_tile`], AVX-512): lane `l` in the mask `first` reads
/// the grid at `start + l`, lane `l` in `second` at `start + gap + l`; the other lanes read nothing
/// and give zeros.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Span {
    pub(crate) start: usize,
    pub(crate) gap: usize,
    pub(crate) first: u16,
    pub(crate) second: u16,
}

/// Packs `w [c_out, c_in, k_len]` into blocks of `co` output channels: element `(o, c, t)` of block
/// `cb` at `((cb·c_in + c)·k_len + t)·co + o`, zeros for channels beyond `c_out`.
pub(crate) fn pack_weights(w: &[f32], c_out: usize, c_in: usize, k_len: usize, co: usize) -> Vec<f32> {
    let blocks = c_out.div_ceil(co);
    let mut packed = vec![0.0; blocks * co * c_in * k_len];
    for out in 0..c_out {
        let (cb, o) = (out / co, out % co);
        for c in 0..c_in {
            for t in 0..k_len {
                packed[((cb * c_in + c) * k_len + t) * co + o] = w[(out * c_in + c) * k_len + t];
            }
        }
    }
    packed
}

/// One forward tile: `acc[o·stride + i·lanes + l] = Σ_c Σ_t wp(o, c, t) · x[c·len + offsets[t] + starts[i]
/// + l]` for `o` below `blocks · fwd_channels`, vector `i < starts.len()` and lane `l`, with `wp` from
/// [`pack_weights`] (blocks of `fwd_channels`).
///
/// # Safety
/// `starts.len()` is a multiple of [`Blocking::fwd_vectors`]; `x[c·len + offsets[t] + starts[i] + l]` is
/// readable for every `c < c_in`, tap `t`, vector `i` and lane `l`; `acc` is writable for
/// `blocks · fwd_channels` rows of `stride ≥ starts.len() · lanes`; `wp` holds
/// `blocks · fwd_channels · c_in · offsets.len()` elements; the CPU has `b`'s instruction set.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn forward_tile(
    b: Blocking,
    x: *const f32,
    len: usize,
    offsets: &[usize],
    wp: &[f32],
    c_in: usize,
    blocks: usize,
    starts: &[usize],
    acc: *mut f32,
    stride: usize,
) {
    debug_assert_eq!(starts.len() % b.fwd_vectors, 0);
    debug_assert!(wp.len() >= blocks * b.fwd_channels * c_in * offsets.len());
    // SAFETY: the caller's contract; the instruction set is `b`'s.
    unsafe {
        match b.isa {
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx512 => avx512::forward(x, len, offsets, wp.as_ptr(), c_in, blocks, starts, acc, stride),
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx2 => avx2_forward::forward(x, len, offsets, wp.as_ptr(), c_in, blocks, starts, acc, stride),
            _ => unreachable!("no direct kernel for {:?}", b.isa),
        }
    }
}

/// [`forward_tile`] over vectors that span output rows: `acc[o·stride + i·lanes + l] = Σ_c Σ_t wp(o, c,
/// t) · x[c·len + offsets[t] + p]` with `p` lane `l`'s grid position in `spans[i]`, zero for lanes in
/// neither of its masks.
///
/// # Safety
/// `b` spans ([`Blocking::spans`]); `spans.len()` is a multiple of [`Blocking::fwd_vectors`]; `x[c·len +
/// offsets[t] + p]` is readable for every `c < c_in`, tap `t` and grid position `p` of a lane in a
/// vector's masks; `acc` and `wp` as for [`forward_tile`].
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn forward_span_tile(
    b: Blocking,
    x: *const f32,
    len: usize,
    offsets: &[usize],
    wp: &[f32],
    c_in: usize,
    blocks: usize,
    spans: &[Span],
    acc: *mut f32,
    stride: usize,
) {
    debug_assert_eq!(spans.len() % b.fwd_vectors, 0);
    debug_assert!(wp.len() >= blocks * b.fwd_channels * c_in * offsets.len());
    // SAFETY: the caller's contract; the instruction set is AVX-512.
    unsafe {
        match b.isa {
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx512 => avx512_span::forward(x, len, offsets, wp.as_ptr(), c_in, blocks, spans, acc, stride),
            _ => unreachable!("no spanning kernel for {:?}", b.isa),
        }
    }
}

/// One weight-gradient tile: `dw[(o·c_in + c)·K + t] += Σ_i Σ_l dy[o·stride + i·lanes + l] · x[c·len +
/// offsets[t] + starts[i] + l]` for `o < c_out`, `c < c_in`, `K = offsets.len()`.
///
/// # Safety
/// `dy` is readable for `c_out` rounded up to [`Blocking::wg_out`] rows of `stride ≥ starts.len() ·
/// lanes` (rows beyond `c_out` are read, not used); `x[c·len + offsets[t] + starts[i] + l]` is readable
/// for every `c < c_in`, tap `t`, vector `i` and lane `l`; `dw` holds `c_out · c_in · K` elements; the CPU
/// has `b`'s instruction set.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn weight_grad_tile(
    b: Blocking,
    x: *const f32,
    len: usize,
    offsets: &[usize],
    starts: &[usize],
    dy: *const f32,
    stride: usize,
    c_out: usize,
    c_in: usize,
    dw: &mut [f32],
) {
    assert!(dw.len() >= c_out * c_in * offsets.len());
    // SAFETY: the caller's contract; `dw` is long enough (asserted).
    unsafe {
        match b.isa {
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx512 => avx512::weight_grad(x, len, offsets, starts, dy, stride, c_out, c_in, dw.as_mut_ptr()),
            #[cfg(target_arch = "x86_64")]
            VectorIsa::Avx2 => avx2_weight_grad::weight_grad(x, len, offsets, starts, dy, stride, c_out, c_in, dw.as_mut_ptr()),
            _ => unreachable!("no direct kernel for {:?}", b.isa),
        }
    }
}

/// The forward kernel's loops (see [`forward_tile`]) for one instruction set: `$prep` turns a vector's
/// start `$s` into what `$load` needs to load the vector's inputs at offset `$r` of the padded grid
/// (`$p`); the rest is shared by the row vectors and the spanning vectors.
macro_rules! forward_loop {
    (
        $v:ty, $w:expr, [$co:expr, $nv:expr], $zero:ident, $store:ident, $set1:ident, $fma:ident,
        ($len:ident, $offsets:ident, $wp:ident, $c_in:ident, $blocks:ident, $starts:ident, $acc:ident, $stride:ident),
        |$s:ident| $prep:expr,
        |$p:ident, $r:ident| $load:expr
    ) => {{
        const CO: usize = $co;
        const NV: usize = $nv;
        let k = $offsets.len();
        for cb in 0..$blocks {
            let wb = $wp.add(cb * $c_in * k * CO);
            for (i, chunk) in $starts.chunks_exact(NV).enumerate() {
                let j = i * NV * $w;
                let prepared: [_; NV] = core::array::from_fn(|v| {
                    let $s = &chunk[v];
                    $prep
                });
                let mut a: [[$v; NV]; CO] = [[$zero(); NV]; CO];
                for c in 0..$c_in {
                    let wc = wb.add(c * k * CO);
                    for (t, off) in $offsets.iter().enumerate() {
                        let $r = c * $len + *off;
                        let mut xv: [$v; NV] = [$zero(); NV];
                        for v in 0..NV {
                            let $p = prepared[v];
                            xv[v] = $load;
                        }
                        let wt = wc.add(t * CO);
                        for o in 0..CO {
                            let s = $set1(*wt.add(o));
                            for v in 0..NV {
                                a[o][v] = $fma(xv[v], s, a[o][v]);
                            }
                        }
                    }
                }
                for o in 0..CO {
                    let row = $acc.add((cb * CO + o) * $stride + j);
                    for v in 0..NV {
                        $store(row.add(v * $w), a[o][v]);
                    }
                }
            }
        }
    }};
}

/// The two kernels for one instruction set: vector type, lanes, forward blocking (channels × vectors),
/// weight-gradient blocking (output channels × (input channel, tap) pairs), and the intrinsics.
macro_rules! kernels {
    (
        $module:ident, $feature:literal, $v:ty, $lanes:expr, [$fco:expr, $fnv:expr], [$gco:expr, $gci:expr],
        $zero:ident, $load:ident, $store:ident, $set1:ident, $fma:ident, $hsum:ident
    ) => {
        #[cfg(target_arch = "x86_64")]
        mod $module {
            use core::arch::x86_64::*;

            const W: usize = $lanes;

            /// See [`super::forward_tile`].
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            pub(super) unsafe fn forward(
                x: *const f32,
                len: usize,
                offsets: &[usize],
                wp: *const f32,
                c_in: usize,
                blocks: usize,
                starts: &[usize],
                acc: *mut f32,
                stride: usize,
            ) {
                // SAFETY: indices within the bounds of `super::forward_tile`'s contract.
                unsafe {
                    forward_loop!(
                        $v, W, [$fco, $fnv], $zero, $store, $set1, $fma,
                        (len, offsets, wp, c_in, blocks, starts, acc, stride),
                        |s| x.add(*s),
                        |p, r| $load(p.add(r))
                    )
                }
            }

            /// See [`super::weight_grad_tile`].
            #[target_feature(enable = $feature)]
            #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
            pub(super) unsafe fn weight_grad(
                x: *const f32,
                len: usize,
                offsets: &[usize],
                starts: &[usize],
                dy: *const f32,
                stride: usize,
                c_out: usize,
                c_in: usize,
                dw: *mut f32,
            ) {
                const CO: usize = $gco;
                const CI: usize = $gci;
                let k = offsets.len();
                let pairs = c_in * k;
                // The block's columns are `CI` consecutive (input channel, tap) pairs `q = c·K + t`, which
                // is also their place in a row of `dw`: with few input channels, several taps of one
                // channel share a block instead of leaving its columns idle. A block's output-gradient
                // rows and its input rows (shifted by at most the largest tap offset) are read again for
                // every block of pairs while still in cache.
                for cb in (0..c_out).step_by(CO) {
                    for q0 in (0..pairs).step_by(CI) {
                        // SAFETY (whole block): indices within the bounds of `super::weight_grad_tile`'s
                        // contract; pairs beyond the last read the last pair and are not written.
                        unsafe {
                            let rows: [*const f32; CI] = core::array::from_fn(|i| {
                                let q = (q0 + i).min(pairs - 1);
                                x.add((q / k) * len + offsets[q % k])
                            });
                            let mut a: [[$v; CI]; CO] = [[$zero(); CI]; CO];
                            for (v, s) in starts.iter().enumerate() {
                                let mut d: [$v; CO] = [$zero(); CO];
                                for o in 0..CO {
                                    d[o] = $load(dy.add((cb + o) * stride + v * W));
                                }
                                for i in 0..CI {
                                    let xv = $load(rows[i].add(*s));
                                    for o in 0..CO {
                                        a[o][i] = $fma(d[o], xv, a[o][i]);
                                    }
                                }
                            }
                            for o in 0..CO.min(c_out - cb) {
                                for i in 0..CI.min(pairs - q0) {
                                    *dw.add((cb + o) * pairs + q0 + i) += $hsum(a[o][i]);
                                }
                            }
                        }
                    }
                }
            }

            #[allow(unused_imports)]
            use super::*;
        }
    };
}

kernels!(
    avx512, "avx512f", __m512, 16, [AVX512_FWD[0], AVX512_FWD[1]], [4, 4],
    _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_reduce_add_ps
);

/// The forward kernel over spanning vectors: each vector loaded as two masked loads.
#[cfg(target_arch = "x86_64")]
mod avx512_span {
    use core::arch::x86_64::*;

    use super::Span;

    /// See [`super::forward_span_tile`].
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments, clippy::needless_range_loop)]
    pub(super) unsafe fn forward(
        x: *const f32,
        len: usize,
        offsets: &[usize],
        wp: *const f32,
        c_in: usize,
        blocks: usize,
        spans: &[Span],
        acc: *mut f32,
        stride: usize,
    ) {
        // SAFETY: indices within the bounds of `super::forward_span_tile`'s contract; a lane outside a
        // mask is not read, so the second pointer may lie past the grid when `second` is empty.
        unsafe {
            forward_loop!(
                __m512, 16, [super::AVX512_FWD[0], super::AVX512_FWD[1]], _mm512_setzero_ps, _mm512_storeu_ps, _mm512_set1_ps, _mm512_fmadd_ps,
                (len, offsets, wp, c_in, blocks, spans, acc, stride),
                |s| (x.wrapping_add(s.start), x.wrapping_add(s.start + s.gap), s.first, s.second),
                |p, r| _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps(p.2, p.0.wrapping_add(r)), p.3, p.1.wrapping_add(r))
            )
        }
    }
}

/// Sum of the eight lanes of `v`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: core::arch::x86_64::__m256) -> f32 {
    use core::arch::x86_64::*;
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<1>(s, s));
    _mm_cvtss_f32(s)
}

/// The AVX2 forward kernel, 4 output channels × 3 vectors of 8 positions: 12 accumulators, three input vectors
/// and one broadcast weight take all 16 vector registers, which the compiler's register allocation of the
/// generic loop does not achieve (it moves and spills accumulators); the loops over input channels and taps
/// are therefore written out in assembly.
#[cfg(target_arch = "x86_64")]
mod avx2_forward {
    use core::arch::asm;
    use core::arch::x86_64::*;

    /// Floats per vector.
    const W: usize = 8;
    /// Output channels per block.
    pub(super) const CO: usize = 4;
    /// Position vectors per block.
    pub(super) const NV: usize = 3;

    /// See [`super::forward_tile`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn forward(
        x: *const f32,
        len: usize,
        offsets: &[usize],
        wp: *const f32,
        c_in: usize,
        blocks: usize,
        starts: &[usize],
        acc: *mut f32,
        stride: usize,
    ) {
        let k = offsets.len();
        // SAFETY: indices within the bounds of `super::forward_tile`'s contract: the assembly reads
        // `x[c·len + offsets[t] + starts[i] + 0..24]` for `c < c_in`, `t < k` and the block's three vectors,
        // and the block's `c_in · k · 4` packed weights; it writes only its own registers.
        unsafe {
            for cb in 0..blocks {
                let wb = wp.add(cb * c_in * k * CO);
                for (i, chunk) in starts.chunks_exact(NV).enumerate() {
                    let z = _mm256_setzero_ps();
                    let (mut a00, mut a01, mut a02, mut a10, mut a11, mut a12) = (z, z, z, z, z, z);
                    let (mut a20, mut a21, mut a22, mut a30, mut a31, mut a32) = (z, z, z, z, z, z);
                    // With no channels or taps the sums are zeros, which the stores below write.
                    if k > 0 && c_in > 0 {
                        asm!(
                            "2:",
                            "mov {t}, {offs}",
                            "3:",
                            "mov {o}, qword ptr [{t}]",
                            "vmovups {x0}, ymmword ptr [{q0} + 4*{o}]",
                            "vmovups {x1}, ymmword ptr [{q1} + 4*{o}]",
                            "vmovups {x2}, ymmword ptr [{q2} + 4*{o}]",
                            "vbroadcastss {b}, dword ptr [{w}]",
                            "vfmadd231ps {a00}, {x0}, {b}",
                            "vfmadd231ps {a01}, {x1}, {b}",
                            "vfmadd231ps {a02}, {x2}, {b}",
                            "vbroadcastss {b}, dword ptr [{w} + 4]",
                            "vfmadd231ps {a10}, {x0}, {b}",
                            "vfmadd231ps {a11}, {x1}, {b}",
                            "vfmadd231ps {a12}, {x2}, {b}",
                            "vbroadcastss {b}, dword ptr [{w} + 8]",
                            "vfmadd231ps {a20}, {x0}, {b}",
                            "vfmadd231ps {a21}, {x1}, {b}",
                            "vfmadd231ps {a22}, {x2}, {b}",
                            "vbroadcastss {b}, dword ptr [{w} + 12]",
                            "vfmadd231ps {a30}, {x0}, {b}",
                            "vfmadd231ps {a31}, {x1}, {b}",
                            "vfmadd231ps {a32}, {x2}, {b}",
                            "add {w}, {weight_bytes}",
                            "add {t}, 8",
                            "cmp {t}, {end}",
                            "jne 3b",
                            "add {q0}, {step}",
                            "add {q1}, {step}",
                            "add {q2}, {step}",
                            "dec {c}",
                            "jnz 2b",
                            offs = in(reg) offsets.as_ptr(),
                            end = in(reg) offsets.as_ptr().add(k),
                            step = in(reg) len * 4,
                            weight_bytes = const CO * 4,
                            t = out(reg) _,
                            o = out(reg) _,
                            q0 = inout(reg) x.add(chunk[0]) => _,
                            q1 = inout(reg) x.add(chunk[1]) => _,
                            q2 = inout(reg) x.add(chunk[2]) => _,
                            w = inout(reg) wb => _,
                            c = inout(reg) c_in => _,
                            x0 = out(ymm_reg) _,
                            x1 = out(ymm_reg) _,
                            x2 = out(ymm_reg) _,
                            b = out(ymm_reg) _,
                            a00 = inout(ymm_reg) a00,
                            a01 = inout(ymm_reg) a01,
                            a02 = inout(ymm_reg) a02,
                            a10 = inout(ymm_reg) a10,
                            a11 = inout(ymm_reg) a11,
                            a12 = inout(ymm_reg) a12,
                            a20 = inout(ymm_reg) a20,
                            a21 = inout(ymm_reg) a21,
                            a22 = inout(ymm_reg) a22,
                            a30 = inout(ymm_reg) a30,
                            a31 = inout(ymm_reg) a31,
                            a32 = inout(ymm_reg) a32,
                            options(nostack, readonly),
                        );
                    }
                    let j = i * NV * W;
                    for (o, row) in [[a00, a01, a02], [a10, a11, a12], [a20, a21, a22], [a30, a31, a32]].into_iter().enumerate() {
                        let dst = acc.add((cb * CO + o) * stride + j);
                        for (v, a) in row.into_iter().enumerate() {
                            _mm256_storeu_ps(dst.add(v * W), a);
                        }
                    }
                }
            }
        }
    }
}

/// The AVX2 weight-gradient kernel, 2 output channels × 6 (input channel, tap) pairs: 12 accumulators, two
/// output-gradient vectors and one input vector, the position loop written out in assembly for the same reason as
/// [`avx2_forward`]. Six pairs divide `C · 9` for every even channel count, so no accumulator idles on 3 × 3
/// kernels.
#[cfg(target_arch = "x86_64")]
mod avx2_weight_grad {
    use core::arch::asm;
    use core::arch::x86_64::*;

    /// Floats per vector.
    const W: usize = 8;
    /// Output channels per block.
    pub(super) const CO: usize = 2;
    /// (Input channel, tap) pairs per block.
    const CI: usize = 6;

    /// See [`super::weight_grad_tile`].
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn weight_grad(
        x: *const f32,
        len: usize,
        offsets: &[usize],
        starts: &[usize],
        dy: *const f32,
        stride: usize,
        c_out: usize,
        c_in: usize,
        dw: *mut f32,
    ) {
        let k = offsets.len();
        let pairs = c_in * k;
        if starts.is_empty() || pairs == 0 {
            return;
        }
        for cb in (0..c_out).step_by(CO) {
            for q0 in (0..pairs).step_by(CI) {
                // SAFETY (whole block): indices within the bounds of `super::weight_grad_tile`'s contract: the
                // assembly reads `dy` rows `cb` and `cb + 1` (rows up to `c_out` rounded up to `CO` are readable)
                // at `v·8..v·8 + 8` for every vector `v`, and each pair's input row at `starts[v]..starts[v] + 8`;
                // pairs beyond the last read the last pair and are not written.
                unsafe {
                    let rows: [*const f32; CI] = core::array::from_fn(|i| {
                        let q = (q0 + i).min(pairs - 1);
                        x.add((q / k) * len + offsets[q % k])
                    });
                    let z = _mm256_setzero_ps();
                    let (mut a00, mut a01, mut a02, mut a03, mut a04, mut a05) = (z, z, z, z, z, z);
                    let (mut a10, mut a11, mut a12, mut a13, mut a14, mut a15) = (z, z, z, z, z, z);
                    asm!(
                        "2:",
                        "mov {s}, qword ptr [{sp}]",
                        "vmovups {d0}, ymmword ptr [{d}]",
                        "vmovups {d1}, ymmword ptr [{d} + {db}]",
                        "vmovups {xv}, ymmword ptr [{r0} + 4*{s}]",
                        "vfmadd231ps {a00}, {d0}, {xv}",
                        "vfmadd231ps {a10}, {d1}, {xv}",
                        "vmovups {xv}, ymmword ptr [{r1} + 4*{s}]",
                        "vfmadd231ps {a01}, {d0}, {xv}",
                        "vfmadd231ps {a11}, {d1}, {xv}",
                        "vmovups {xv}, ymmword ptr [{r2} + 4*{s}]",
                        "vfmadd231ps {a02}, {d0}, {xv}",
                        "vfmadd231ps {a12}, {d1}, {xv}",
                        "vmovups {xv}, ymmword ptr [{r3} + 4*{s}]",
                        "vfmadd231ps {a03}, {d0}, {xv}",
                        "vfmadd231ps {a13}, {d1}, {xv}",
                        "vmovups {xv}, ymmword ptr [{r4} + 4*{s}]",
                        "vfmadd231ps {a04}, {d0}, {xv}",
                        "vfmadd231ps {a14}, {d1}, {xv}",
                        "vmovups {xv}, ymmword ptr [{r5} + 4*{s}]",
                        "vfmadd231ps {a05}, {d0}, {xv}",
                        "vfmadd231ps {a15}, {d1}, {xv}",
                        "add {d}, {vector_bytes}",
                        "add {sp}, 8",
                        "cmp {sp}, {end}",
                        "jne 2b",
                        sp = inout(reg) starts.as_ptr() => _,
                        end = in(reg) starts.as_ptr().add(starts.len()),
                        vector_bytes = const W * 4,
                        s = out(reg) _,
                        d = inout(reg) dy.add(cb * stride) => _,
                        db = in(reg) stride * 4,
                        r0 = in(reg) rows[0],
                        r1 = in(reg) rows[1],
                        r2 = in(reg) rows[2],
                        r3 = in(reg) rows[3],
                        r4 = in(reg) rows[4],
                        r5 = in(reg) rows[5],
                        d0 = out(ymm_reg) _,
                        d1 = out(ymm_reg) _,
                        xv = out(ymm_reg) _,
                        a00 = inout(ymm_reg) a00,
                        a01 = inout(ymm_reg) a01,
                        a02 = inout(ymm_reg) a02,
                        a03 = inout(ymm_reg) a03,
                        a04 = inout(ymm_reg) a04,
                        a05 = inout(ymm_reg) a05,
                        a10 = inout(ymm_reg) a10,
                        a11 = inout(ymm_reg) a11,
                        a12 = inout(ymm_reg) a12,
                        a13 = inout(ymm_reg) a13,
                        a14 = inout(ymm_reg) a14,
                        a15 = inout(ymm_reg) a15,
                        options(nostack, readonly),
                    );
                    let sums = [[a00, a01, a02, a03, a04, a05], [a10, a11, a12, a13, a14, a15]];
                    for (o, row) in sums.iter().enumerate().take(CO.min(c_out - cb)) {
                        for (i, a) in row.iter().enumerate().take(CI.min(pairs - q0)) {
                            *dw.add((cb + o) * pairs + q0 + i) += super::hsum256(*a);
                        }
                    }
                }
            }
        }
    }
}
