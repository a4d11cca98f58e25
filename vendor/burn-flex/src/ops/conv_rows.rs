//! The stride-2 rows of im2col and col2im in f32 with AVX-512: `dst[j] = src[2·j]` (gather) and
//! `dst[2·j] += src[j]` (scatter-add), sixteen elements per step through one two-source permutation, the
//! last partial step through masked loads and stores.
//!
//! The rows of strided convolutions on small maps are short (8–16 outputs, one less where the
//! padding cuts a column): the baseline build's four-wide loops left most of such a row to their
//! scalar tail, one element per load and store.

/// A stride-2 row kernel: `(dst, src, n)`.
pub(crate) type RowFn = unsafe fn(*mut f32, *const f32, usize);

/// The gather and scatter-add kernels for the CPU, if it has AVX-512.
pub(crate) fn stride2() -> Option<(RowFn, RowFn)> {
    #[cfg(target_arch = "x86_64")]
    if super::vectorised::vector_isa() == super::vectorised::VectorIsa::Avx512 {
        return Some((avx512::gather as RowFn, avx512::scatter_add as RowFn));
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use core::arch::x86_64::*;

    /// The low `n` bits set (`n ≤ 16`).
    #[inline(always)]
    fn low(n: usize) -> __mmask16 {
        ((1u32 << n) - 1) as __mmask16
    }

    /// `dst[j] = src[2·j]` for `j < n`.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `src` is readable for `2·n − 1` elements and `dst` writable for `n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn gather(dst: *mut f32, src: *const f32, n: usize) {
        let even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
        let mut j = 0;
        // SAFETY: a full step reads `src[2j .. 2j + 32)`, inside `2n − 1` while `j + 17 ≤ n`; the last
        // step reads (masked) `src[2j .. 2n − 1)` and writes `dst[j .. n)`.
        unsafe {
            while j + 17 <= n {
                let a = _mm512_loadu_ps(src.add(2 * j));
                let b = _mm512_loadu_ps(src.add(2 * j + 16));
                _mm512_storeu_ps(dst.add(j), _mm512_permutex2var_ps(a, even, b));
                j += 16;
            }
            let r = n - j;
            if r > 0 {
                let count = 2 * r - 1;
                let a = _mm512_maskz_loadu_ps(low(count.min(16)), src.add(2 * j));
                let b = _mm512_maskz_loadu_ps(low(count.saturating_sub(16)), src.wrapping_add(2 * j + 16));
                _mm512_mask_storeu_ps(dst.add(j), low(r), _mm512_permutex2var_ps(a, even, b));
            }
        }
    }

    /// `dst[2·j] += src[j]` for `j < n`; the odd elements between are neither read nor written.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `dst` is readable and writable for `2·n − 1` elements and `src` readable
    /// for `n`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn scatter_add(dst: *mut f32, src: *const f32, n: usize) {
        const EVEN: __mmask16 = 0x5555;
        let lo = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
        let hi = _mm512_setr_epi32(8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13, 14, 14, 15, 15);
        let mut j = 0;
        // SAFETY: a step touches (masked to the even lanes) `dst[2j .. 2j + 31)` and reads `src[j .. j +
        // 16)`, the last step only the lanes of `j .. n`.
        unsafe {
            while j + 16 <= n {
                let s = _mm512_loadu_ps(src.add(j));
                let pa = dst.add(2 * j);
                let pb = dst.add(2 * j + 16);
                let a = _mm512_maskz_loadu_ps(EVEN, pa);
                let b = _mm512_maskz_loadu_ps(EVEN, pb);
                _mm512_mask_storeu_ps(pa, EVEN, _mm512_add_ps(a, _mm512_permutexvar_ps(lo, s)));
                _mm512_mask_storeu_ps(pb, EVEN, _mm512_add_ps(b, _mm512_permutexvar_ps(hi, s)));
                j += 16;
            }
            let r = n - j;
            if r > 0 {
                let s = _mm512_maskz_loadu_ps(low(r), src.add(j));
                // Even lane 2i of the first vector holds element i < min(r, 8), of the second i − 8.
                let ma = EVEN & low((2 * r).min(16));
                let mb = EVEN & low((2 * r).saturating_sub(16));
                let pa = dst.add(2 * j);
                let pb = dst.wrapping_add(2 * j + 16);
                let a = _mm512_maskz_loadu_ps(ma, pa);
                let b = _mm512_maskz_loadu_ps(mb, pb);
                _mm512_mask_storeu_ps(pa, ma, _mm512_add_ps(a, _mm512_permutexvar_ps(lo, s)));
                _mm512_mask_storeu_ps(pb, mb, _mm512_add_ps(b, _mm512_permutexvar_ps(hi, s)));
            }
        }
    }
}
