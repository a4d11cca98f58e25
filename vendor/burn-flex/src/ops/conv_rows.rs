//! The stride-2 rows of im2col and col2im in f32: `dst[j] = src[2·j]` (gather) and `dst[2·j] += src[j]`
//! (scatter-add). With AVX-512, sixteen elements per step through one two-source permutation, the last partial
//! step through masked loads and stores; with AVX2, eight per step through an in-lane shuffle and a cross-lane
//! permutation (gather) or a permutation and a blend that keeps the odd elements (scatter-add), the row's end
//! element by element.
//!
//! The rows of strided convolutions on small maps are short (8–16 outputs, one less where the
//! padding cuts a column): the baseline build's four-wide loops left most of such a row to their
//! scalar tail, one element per load and store.

/// A stride-2 row kernel: `(dst, src, n)`.
pub(crate) type RowFn = unsafe fn(*mut f32, *const f32, usize);

/// The gather and scatter-add kernels for the CPU, if it has AVX-512 or AVX2.
///
/// The scatter-add of AVX2 reads the odd elements between the ones it adds to and writes them back unchanged
/// (those of AVX-512 neither read nor write them): the caller owns the whole span `dst[0 .. 2·n − 1)`.
pub(crate) fn stride2() -> Option<(RowFn, RowFn)> {
    #[cfg(target_arch = "x86_64")]
    match super::vectorised::vector_isa() {
        super::vectorised::VectorIsa::Avx512 => return Some((avx512::gather as RowFn, avx512::scatter_add as RowFn)),
        super::vectorised::VectorIsa::Avx2 => return Some((avx2::gather as RowFn, avx2::scatter_add as RowFn)),
        _ => {}
    }
    None
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use core::arch::x86_64::*;

    /// `dst[j] = src[2·j]` for `j < n`.
    ///
    /// # Safety
    /// The CPU has AVX2; `src` is readable for `2·n − 1` elements and `dst` writable for `n`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn gather(dst: *mut f32, src: *const f32, n: usize) {
        // The first seven elements of the second load of a step that ends the row (its eighth, `src[2n − 1]`, lies
        // past the row and would land in an odd lane, which the step drops).
        let seven = _mm256_setr_epi32(-1, -1, -1, -1, -1, -1, -1, 0);
        let mut j = 0;
        // SAFETY: a step reads `src[2j .. 2j + 16)` (`2j + 15 ≤ 2n − 3` while `j + 9 ≤ n`; the step with
        // `j + 8 == n` reads its second vector masked to `src[2j + 8 .. 2n − 1)`) and writes `dst[j .. j + 8)`; the
        // rest of the row element by element.
        unsafe {
            while j + 8 <= n {
                let a = _mm256_loadu_ps(src.add(2 * j));
                let b = if j + 9 <= n { _mm256_loadu_ps(src.add(2 * j + 8)) } else { _mm256_maskload_ps(src.add(2 * j + 8), seven) };
                // Per 128-bit lane [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs in the order 0, 2, 1, 3.
                let even = _mm256_shuffle_ps::<0x88>(a, b);
                let even = _mm256_castpd_ps(_mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(even)));
                _mm256_storeu_ps(dst.add(j), even);
                j += 8;
            }
            while j < n {
                *dst.add(j) = *src.add(2 * j);
                j += 1;
            }
        }
    }

    /// `dst[2·j] += src[j]` for `j < n`; the odd elements between are read and written back unchanged.
    ///
    /// # Safety
    /// The CPU has AVX2; `dst` is readable and writable for `2·n − 1` elements, which no other thread accesses
    /// meanwhile, and `src` readable for `n`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn scatter_add(dst: *mut f32, src: *const f32, n: usize) {
        let lo = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
        let hi = _mm256_setr_epi32(4, 4, 5, 5, 6, 6, 7, 7);
        let mut j = 0;
        // SAFETY: a step reads `src[j .. j + 8)` and reads and writes `dst[2j .. 2j + 16)`, inside `2n − 1` while
        // `j + 9 ≤ n` (`2j + 15 ≤ 2n − 3`); the rest of the row element by element.
        unsafe {
            while j + 9 <= n {
                let s = _mm256_loadu_ps(src.add(j));
                let (pa, pb) = (dst.add(2 * j), dst.add(2 * j + 8));
                let (a, b) = (_mm256_loadu_ps(pa), _mm256_loadu_ps(pb));
                // Even lanes take the sums, odd lanes keep their bits (a blend, not an addition of zero, which
                // would turn −0 into +0).
                let a2 = _mm256_blend_ps::<0x55>(a, _mm256_add_ps(a, _mm256_permutevar8x32_ps(s, lo)));
                let b2 = _mm256_blend_ps::<0x55>(b, _mm256_add_ps(b, _mm256_permutevar8x32_ps(s, hi)));
                _mm256_storeu_ps(pa, a2);
                _mm256_storeu_ps(pb, b2);
                j += 8;
            }
            while j < n {
                *dst.add(2 * j) += *src.add(j);
                j += 1;
            }
        }
    }
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
