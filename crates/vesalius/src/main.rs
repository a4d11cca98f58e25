//! `vesalius`: deep learning for medical imaging.
use clap::Parser;

fn main() {
    let cli = vesalius::cli::Cli::parse();
    if let Err(e) = vesalius::cli::run(cli) {
        let msg = e.to_string().replace('\n', " ");
        eprintln!("error: {msg}");
        std::process::exit(e.exit_code());
    }
}
