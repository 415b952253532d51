//! The `wasnap` command line: one type per subcommand, each in its own
//! file; `main` only parses and executes.
//!
//! Yielded values go to stdout, one per line (an empty value prints
//! nothing), as does the guest's own stdout; what wasnap says about the run
//! goes to stderr. Errors are one line naming the cause, with exit status 1.

mod diff;
/// A line on stderr about the run. A closed stderr is no reason to fail,
/// nor to panic as `eprintln!` does.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

mod gc;
mod inspect;
mod instrument;
mod json;
mod log;
mod ls;
mod migrate;
mod query;
mod restore;
mod resume;
mod rm;
mod run;
mod serve;
mod session;
mod show;
mod snapshot;
mod update;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

use wasnap::store::{Database, InstanceId, Location};

/// wasnap: run WebAssembly workflows that suspend, survive the process, and
/// continue from any saved version.
#[derive(Parser, Debug)]
#[command(name = "wasnap", version, about, long_about = None)]
pub struct Cli {
    /// The database holding modules, instances and versions: a SQLite
    /// file, or a PostgreSQL URL (postgres://USER@HOST/DB).
    #[arg(long, global = true, env = "WASNAP_DB", default_value = "wasnap.db")]
    db: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    Run(run::Run),
    Resume(resume::Resume),
    Ls(ls::Ls),
    Log(log::Log),
    Inspect(inspect::Inspect),
    Snapshot(snapshot::SnapshotCommand),
    Restore(restore::Restore),
    Rm(rm::Rm),
    Gc(gc::Gc),
    Instrument(instrument::Instrument),
    Migrate(migrate::Migrate),
    Serve(serve::Serve),
    Query(query::Query),
    Update(update::Update),
    Diff(diff::Diff),
    Upgrade(upgrade::UpgradeCommand),
}

/// Parses the command line, runs the command, and reports an error as one
/// line on stderr.
pub fn main() -> ExitCode {
    make_room_on_the_stack();
    let cli = parse();
    match cli.execute() {
        Ok(()) => ExitCode::SUCCESS,
        // Whoever read the output stopped (`wasnap log 1 | head`): what is
        // left unprinted was not wanted.
        Err(error) if is_broken_pipe(&error) => ExitCode::SUCCESS,
        Err(error) => {
            use std::io::Write as _;
            let _ = std::io::stdout().flush();
            note!("wasnap: error: {}", wasnap::executor::one_line(&error));
            ExitCode::FAILURE
        }
    }
}

/// How far the main thread's stack may grow: a workflow's Wasm stack at
/// the default limit and the host's frames, with room to spare.
const MAIN_STACK: usize = 4 * wasnap::runtime::DEFAULT_MAX_WASM_STACK;

/// Lets the main thread's stack grow to [`MAIN_STACK`] (raising the soft
/// limit only, and only up to the hard one), so that a run takes place on
/// it instead of on a thread of its own, whose start costs more than a
/// short run does. Where the limit cannot be raised, runs take a thread
/// as before.
fn make_room_on_the_stack() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both calls only read or write `limit`.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_STACK, &mut limit) != 0 {
            return;
        }
        let wanted = (MAIN_STACK as libc::rlim_t).min(limit.rlim_max);
        if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= wanted {
            return;
        }
        limit.rlim_cur = wanted;
        libc::setrlimit(libc::RLIMIT_STACK, &limit);
    }
}

/// Parses the command line. `--version` also says which of the kernel's
/// ways to track and fill memory pages this process uses (probed only
/// then: it costs a few system calls).
fn parse() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let asks_version = std::env::args().any(|a| a == "--version" || a == "-V");
    let mut command = Cli::command();
    if asks_version {
        let version = format!(
            "{} ({})",
            env!("CARGO_PKG_VERSION"),
            wasnap::runtime::support()
        );
        // The process ends right after printing it.
        let version: &'static str = Box::leak(version.into_boxed_str());
        command = command.version(version);
    }
    let matches = command.get_matches();
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

impl Cli {
    fn execute(self) -> Result<()> {
        let db = self.db;
        match self.command {
            Command::Run(c) => c.execute(&db),
            Command::Resume(c) => c.execute(&db),
            Command::Ls(c) => c.execute(&db),
            Command::Log(c) => c.execute(&db),
            Command::Inspect(c) => c.execute(&db),
            Command::Snapshot(c) => c.execute(&db),
            Command::Restore(c) => c.execute(&db),
            Command::Rm(c) => c.execute(&db),
            Command::Gc(c) => c.execute(&db),
            Command::Instrument(c) => c.execute(),
            Command::Migrate(c) => c.execute(),
            Command::Serve(c) => c.execute(&db),
            Command::Query(c) => c.execute(&db),
            Command::Update(c) => c.execute(&db),
            Command::Diff(c) => c.execute(&db),
            Command::Upgrade(c) => c.execute(&db),
        }
    }
}

/// `INSTANCE` or `INSTANCE@VERSION`.
#[derive(Clone, Copy, Debug)]
struct Target {
    instance: InstanceId,
    version: Option<u32>,
}

impl std::str::FromStr for Target {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (instance, version) = match text.split_once('@') {
            Some((i, v)) => (i, Some(v)),
            None => (text, None),
        };
        let instance = instance
            .parse()
            .map_err(|_| format!("{text:?} is not INSTANCE or INSTANCE@VERSION (numbers)"))?;
        let version = version
            .map(|v| v.parse())
            .transpose()
            .map_err(|_| format!("{text:?} is not INSTANCE or INSTANCE@VERSION (numbers)"))?;
        Ok(Target { instance, version })
    }
}

impl Target {
    /// The version named, or the instance's head.
    fn version_in(&self, store: &Database) -> Result<u32> {
        if let Some(version) = self.version {
            return Ok(version);
        }
        let info = store.instance(self.instance)?;
        info.head
            .with_context(|| format!("instance {} has no version yet", self.instance))
    }
}

/// Opens an existing database for reading.
fn open_existing(db: &std::path::Path) -> Result<Database> {
    let location = Location::of_path(db);
    if let Location::Sqlite(path) = &location {
        require_file(path)?;
    }
    Database::open_at(location)
}

/// Fails unless a SQLite database exists at `path`.
fn require_file(path: &std::path::Path) -> Result<()> {
    if !path.exists() {
        bail!(
            "no database at {} (run a workflow first, or pass --db)",
            path.display()
        );
    }
    Ok(())
}

/// Reads a module file: binary Wasm, or WAT text for a `.wat` file.
fn read_module(path: &std::path::Path) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    if path.extension().is_some_and(|e| e == "wat") {
        return wat::parse_bytes(&bytes)
            .map(|b| b.into_owned())
            .with_context(|| format!("{} is not valid WAT", path.display()));
    }
    Ok(bytes)
}
