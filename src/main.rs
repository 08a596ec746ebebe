//! The `imgarc` binary: argument parsing, printing and exit codes (`cli`);
//! every operation it runs is in the `imgarc` library.
#![allow(clippy::print_stdout, clippy::print_stderr)] // only the binary prints
mod cli;

fn main() {
    std::process::exit(cli::run());
}
