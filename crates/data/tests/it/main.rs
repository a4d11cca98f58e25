//! The integration tests of `vesalius-data`, as modules of one test binary (one build and link for all of them).

mod batching;
mod combat_reference;
mod sampling;
mod sources;
mod transforms;
