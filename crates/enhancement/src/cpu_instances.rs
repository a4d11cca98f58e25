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
        crate::adapt::adapt::<P> as *const (),
        crate::adapt::adapt_kspace::<P> as *const (),
        crate::adapt::reconstruct_measured::<P> as *const (),
        crate::adapt::enhance_planes::<P> as *const (),
        crate::evaluate::network_on_case::<P> as *const (),
        crate::evaluate::load_best::<P> as *const (),
        crate::evaluate::evaluate::<P> as *const (),
        crate::evaluate::evaluate_prepared::<P> as *const (),
        crate::model::build::<P> as *const (),
        crate::model::reconstruct_plane::<P> as *const (),
        crate::model::reconstruct_series::<P> as *const (),
        crate::model::enhance_plane::<P> as *const (),
        crate::stain::sae_normalise::<B> as *const (),
        crate::stain::run::<B> as *const (),
        crate::train::score_cases::<P> as *const (),
        crate::train::train_dyn::<B> as *const (),
        crate::infer::Enhancer::<P>::load as *const (),
        crate::infer::Enhancer::<P>::enhance as *const (),
        crate::infer::Enhancer::<P>::reconstruct as *const (),
    ];
    std::hint::black_box(entries).len()
}
