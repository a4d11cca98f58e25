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
        crate::evaluate::load_best::<P> as *const (),
        crate::evaluate::evaluate::<P> as *const (),
        crate::evaluate::evaluate_prepared::<P> as *const (),
        crate::infer::maps::<P> as *const (),
        crate::infer::detect::<P> as *const (),
        crate::infer::retina_detect::<P> as *const (),
        crate::model::build::<P> as *const (),
        crate::model::centre_loss::<P> as *const (),
        crate::retina::level_loss::<P> as *const (),
        crate::sae::pretrain::<B> as *const (),
        crate::sae::scan_map::<P> as *const (),
        crate::sae::detect::<P> as *const (),
        crate::train::train_dyn::<B> as *const (),
    ];
    std::hint::black_box(entries).len()
}
