//! `vesalius`: deep learning for medical imaging.
use clap::Parser;

fn main() {
    let cli = vesalius::cli::Cli::parse();
    // The command runs on one of the compute pool's threads, as an OpenMP program's calling thread is one of its
    // team: the backend's parallel loops then split from a worker that takes its share, instead of being handed
    // across threads while the caller waits, and no extra thread competes with the pool's workers for the cores.
    // The workers get the main thread's stack size, and there are at least two of them: the command's own worker may
    // wait on threads it started (a search's trials side by side), whose parallel loops the others then run. (The
    // pool is built here, before anything uses it; should that fail, the default pool serves the same way.)
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let _ = rayon::ThreadPoolBuilder::new().num_threads(threads.max(2)).stack_size(8 << 20).build_global();
    if let Err(e) = rayon::scope(|_| vesalius::cli::run(cli)) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(e.exit_code());
    }
}
