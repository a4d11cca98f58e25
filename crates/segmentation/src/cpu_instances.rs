//! The generic entry points at the default CPU backend's types, generated once in this crate.
//!
//! In the dev and test profiles rustc shares generic instances between crates: the CLI and the integration tests
//! link these instead of generating each again (measured: a test binary of the segmentation crate went from 31 s to
//! 4 s of compilation). Release builds generate their own, and skip this module.
use burn::backend::Autodiff;
use burn_flex::Flex;

/// The default CPU backend.
type P = Flex;
/// Its autodiff version, for training.
type B = Autodiff<Flex>;

/// Takes the address of every entry point at `P` and `B`, so that their instances are generated here.
#[inline(never)]
pub fn anchor() -> usize {
    let entries: &[*const ()] = &[
        crate::evaluate::evaluate::<P> as *const (),
        crate::explain::explain_image::<B> as *const (),
        crate::explain::explain::<B> as *const (),
        crate::explain::random_model::<P> as *const (),
        crate::refine::refine_probabilities::<P> as *const (),
        crate::train::batch_tensors::<P> as *const (),
        crate::train::objective::<P> as *const (),
        crate::train::train_dyn::<B> as *const (),
        crate::infer::Predictor::<P>::load as *const (),
        crate::infer::Predictor::<P>::predict as *const (),
        crate::infer::Predictor::<P>::predict_both as *const (),
        crate::infer::Predictor::<B>::load as *const (),
    ];
    std::hint::black_box(entries).len()
}
