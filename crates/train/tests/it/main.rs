//! The integration tests of `vesalius-train`, as modules of one test binary: the backend's generic code is
//! instantiated and linked once for all of them, not once per file.

mod engine;
mod parallel;
mod sliding;
mod transfer;
mod tune;

/// The backend the tests run inference on, and the autodiff backend they train on.
#[cfg(not(feature = "test-cuda"))]
type P = burn::backend::Flex;
#[cfg(feature = "test-cuda")]
type P = burn::backend::Cuda;
type AD = burn::backend::Autodiff<P>;
/// The device of both.
type Device = burn::tensor::Device<AD>;

/// Burn's random generator is process-wide: a test that seeds it, builds a network or draws random tensors holds
/// this turn, so that a seeded test sees only its own draws whatever runs beside it.
static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Waits for the turn; a test that failed while holding it does not block the rest.
fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    TURN.lock().unwrap_or_else(|e| e.into_inner())
}
