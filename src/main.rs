//! The `imgarc` binary: everything lives in the library; see `cli`.
fn main() {
    std::process::exit(imgarc::cli::run());
}
