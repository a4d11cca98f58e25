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
        crate::deepsurv::network::<P> as *const (),
        crate::deepsurv::outputs::<P> as *const (),
        crate::deepsurv::lh_loss::<P> as *const (),
        crate::deepsurv::log_risk::<P> as *const (),
        crate::deepsurv::cox_loss::<P> as *const (),
        crate::deepsurv::train_dyn::<B> as *const (),
        crate::deepsurv::load::<P> as *const (),
        crate::evaluate::evaluate_rows::<P> as *const (),
        crate::evaluate::evaluate::<P> as *const (),
        crate::images::log_risk::<P> as *const (),
        crate::images::network::<P> as *const (),
        crate::images::load::<P> as *const (),
        crate::images::train_dyn::<B> as *const (),
        crate::infer::predict::<P> as *const (),
        crate::longitudinal::train_dyn::<B> as *const (),
        crate::longitudinal::load_net::<P> as *const (),
        crate::longitudinal::evaluate::<P> as *const (),
        crate::longitudinal::predict::<P> as *const (),
        crate::regression::train::<B> as *const (),
        crate::regression::evaluate::<P> as *const (),
        crate::regression::predict::<P> as *const (),
        crate::response::predict_pairs::<P> as *const (),
        crate::response::train_dyn::<B> as *const (),
        crate::response::load_run::<P> as *const (),
        crate::response::evaluate::<P> as *const (),
        crate::response::predict::<P> as *const (),
        crate::response::explain::<B> as *const (),
        crate::train::train_dyn::<B> as *const (),
    ];
    std::hint::black_box(entries).len()
}
