//! The `imgarc` binary: everything lives in the library; see `cli`.
#![allow(clippy::print_stdout, clippy::print_stderr)] // only the binary prints
fn main() {
    std::process::exit(imgarc::cli::run());
}
