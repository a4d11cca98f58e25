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
        crate::evaluate::evaluate_dataset::<P> as *const (),
        crate::evaluate::evaluate_run::<P> as *const (),
        crate::explain::explain_input::<B> as *const (),
        crate::explain::explain::<B> as *const (),
        crate::infer::batch_loss::<P> as *const (),
        crate::infer::probabilities::<P> as *const (),
        crate::infer::rows::<P> as *const (),
        crate::infer::predict_dataset::<P> as *const (),
        crate::infer::files_batch::<P> as *const (),
        crate::infer::predict_files::<P> as *const (),
        crate::infer::embed_batch::<P> as *const (),
        crate::infer::embed_files::<P> as *const (),
        crate::label::score_files::<P> as *const (),
        crate::loss::cross_entropy::<P> as *const (),
        crate::loss::binary_cross_entropy::<P> as *const (),
        crate::tabular::fit::<B> as *const (),
        crate::tabular::train::<B> as *const (),
        crate::tabular::predict::<P> as *const (),
        crate::train::pretrain::<B> as *const (),
        crate::train::train::<B> as *const (),
        crate::volumes::train_dyn::<B> as *const (),
        crate::volumes::evaluate::<P> as *const (),
        crate::label::score_files::<B> as *const (),
    ];
    std::hint::black_box(entries).len()
}
