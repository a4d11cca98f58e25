//! The integration tests of `vesalius-eval`, as modules of one test binary (one build and link for all of them).

mod classification;
mod survival_reference;
