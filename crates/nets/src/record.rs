//! Model and optimiser records as bytes (named MessagePack, full precision), for run directories that write
//! them atomically.
//!
//! ```
//! use burn::backend::Flex;
//! use burn::module::Module;
//! use burn::tensor::{Distribution, Tensor};
//! use vesalius_nets::record::{from_bytes, to_bytes};
//! use vesalius_nets::{NormKind, UNetConfig};
//! let device = Default::default();
//! let a = UNetConfig::new(3, 1, 2, vec![4, 8]).with_norm(NormKind::Instance).init::<Flex>(&device);
//! let x = Tensor::<Flex, 5>::random([1, 1, 8, 8, 8], Distribution::Default, &device);
//! // burn initialises parameters lazily, on first use: use (or train) the model before cloning its record.
//! let y = a.forward(x.clone());
//! let bytes = to_bytes::<Flex, _>(a.into_record()).unwrap();
//! let b = UNetConfig::new(3, 1, 2, vec![4, 8]).with_norm(NormKind::Instance).init::<Flex>(&device); // other random weights
//! let b = b.load_record(from_bytes::<Flex, _>(bytes, &device).unwrap());
//! let diff = (y - b.forward(x)).abs().max().into_scalar();
//! assert_eq!(diff, 0.0);
//! ```
use burn::record::{FullPrecisionSettings, NamedMpkBytesRecorder, Record, Recorder};
use burn::tensor::backend::Backend;

fn recorder() -> NamedMpkBytesRecorder<FullPrecisionSettings> {
    NamedMpkBytesRecorder::<FullPrecisionSettings>::default()
}

/// Serialises any burn record.
pub fn to_bytes<B: Backend, R: Record<B>>(record: R) -> Result<Vec<u8>, String> {
    Recorder::<B>::record(&recorder(), record, ()).map_err(|e| format!("cannot serialise: {e}"))
}

/// Reads a record written by [`to_bytes`] onto `device`.
pub fn from_bytes<B: Backend, R: Record<B>>(bytes: Vec<u8>, device: &B::Device) -> Result<R, String> {
    Recorder::<B>::load(&recorder(), bytes, device).map_err(|e| format!("not a record of this network: {e}"))
}
