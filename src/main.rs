//! The `wasnap` command: a thin user of the library. `cli` parses the
//! command line into one type per subcommand and executes it.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
