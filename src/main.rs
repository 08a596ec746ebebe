//! The `imgarc` binary: argument parsing, printing and exit codes (`cli`);
//! every operation it runs is in the `imgarc` library.
mod cli;

fn main() {
    std::process::exit(cli::run());
}
