//! The integration tests of `vesalius-nets`, as modules of one test binary: the backend's generic code is
//! instantiated and linked once for all of them, not once per file.

mod affine_net;
mod backend_kernels;
mod cam_split;
mod dense;
mod networks;
mod norm;
mod random;
mod sampler;
mod transfer;

/// The backend the tests run on: the CPU's, CUDA with the `test-cuda` feature, or wgpu with `test-wgpu`.
#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
type P = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type P = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type P = burn::backend::Wgpu;
/// The same with automatic differentiation.
type B = burn::backend::Autodiff<P>;

/// A small seeded generator, independent of burn's process-wide one.
struct Lcg(u64);

impl Lcg {
    /// The next value in `[0, 1)`.
    fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 40) as f32 / (1u64 << 24) as f32
    }

    /// `n` values in `[lo, hi)`.
    fn vec(&mut self, n: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..n).map(|_| lo + (hi - lo) * self.next()).collect()
    }
}

/// Burn's random generator is process-wide: a test that seeds it, builds a network or draws random tensors holds
/// this turn, so that a seeded test sees only its own draws whatever runs beside it.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for the turn; a test that failed while holding it does not block the rest.
fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}
