//! The integration tests of `vesalius-io`, as modules of one test binary (one build and link for all of them).

mod deid;
mod dicom;
mod geometry;
mod metaimage;
mod nifti_reference;
mod readers;
