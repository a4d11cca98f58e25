//! The one place where concrete burn backends are chosen. Everything else is generic.
use std::fmt;

/// Backends compiled into this binary.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    /// burn's pure-Rust CPU backend (SIMD + threads); the default.
    #[cfg(feature = "flex")]
    Flex,
    /// burn-ndarray CPU backend.
    #[cfg(feature = "ndarray")]
    Ndarray,
    /// NVIDIA GPU through burn-cuda.
    #[cfg(feature = "cuda")]
    Cuda,
}

impl fmt::Display for BackendKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match *self {
            #[cfg(feature = "flex")]
            BackendKind::Flex => "flex",
            #[cfg(feature = "ndarray")]
            BackendKind::Ndarray => "ndarray",
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => "cuda",
        };
        f.write_str(name)
    }
}

/// The default backend: the fastest CPU backend compiled in.
pub fn default_backend() -> BackendKind {
    #[cfg(feature = "flex")]
    return BackendKind::Flex;
    #[cfg(all(not(feature = "flex"), feature = "ndarray"))]
    return BackendKind::Ndarray;
    #[cfg(all(not(feature = "flex"), not(feature = "ndarray"), feature = "cuda"))]
    return BackendKind::Cuda;
}

/// burn's Flex CPU backend.
#[cfg(feature = "flex")]
pub type Flex = burn::backend::Flex;
/// burn-ndarray.
#[cfg(feature = "ndarray")]
pub type Ndarray = burn::backend::NdArray;
/// burn-cuda (f32).
#[cfg(feature = "cuda")]
pub type Cuda = burn::backend::Cuda;

/// Whether the NVIDIA driver library can be found, checked before any CUDA call (which would abort the process
/// when it is missing).
pub fn cuda_driver_present() -> bool {
    let mut dirs: Vec<std::path::PathBuf> = [
        "/usr/lib/x86_64-linux-gnu",
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/cuda/lib64",
        "/usr/local/nvidia/lib64",
        "/usr/local/nvidia/lib",
        "/usr/lib/wsl/lib",
    ]
    .iter()
    .map(std::path::PathBuf::from)
    .collect();
    if let Ok(extra) = std::env::var("LD_LIBRARY_PATH") {
        dirs.extend(extra.split(':').filter(|s| !s.is_empty()).map(std::path::PathBuf::from));
    }
    dirs.iter().any(|d| d.join("libcuda.so.1").exists() || d.join("libcuda.so").exists())
}

/// Runs `$body` with `$B` bound to the chosen backend type (inference) and `$AB` to its autodiff version.
#[macro_export]
macro_rules! with_backend {
    ($kind:expr, |$B:ident, $AB:ident, $device:ident| $body:expr) => {{
        match $kind {
            #[cfg(feature = "flex")]
            $crate::backend::BackendKind::Flex => {
                #[allow(dead_code)]
                type $B = $crate::backend::Flex;
                #[allow(dead_code)]
                type $AB = burn::backend::Autodiff<$crate::backend::Flex>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "ndarray")]
            $crate::backend::BackendKind::Ndarray => {
                #[allow(dead_code)]
                type $B = $crate::backend::Ndarray;
                #[allow(dead_code)]
                type $AB = burn::backend::Autodiff<$crate::backend::Ndarray>;
                let $device = Default::default();
                $body
            }
            #[cfg(feature = "cuda")]
            $crate::backend::BackendKind::Cuda => {
                if !$crate::backend::cuda_driver_present() {
                    Err($crate::CliError::Usage("the cuda backend needs an NVIDIA driver (libcuda.so), and none was found".into()))
                } else {
                    #[allow(dead_code)]
                    type $B = $crate::backend::Cuda;
                    #[allow(dead_code)]
                    type $AB = burn::backend::Autodiff<$crate::backend::Cuda>;
                    let $device = Default::default();
                    $body
                }
            }
        }
    }};
}
