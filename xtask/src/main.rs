//! Project automation, run as `cargo xtask <command>`:
//!
//! * `train [RECIPE]` — train a recipe (default: `recipes/mni152-tissue.toml`, on data committed in `fixtures/`).
//! * `bench [--only NAMES] [--backend NAME] [--fusion]` — build in release and run the reference workloads, one JSON
//!   line each (`--fusion`: burn-cuda with operation fusion; `VESALIUS_CPU_ISA=avx2` or `baseline` in the environment
//!   caps the CPU kernels' instruction set, as `ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2
//!   MKL_ENABLE_INSTRUCTIONS=AVX2` cap those of `xtask/torch_bench.py`'s PyTorch).
//! * `test-gpu` — run the backend-generic tests on CUDA (burn's autotune checking every candidate kernel against the
//!   others) and the benchmarks with and without operation fusion, when a GPU is present.
//! * `ci` — what CI runs: formatting (`cargo fmt --check`), then every test target of the workspace built with
//!   the workspace's crates through Clippy (any warning fails, as `cargo clippy --workspace --all-targets -- -D
//!   warnings` would), the test binaries run side by side (`runner.rs`), the doc-tests after them, then a `cargo
//!   check` of the CUDA build (no GPU needed); stops after formatting or lints when they fail.
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

mod runner;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().map(Path::to_path_buf).unwrap_or_default()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn status(mut c: Command) -> ExitCode {
    match c.status() {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().unwrap_or(1).clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("error: cannot run {c:?}: {e}");
            ExitCode::from(1)
        }
    }
}

const USAGE: &str = "usage: cargo xtask <train [RECIPE] [ARGS…] | bench [ARGS…] | test-gpu | ci>";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    match cmd.as_str() {
        "train" => {
            let recipe = args.get(1).filter(|a| !a.starts_with('-')).cloned();
            let rest: Vec<String> = args.iter().skip(if recipe.is_some() { 2 } else { 1 }).cloned().collect();
            let recipe = recipe.unwrap_or_else(|| "recipes/mni152-tissue.toml".into());
            let mut c = cargo();
            c.args(["run", "--quiet", "-p", "vesalius", "--", "train", &recipe]).args(rest);
            status(c)
        }
        "ci" => {
            ensure_chromium();
            eprintln!("cargo xtask ci: cargo fmt --check");
            let started = std::time::Instant::now();
            let mut c = cargo();
            c.args(["fmt", "--check"]);
            let code = status(c);
            eprintln!("cargo xtask ci: cargo fmt took {:.0} s", started.elapsed().as_secs_f64());
            if code != ExitCode::SUCCESS {
                return code;
            }
            eprintln!("cargo xtask ci: cargo test --workspace (the workspace's crates through Clippy), test binaries side by side");
            runner::run(cargo, &root())
        }
        "bench" => {
            let mut c = cargo();
            c.args(["run", "--quiet", "--release", "-p", "vesalius"]);
            // `--fusion` builds burn-cuda with operation fusion (the CLI's `cuda-fusion` feature).
            if args.iter().any(|a| a == "--fusion") {
                c.args(["--features", "cuda-fusion"]);
            } else if args.iter().any(|a| a == "cuda") {
                c.args(["--features", "cuda"]);
            }
            if args.iter().any(|a| a == "ndarray") {
                c.args(["--features", "ndarray"]);
            }
            c.args(["--", "bench"]);
            // `--backend NAME` must precede the subcommand's own flags; pass everything through.
            let mut rest: Vec<String> = args[1..].iter().filter(|a| *a != "--fusion").cloned().collect();
            if let Some(i) = rest.iter().position(|a| a == "--backend")
                && i + 1 < rest.len()
            {
                let name = rest.remove(i + 1);
                rest.remove(i);
                c.args(["--backend", &name]);
            }
            c.args(rest);
            status(c)
        }
        "test-gpu" => {
            if !gpu_present() {
                println!("test-gpu: no NVIDIA GPU or driver found on this machine; nothing was run and nothing is claimed.");
                return ExitCode::SUCCESS;
            }
            let mut t = cargo();
            // The backend-generic test files of these crates pick burn-cuda when built with `test-cuda`.
            t.args(["test", "--release"]);
            for krate in GPU_TEST_CRATES {
                t.args(["-p", krate]);
            }
            let features: Vec<String> = GPU_TEST_CRATES.iter().map(|k| format!("{k}/test-cuda")).collect();
            t.args(["--features", &features.join(",")]);
            let code = status(t);
            if code != ExitCode::SUCCESS {
                return code;
            }
            // The workloads on burn-cuda as built by `--features cuda`, then with operation fusion.
            for features in ["cuda", "cuda-fusion"] {
                let mut b = cargo();
                b.args(["run", "--quiet", "--release", "-p", "vesalius", "--features", features, "--", "--backend", "cuda", "bench"]);
                let code = status(b);
                if code != ExitCode::SUCCESS {
                    return code;
                }
            }
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("error: unknown xtask command '{other}'\n{USAGE}");
            ExitCode::from(2)
        }
    }
}

/// Crates whose tests are generic over the backend and run on CUDA under `test-gpu`.
const GPU_TEST_CRATES: [&str; 8] = [
    "vesalius-nets",
    "vesalius-registration",
    "vesalius-cadx",
    "vesalius-segmentation",
    "vesalius-train",
    "vesalius-enhancement",
    "vesalius-prediction",
    "vesalius-detection",
];

/// A GPU is usable when `nvidia-smi -L` lists one.
fn gpu_present() -> bool {
    Command::new("nvidia-smi").arg("-L").output().is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains("GPU"))
}

/// The report test drives headless Chromium: on a machine without it, install Debian's package (as CI runs, root).
fn ensure_chromium() {
    if std::env::var_os("CHROMIUM").is_some() || ["/usr/bin/chromium", "/usr/bin/chromium-browser"].iter().any(|p| Path::new(p).exists()) {
        return;
    }
    if !Path::new("/usr/bin/apt-get").exists() {
        eprintln!(
            "cargo xtask ci: Chromium is missing and there is no apt-get; the report test will fail (set CHROMIUM to a Chromium binary)"
        );
        return;
    }
    eprintln!("cargo xtask ci: installing Debian's chromium for the report test");
    for args in [&["update"][..], &["install", "-y", "chromium"][..]] {
        let ok = Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().is_ok_and(|s| s.success());
        if !ok {
            eprintln!("cargo xtask ci: apt-get {} failed; the report test will fail", args.join(" "));
            return;
        }
    }
}
