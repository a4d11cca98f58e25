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

/// The names `VESALIUS_CPU_ISA` accepts, widest first: the CPU backend's kernels (its own loops and the GEMM crate's
/// products) use at most that instruction set, as oneDNN's `ONEDNN_MAX_CPU_ISA` and PyTorch's `ATEN_CPU_CAPABILITY`
/// cap theirs. Every path computes the same function within float rounding; the cap changes speed, and lets one
/// machine run what a narrower CPU runs.
pub const CPU_ISAS: [&str; 3] = ["avx512", "avx2", "baseline"];

/// Checks the value of `VESALIUS_CPU_ISA` (`None`: unset): unset, empty or one of [`CPU_ISAS`] in any case.
pub fn check_cpu_isa(value: Option<&std::ffi::OsStr>) -> Result<(), crate::CliError> {
    let Some(value) = value else { return Ok(()) };
    match value.to_str() {
        Some(v) if v.is_empty() || CPU_ISAS.iter().any(|n| n.eq_ignore_ascii_case(v)) => Ok(()),
        _ => Err(crate::CliError::Usage(format!(
            "VESALIUS_CPU_ISA={}: unknown instruction set (expected {})",
            value.to_string_lossy(),
            CPU_ISAS.join(", ")
        ))),
    }
}

/// The instruction set the CPU backend's kernels run with on this machine: the widest the CPU has within
/// `VESALIUS_CPU_ISA`'s cap, one of [`CPU_ISAS`].
#[cfg(feature = "flex")]
pub fn cpu_isa() -> &'static str {
    match burn_flex::ops::vector_isa() {
        burn_flex::ops::VectorIsa::Avx512 => CPU_ISAS[0],
        burn_flex::ops::VectorIsa::Avx2 => CPU_ISAS[1],
        burn_flex::ops::VectorIsa::Baseline => CPU_ISAS[2],
    }
}

/// The folder where the GPU backend keeps what it learns about a machine between runs: `$VESALIUS_CACHE_DIR`, else
/// `$XDG_CACHE_HOME/vesalius`, else `$HOME/.cache/vesalius` (each only when set and not empty); `None` when none is.
/// `var` reads an environment variable.
pub fn cache_dir(var: impl Fn(&str) -> Option<String>) -> Option<std::path::PathBuf> {
    let set = |name: &str| var(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    set("VESALIUS_CACHE_DIR")
        .or_else(|| set("XDG_CACHE_HOME").map(|d| d.join("vesalius")))
        .or_else(|| set("HOME").map(|d| d.join(".cache").join("vesalius")))
}

/// The CubeCL configuration file that applies in `dir`, found and read as CubeCL finds it: in `dir` or the nearest
/// folder above it, a `cubecl.toml` or `CubeCL.toml`, else a `burn.toml` or `Burn.toml` with a `[cubecl]` table (one
/// without it is passed over). `Ok(None)` when there is none; the error names a file that CubeCL could not read
/// (CubeCL itself would abort the process) and its problem. `T` is CubeCL's configuration type.
pub fn cubecl_config_file<T: serde::de::DeserializeOwned>(dir: &std::path::Path) -> Result<Option<std::path::PathBuf>, String> {
    let fail = |f: &std::path::Path, e: &dyn fmt::Display| format!("{}: not a CubeCL configuration: {e}", f.display());
    let read = |f: &std::path::Path| std::fs::read_to_string(f).map_err(|e| fail(f, &e));
    for d in dir.ancestors() {
        if let Some(f) = ["cubecl.toml", "CubeCL.toml"].map(|n| d.join(n)).into_iter().find(|f| f.is_file()) {
            toml::from_str::<T>(&read(&f)?).map_err(|e| fail(&f, &e))?;
            return Ok(Some(f));
        }
        for f in ["burn.toml", "Burn.toml"].map(|n| d.join(n)).into_iter().filter(|f| f.is_file()) {
            let mut table: toml::Table = toml::from_str(&read(&f)?).map_err(|e| fail(&f, &e))?;
            if let Some(cubecl) = table.remove("cubecl") {
                cubecl.try_into::<T>().map_err(|e| fail(&f, &e))?;
                return Ok(Some(f));
            }
        }
    }
    Ok(None)
}

/// Points burn-cuda's caches at [`cache_dir`]`/cubecl`, once per process and before the first CUDA call: the kernel
/// autotune chose for each operation and shape (by default CubeCL writes it under a `target/` folder next to the
/// nearest `Cargo.toml` above the working directory, so it followed the folder a command ran in), and the compiled
/// PTX of every kernel (off by default, so each process compiled every kernel again). A first run on a machine
/// tunes and compiles; later runs from any folder reuse both. Left alone where a CubeCL configuration file applies
/// ([`cubecl_config_file`]: the user's file decides, once read without error) or no cache folder is known; CubeCL's
/// `CUBECL_*` environment variables still apply. The error names the configuration file and its problem.
#[cfg(feature = "cuda")]
pub fn configure_cuda_caches() -> Result<(), String> {
    use burn::cubecl::config::{CubeClRuntimeConfig, RuntimeConfig, cache::CacheConfig};
    static DONE: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    DONE.get_or_init(|| {
        if let Some(dir) = std::env::current_dir().ok()
            && cubecl_config_file::<CubeClRuntimeConfig>(&dir)?.is_some()
        {
            return Ok(());
        }
        let Some(root) = cache_dir(|k| std::env::var(k).ok()).map(|d| d.join("cubecl")) else { return Ok(()) };
        let mut config = CubeClRuntimeConfig::default().override_from_env();
        config.autotune.cache = CacheConfig::File(root.clone());
        config.compilation.cache = Some(CacheConfig::File(root));
        let mut slot = CubeClRuntimeConfig::storage().lock();
        if slot.is_none() {
            *slot = Some(std::sync::Arc::new(config));
        }
        Ok(())
    })
    .clone()
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
                } else if let Err(e) = $crate::backend::configure_cuda_caches() {
                    Err($crate::CliError::Usage(e))
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
    }

    #[test]
    fn the_instruction_set_cap_accepts_its_names_only() {
        use std::ffi::OsStr;
        for ok in [None, Some(""), Some("avx512"), Some("AVX2"), Some("Baseline")] {
            assert!(check_cpu_isa(ok.map(OsStr::new)).is_ok(), "{ok:?}");
        }
        for bad in ["avx", "sse4", "avx2 ", "avx512f"] {
            let e = check_cpu_isa(Some(OsStr::new(bad))).unwrap_err();
            assert_eq!(e.exit_code(), 2);
            assert_eq!(e.to_string(), format!("VESALIUS_CPU_ISA={bad}: unknown instruction set (expected avx512, avx2, baseline)"));
        }
    }

    #[test]
    fn the_cache_folder_follows_vesalius_then_xdg_then_home() {
        let all = [("VESALIUS_CACHE_DIR", "/v"), ("XDG_CACHE_HOME", "/x"), ("HOME", "/h")];
        assert_eq!(cache_dir(env(&all)), Some(PathBuf::from("/v")));
        assert_eq!(cache_dir(env(&all[1..])), Some(PathBuf::from("/x/vesalius")));
        assert_eq!(cache_dir(env(&all[2..])), Some(PathBuf::from("/h/.cache/vesalius")));
        // Empty values count as unset.
        assert_eq!(
            cache_dir(env(&[("VESALIUS_CACHE_DIR", ""), ("XDG_CACHE_HOME", ""), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.cache/vesalius"))
        );
        assert_eq!(cache_dir(env(&[])), None);
    }

    /// A stand-in for CubeCL's configuration type, with one field of each kind that a file can get wrong.
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Probe {
        #[serde(default)]
        autotune: Option<ProbeAutotune>,
    }

    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct ProbeAutotune {
        level: String,
    }

    #[test]
    fn a_cubecl_file_in_the_folder_or_above_is_found() {
        let root = std::env::temp_dir().join(format!("vesalius-cubecl-{}", std::process::id()));
        let inner = root.join("a").join("b");
        std::fs::create_dir_all(&inner).unwrap();
        let found = |d: &std::path::Path| cubecl_config_file::<Probe>(d).map(|f| f.filter(|f| f.starts_with(&root)));
        assert_eq!(found(&inner), Ok(None));
        // A burn.toml counts only with a `[cubecl]` table (CubeCL reads that section alone).
        std::fs::write(root.join("a").join("burn.toml"), "[train]\nepochs = 2\n").unwrap();
        assert_eq!(found(&inner), Ok(None));
        std::fs::write(root.join("a").join("burn.toml"), "[train]\nx = 1\n[cubecl.autotune]\nlevel = \"minimal\"\n").unwrap();
        assert_eq!(found(&inner), Ok(Some(root.join("a").join("burn.toml"))));
        // The nearest folder wins, and within a folder `cubecl.toml` before `burn.toml`.
        std::fs::write(inner.join("burn.toml"), "[cubecl]\n").unwrap();
        assert_eq!(found(&inner), Ok(Some(inner.join("burn.toml"))));
        std::fs::write(inner.join("cubecl.toml"), "[autotune]\nlevel = \"full\"\n").unwrap();
        assert_eq!(found(&inner), Ok(Some(inner.join("cubecl.toml"))));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_configuration_file_that_cubecl_could_not_read_is_an_error_naming_it() {
        let root = std::env::temp_dir().join(format!("vesalius-cubecl-check-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let (cubecl, burn) = (root.join("cubecl.toml"), root.join("burn.toml"));
        for (file, text, problem) in [
            (&cubecl, "[autotune\nlevel = 1", "TOML parse error"),
            (&cubecl, "[autotune]\nlevel = 3\n", "invalid type"),
            (&burn, "[cubecl.autotune]\nlevel = 3\n", "invalid type"),
            // CubeCL parses the whole of a burn.toml before it looks for its table.
            (&burn, "[train\nx = 1\n", "TOML parse error"),
        ] {
            let _ = std::fs::remove_file(&cubecl);
            std::fs::write(file, text).unwrap();
            let e = cubecl_config_file::<Probe>(&root).unwrap_err();
            assert!(e.starts_with(&format!("{}: not a CubeCL configuration: ", file.display())), "{e}");
            assert!(e.contains(problem), "{text:?}: {e}");
        }
        std::fs::remove_dir_all(&root).unwrap();
    }
}
