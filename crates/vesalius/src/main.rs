//! `vesalius`: deep learning for medical imaging.
use clap::Parser;

fn main() {
    // Before any thread starts: freed buffers stay mapped in one heap for the next step instead of going back to the
    // kernel and being faulted in and zeroed again (`vesalius-alloc`). Without glibc it does nothing.
    let _ = vesalius_alloc::keep_freed_memory_in_heap();
    let cli = vesalius::cli::Cli::parse();
    // The command runs on one of the compute pool's threads, as an OpenMP program's calling thread is one of its
    // team: the backend's parallel loops then split from a worker that takes its share, instead of being handed
    // across threads while the caller waits, and no extra thread competes with the pool's workers for the cores.
    // The workers get the main thread's stack size; their number is rayon's (RAYON_NUM_THREADS, else one per core).
    // No command waits on threads of its own that run the backend's loops (a search's trials are child processes;
    // data-parallel replicas of one CPU run one after another), so one worker is enough where one is asked for. (The
    // pool is built here, before anything uses it; should that fail, the default pool serves the same way.)
    let _ = rayon::ThreadPoolBuilder::new().stack_size(8 << 20).build_global();
    if let Err(e) = rayon::scope(|_| vesalius::cli::run(cli)) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(e.exit_code());
    }
}
