//! Running a loop compiled for the widest vector instructions the CPU has, chosen at run time.

use core::sync::atomic::{AtomicU8, Ordering};

/// Instruction sets the crate's own loops and kernels are compiled for, narrowest first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VectorIsa {
    /// The target's baseline (SSE2 on x86-64).
    Baseline = 0,
    /// AVX2 with FMA.
    Avx2 = 1,
    /// AVX-512F.
    Avx512 = 2,
}

/// The widest instruction set the crate may use (the CPU's own limit applies as well); `UNREAD` until the first
/// call of [`limit`] reads the environment's cap.
static LIMIT: AtomicU8 = AtomicU8::new(UNREAD);
const UNREAD: u8 = u8::MAX;

/// The cap: the one set by [`set_vector_isa_limit`], else the environment's (`VESALIUS_CPU_ISA`, read once by the
/// GEMM crate, whose kernels it caps as well), else none.
#[inline]
fn limit() -> u8 {
    let limit = LIMIT.load(Ordering::Relaxed);
    if limit != UNREAD {
        return limit;
    }
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    let env = gemm_common::x86_isa_cap();
    #[cfg(not(all(feature = "std", target_arch = "x86_64")))]
    let env = VectorIsa::Avx512 as u8;
    match LIMIT.compare_exchange(UNREAD, env, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => env,
        Err(set) => set,
    }
}

fn isa_of(limit: u8) -> VectorIsa {
    match limit {
        0 => VectorIsa::Baseline,
        1 => VectorIsa::Avx2,
        _ => VectorIsa::Avx512,
    }
}

/// Caps the instruction set of the crate's own loops and kernels at `isa` and returns the previous cap. The GEMM
/// crate's products keep the choice they made on their first call (capped only by `VESALIUS_CPU_ISA`, which also
/// sets this cap's starting value). Every path computes the same function, so the cap only changes speed; it
/// exists so that each path can be checked on a CPU that has the wider ones.
pub fn set_vector_isa_limit(isa: VectorIsa) -> VectorIsa {
    let before = limit();
    LIMIT.store(isa as u8, Ordering::Relaxed);
    isa_of(before)
}

/// The instruction set the crate's loops run with: the widest the CPU has, within the cap.
#[inline]
pub fn vector_isa() -> VectorIsa {
    let limit = limit();
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        if limit >= VectorIsa::Avx512 as u8 && std::is_x86_feature_detected!("avx512f") {
            return VectorIsa::Avx512;
        }
        if limit >= VectorIsa::Avx2 as u8 && std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return VectorIsa::Avx2;
        }
    }
    let _ = limit;
    VectorIsa::Baseline
}

/// Runs `f` compiled for AVX-512 or AVX2 where the CPU has them (the crate's own code is built for baseline
/// x86-64). Closures handed to it should be `#[inline(always)]` (and the closures they call too) so that their
/// loops are compiled inside these copies.
#[inline(always)]
pub(crate) fn vectorised<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(all(feature = "std", target_arch = "x86_64"))]
    {
        match vector_isa() {
            // SAFETY: the CPU has AVX-512F (checked by `vector_isa`).
            VectorIsa::Avx512 => return unsafe { run_avx512(f) },
            // SAFETY: the CPU has AVX2 and FMA (checked by `vector_isa`).
            VectorIsa::Avx2 => return unsafe { run_avx2(f) },
            VectorIsa::Baseline => {}
        }
    }
    f()
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f")]
unsafe fn run_avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
unsafe fn run_avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}
