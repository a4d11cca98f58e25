mod base;
mod bilinear;
mod trilinear;

pub use base::*;
pub use trilinear::TrilinearSampling;
