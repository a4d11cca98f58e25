//! The integration tests of `vesalius-radiomics`, as modules of one test binary (one build and link for all of them).

mod ibsi_phantom;
mod pyradiomics_reference;
