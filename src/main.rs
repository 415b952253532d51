//! The `wasnap` command; everything it does lives in the library.

fn main() -> std::process::ExitCode {
    wasnap::cli::main()
}
