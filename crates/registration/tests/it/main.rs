//! The integration tests of `vesalius-registration`, as modules of one test binary: the backend's generic code is
//! instantiated and linked once for all of them, not once per file.

mod itk_pairs;
mod learned;
mod nibabel_pairs;
mod run;
mod subjects;
mod synthetic_3d;

/// The backend the tests run on: the CPU's, CUDA with the `test-cuda` feature, or wgpu with `test-wgpu`.
#[cfg(not(any(feature = "test-cuda", feature = "test-wgpu")))]
type P = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type P = burn::backend::Cuda;
#[cfg(all(feature = "test-wgpu", not(feature = "test-cuda")))]
type P = burn::backend::Wgpu;
/// The same with automatic differentiation.
type B = burn::backend::Autodiff<P>;

/// Burn's random generator is process-wide: a test that seeds it, builds a network or draws random tensors holds
/// this turn, so that a seeded test sees only its own draws whatever runs beside it.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for the turn; a test that failed while holding it does not block the rest.
fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}
