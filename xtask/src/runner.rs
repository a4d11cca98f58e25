//! `cargo test --workspace` with the test binaries run side by side, and the lints in the same build.
//!
//! `cargo test` runs one test binary at a time, and most of ours keep one core busy (a training test uses a
//! second core only in its larger kernels). This builds every test target with cargo, then runs the binaries on
//! one worker per core (at most one per 4 GiB of memory; `XTASK_TEST_JOBS` sets the number), longest first by the
//! times of the last run here (in a clean clone, by those of `xtask/test-times.tsv`), prints each binary's output
//! when it ends, runs every one even after a failure, and finishes with the doc-tests and a `cargo check` of the
//! CUDA build (`check_cuda`).
//!
//! The build compiles the workspace's own crates through `clippy-driver`, as `cargo clippy` does (it is rustc
//! with Clippy's lints registered; dependencies go through plain rustc), so the lints need no second pass over the
//! dependency graph: any warning in a workspace crate fails the run before a test starts, as `cargo clippy --
//! -D warnings` would. The doc-tests' cargo gets the same wrapper, so it reuses that build.
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Mutex;
use std::time::Instant;

/// One test binary to run: where cargo would run it, and what.
struct Binary {
    /// The package's directory (the working directory and `CARGO_MANIFEST_DIR`, as under `cargo test`).
    dir: PathBuf,
    /// The compiled test executable.
    exe: PathBuf,
    /// How cargo names it: `PACKAGE tests/NAME.rs` or `PACKAGE unittests`.
    label: String,
}

/// What one binary did.
struct Finished {
    label: String,
    exe: PathBuf,
    ok: bool,
    seconds: f64,
    output: Vec<u8>,
}

/// Builds and runs every test of the workspace (see the module documentation); 0 when all passed.
pub fn run(cargo: impl Fn() -> Command, root: &Path) -> ExitCode {
    let Some(clippy) = clippy_driver() else {
        eprintln!("error: clippy-driver not found next to cargo or rustc: install Clippy (`rustup component add clippy`)");
        return ExitCode::from(1);
    };
    // Every cargo of this run compiles the workspace's crates through Clippy, so that they share one build.
    let cargo = || {
        let mut c = cargo();
        c.env("RUSTC_WORKSPACE_WRAPPER", &clippy);
        c
    };
    let building = Instant::now();
    let binaries = match build(&cargo, root) {
        Ok(b) => b,
        Err(code) => return code,
    };
    eprintln!("cargo xtask ci: test targets built in {:.0} s", building.elapsed().as_secs_f64());
    let times_path = root.join("target/xtask-test-times.tsv");
    // A clean clone has no times of its own: the committed ones of an earlier run order it.
    let mut recorded = read_times(&root.join("xtask/test-times.tsv"));
    recorded.extend(read_times(&times_path));
    let mut order: Vec<Binary> = binaries;
    // Longest first (by the last recorded time; unknown ones first of all), so that no long binary starts last.
    order.sort_by(|a, b| {
        let ta = recorded.get(&a.label).copied().unwrap_or(f64::INFINITY);
        let tb = recorded.get(&b.label).copied().unwrap_or(f64::INFINITY);
        tb.total_cmp(&ta)
    });
    let workers = workers();
    eprintln!("cargo xtask ci: running {} test binaries, {workers} at a time", order.len());
    let started = Instant::now();
    let queue = Mutex::new(order.into_iter());
    let done: Mutex<Vec<Finished>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).next();
                    let Some(b) = next else { break };
                    let f = run_one(&b);
                    report(&f);
                    done.lock().unwrap_or_else(|e| e.into_inner()).push(f);
                }
            });
        }
    });
    let done = done.into_inner().unwrap_or_else(|e| e.into_inner());
    write_times(&times_path, &done);
    let failed: Vec<&Finished> = done.iter().filter(|f| !f.ok).collect();
    eprintln!("cargo xtask ci: {} test binaries in {:.0} s, {} failed", done.len(), started.elapsed().as_secs_f64(), failed.len());
    let mut doc = cargo();
    doc.args(["test", "--workspace", "--doc"]);
    let doc_ok = matches!(doc.status(), Ok(s) if s.success());
    if !failed.is_empty() {
        eprintln!("cargo xtask ci: failed:");
        for f in &failed {
            eprintln!("    {} ({})", f.label, f.exe.display());
        }
    }
    if !doc_ok {
        eprintln!("cargo xtask ci: the doc-tests failed");
    }
    let cuda_ok = check_cuda(&cargo, root) == ExitCode::SUCCESS;
    if !cuda_ok {
        eprintln!("cargo xtask ci: the CUDA build does not compile cleanly");
    }
    if failed.is_empty() && doc_ok && cuda_ok { ExitCode::SUCCESS } else { ExitCode::from(101) }
}

/// How many binaries run at once: `XTASK_TEST_JOBS` when set, else one per core and at most one per 4 GiB of memory
/// (a training test holds up to about 2 GiB, and each uses more than one core in its larger kernels).
fn workers() -> usize {
    if let Some(n) = std::env::var("XTASK_TEST_JOBS").ok().and_then(|v| v.trim().parse::<usize>().ok()) {
        return n.max(1);
    }
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    // MemTotal of /proc/meminfo, in kB; unknown elsewhere.
    let memory_gib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<usize>().ok()? / (1024 * 1024))
    });
    cores.min(memory_gib.map_or(cores, |g| g / 4)).max(1)
}

/// Clippy's driver: beside the cargo running this (`CARGO`), else in rustc's sysroot.
fn clippy_driver() -> Option<PathBuf> {
    let name = format!("clippy-driver{}", std::env::consts::EXE_SUFFIX);
    let beside_cargo = std::env::var_os("CARGO").map(|c| Path::new(&c).with_file_name(&name));
    let sysroot = Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| Path::new(String::from_utf8_lossy(&o.stdout).trim()).join("bin").join(&name));
    beside_cargo.into_iter().chain(sysroot).find(|p| p.is_file())
}

/// `cargo test --workspace --no-run` (the workspace's crates through Clippy), printing the compiler's messages and
/// reading the test executables from cargo's JSON messages; fails on any warning in a workspace crate. Cargo's timing
/// report of the build (which crate took how long, and how many ran at once) lands in `target/cargo-timings/`.
fn build(cargo: &impl Fn() -> Command, root: &Path) -> Result<Vec<Binary>, ExitCode> {
    let mut c = cargo();
    c.args(["test", "--workspace", "--no-run", "--timings"]);
    compile(c, root)
}

/// `cargo check` of every target of the workspace with the GPU features on (the CLI's `cuda-fusion`, which
/// includes `cuda`, and every crate's `test-cuda`), through Clippy like the test build: the CUDA code paths
/// compile, lint-free, on a machine without a GPU. The feature flags unify burn-cuda with autotune and its checks.
fn check_cuda(cargo: &impl Fn() -> Command, root: &Path) -> ExitCode {
    let started = Instant::now();
    let mut features = vec!["vesalius/cuda-fusion".to_string()];
    features.extend(crate::GPU_TEST_CRATES.iter().map(|k| format!("{k}/test-cuda")));
    let mut c = cargo();
    c.args(["check", "--workspace", "--all-targets", "--features", &features.join(",")]);
    let code = match compile(c, root) {
        Ok(_) => ExitCode::SUCCESS,
        Err(code) => code,
    };
    eprintln!("cargo xtask ci: the CUDA build checked in {:.0} s", started.elapsed().as_secs_f64());
    code
}

/// Runs a cargo build command with JSON messages, printing the compiler's messages, and returns the test
/// executables it reports; fails on any warning in a workspace crate.
fn compile(mut c: Command, root: &Path) -> Result<Vec<Binary>, ExitCode> {
    c.arg("--message-format=json").stdout(Stdio::piped()).stderr(Stdio::inherit());
    let out = match c.output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("error: cannot run cargo: {e}");
            return Err(ExitCode::from(1));
        }
    };
    // The workspace's own crates: those under its root, the vendored dependencies aside.
    let ours = |manifest: &str| Path::new(manifest).starts_with(root) && !Path::new(manifest).starts_with(root.join("vendor"));
    let mut warnings = 0usize;
    let mut binaries = Vec::new();
    for line in out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(m) = serde_json::from_slice::<serde_json::Value>(line) else { continue };
        if m["reason"] == "compiler-message" {
            eprint!("{}", m["message"]["rendered"].as_str().unwrap_or_default());
            if m["message"]["level"] == "warning" && m["manifest_path"].as_str().is_some_and(ours) {
                warnings += 1;
            }
            continue;
        }
        if m["reason"] != "compiler-artifact" || m["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest)) = (m["executable"].as_str(), m["manifest_path"].as_str()) else { continue };
        let dir = Path::new(manifest).parent().map(Path::to_path_buf).unwrap_or_default();
        let package = dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let kind = m["target"]["kind"][0].as_str().unwrap_or("");
        let label = match kind {
            "test" => format!("{package} tests/{}.rs", m["target"]["name"].as_str().unwrap_or("?")),
            "bin" => format!("{package} unittests {}", m["target"]["name"].as_str().unwrap_or("?")),
            _ => format!("{package} unittests"),
        };
        binaries.push(Binary { dir, exe: PathBuf::from(exe), label });
    }
    if !out.status.success() {
        return Err(ExitCode::from(out.status.code().unwrap_or(1).clamp(1, 255) as u8));
    }
    if warnings > 0 {
        eprintln!(
            "cargo xtask ci: {warnings} warning messages from the workspace's crates (lints and warnings fail CI, as `cargo clippy -- -D warnings`)"
        );
        return Err(ExitCode::from(1));
    }
    Ok(binaries)
}

/// Runs one test binary the way `cargo test` would, capturing what it prints.
fn run_one(b: &Binary) -> Finished {
    let start = Instant::now();
    let out = Command::new(&b.exe).current_dir(&b.dir).env("CARGO_MANIFEST_DIR", &b.dir).stdin(Stdio::null()).output();
    let seconds = start.elapsed().as_secs_f64();
    match out {
        Ok(o) => {
            let mut output = o.stdout;
            output.extend_from_slice(&o.stderr);
            Finished { label: b.label.clone(), exe: b.exe.clone(), ok: o.status.success(), seconds, output }
        }
        Err(e) => Finished {
            label: b.label.clone(),
            exe: b.exe.clone(),
            ok: false,
            seconds,
            output: format!("cannot run {}: {e}\n", b.exe.display()).into_bytes(),
        },
    }
}

/// Prints a finished binary: its output in full when it failed, its summary line otherwise.
fn report(f: &Finished) {
    let text = String::from_utf8_lossy(&f.output);
    let mut err = std::io::stderr().lock();
    use std::io::Write;
    let _ = writeln!(err, "     Ran {} ({}) in {:.1} s", f.label, f.exe.display(), f.seconds);
    if f.ok {
        for line in text.lines().filter(|l| l.starts_with("test result:")) {
            let _ = writeln!(err, "{line}");
        }
    } else {
        let _ = writeln!(err, "{text}");
    }
}

/// The times of an earlier run, by label.
fn read_times(path: &Path) -> BTreeMap<String, f64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let (t, label) = l.split_once('\t')?;
            Some((label.to_string(), t.parse().ok()?))
        })
        .collect()
}

/// Records this run's times for the next run's order.
fn write_times(path: &Path, done: &[Finished]) {
    let text: String = done.iter().map(|f| format!("{:.2}\t{}\n", f.seconds, f.label)).collect();
    let tmp = path.with_extension("tsv.tmp");
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}
