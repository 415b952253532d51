//! What run, resume and restore share: opening the executor, the limit and
//! grant flags, and reporting what a run committed.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use clap::Args;
use wasnap::Engine;
use wasnap::executor::{Ended, Executor, Report};
use wasnap::runtime::{Directory, Policy, Timer, utc_text};
use wasnap::store::Database;

/// Opens (or creates) the database with an engine as `engine` says.
pub(super) fn open(db: &Path, engine: &EngineArgs) -> Result<Executor> {
    Ok(Executor::new(engine.engine()?, Database::open(db)?))
}

/// Leaves `executor` to the end of the process, after a run whose version
/// is committed (and whose lease is released): the kernel takes back the
/// compiled code, the memories and the database connection (its locks and
/// files, as after a crash, which SQLite is built for) faster than their
/// destructors would give them back one by one.
pub(super) fn leave(executor: Executor) {
    std::mem::forget(executor);
}

/// Opens an existing database with an engine as `engine` says.
pub(super) fn open_existing(db: &Path, engine: &EngineArgs) -> Result<Executor> {
    Ok(Executor::new(engine.engine()?, super::open_existing(db)?))
}

/// How the engine that runs the workflow is set up; not stored with the
/// instance.
#[derive(Args, Debug, Default)]
pub(super) struct EngineArgs {
    /// The most native stack the workflow's Wasm code may use (8MiB by
    /// default); deeper recursion fails the run.
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_wasm_stack: Option<u64>,
}

impl EngineArgs {
    fn engine(&self) -> Result<Engine> {
        let mut builder = Engine::builder();
        if let Some(bytes) = self.max_wasm_stack {
            let bytes = usize::try_from(bytes).context("--max-wasm-stack is too large")?;
            builder = builder.max_wasm_stack(bytes);
        }
        builder.build()
    }
}

/// Limits and grants: stored with an instance when it starts, applied again
/// at every resume; given to `resume`, they override the stored ones for
/// that run.
#[derive(Args, Debug, Default)]
pub(super) struct PolicyArgs {
    /// Stop a run that takes longer (500ms, 2s, 5m); it is recorded as a
    /// failed version.
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    time_limit: Option<Duration>,
    /// Stop a run whose memory would grow past this (64MiB, 1GiB).
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    memory_limit: Option<u64>,
    /// Grant a host directory, seen by the workflow as GUEST_DIR (default:
    /// the same path). Repeatable.
    #[arg(long = "dir", value_name = "HOST_DIR[:GUEST_DIR]", value_parser = parse_directory)]
    directories: Vec<Directory>,
    /// Set an environment variable for the workflow. Repeatable.
    #[arg(long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    env: Vec<(String, String)>,
}

impl PolicyArgs {
    /// The policy the flags give.
    pub(super) fn policy(self) -> Policy {
        Policy {
            time_limit: self.time_limit,
            memory_limit: self.memory_limit,
            directories: self.directories,
            env: self.env,
        }
    }
}

/// `500ms`, `2s`, `5m`, `1h`.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit (ms, s, m, h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let millis = match unit {
        "ms" => Some(number),
        "s" => number.checked_mul(1_000),
        "m" => number.checked_mul(60_000),
        "h" => number.checked_mul(3_600_000),
        _ => return Err(format!("{text:?}: unknown unit {unit:?} (ms, s, m, h)")),
    };
    match millis {
        Some(0) => Err(format!("{text:?}: a time limit must be more than zero")),
        Some(millis) => Ok(Duration::from_millis(millis)),
        None => Err(format!("{text:?} is too long")),
    }
}

/// `65536`, `64KiB`, `64MiB`, `1GiB`.
fn parse_size(text: &str) -> Result<u64, String> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a whole number"))?;
    let scale: u64 = match unit {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?} (B, KiB, MiB, GiB)"
            ));
        }
    };
    number
        .checked_mul(scale)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `HOST_DIR[:GUEST_DIR]`; the host directory must exist.
fn parse_directory(text: &str) -> Result<Directory, String> {
    let (host, guest) = match text.split_once(':') {
        Some((host, guest)) => (host, guest.to_string()),
        None => (text, text.to_string()),
    };
    let host = PathBuf::from(host);
    if !host.is_dir() {
        return Err(format!("{} is not a directory", host.display()));
    }
    let host = host
        .canonicalize()
        .map_err(|e| format!("{}: {e}", host.display()))?;
    Ok(Directory { host, guest })
}

/// `KEY=VALUE`.
fn parse_env(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((key, value)) if !key.is_empty() => Ok((key.to_string(), value.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// Prints what a run committed: a yielded value on stdout, the instance's
/// state on stderr. A failed run is an error, after its version is named.
pub(super) fn report(report: &Report) -> Result<()> {
    let (instance, version) = (report.instance, report.version);
    std::io::stdout().flush()?;
    match &report.ended {
        Ended::Suspended { value } => {
            print_value(value)?;
            match report.timer {
                Some(Timer::Sleep { wake_at }) => note!(
                    "wasnap: instance {instance} sleeps at version {version} until {}",
                    utc_text(wake_at)
                ),
                Some(Timer::Deadline { wake_at }) => note!(
                    "wasnap: instance {instance} suspended at version {version}, waiting for a reply until {}",
                    utc_text(wake_at)
                ),
                None => note!("wasnap: instance {instance} suspended at version {version}"),
            }
        }
        Ended::Finished { exit_status } => {
            let status = match exit_status {
                0 => String::new(),
                status => format!(" with exit status {status}"),
            };
            note!("wasnap: instance {instance} finished{status} at version {version}");
        }
        Ended::Failed { message } => {
            note!("wasnap: instance {instance} failed at version {version}");
            bail!("{message}");
        }
    }
    Ok(())
}

/// A yielded value as a line on stdout; an empty one prints nothing.
pub(super) fn print_value(value: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if !value.is_empty() {
        stdout.write_all(value)?;
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}

/// The reply given as text or as a file's contents.
pub(super) fn reply(text: Option<String>, file: Option<&Path>) -> Result<Vec<u8>> {
    match (text, file) {
        (Some(text), _) => Ok(text.into_bytes()),
        (None, Some(path)) => {
            std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
        }
        (None, None) => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_sizes_parse_with_their_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("0s").unwrap_err().contains("more than zero"));
        assert!(parse_duration("3d").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1GB").unwrap_err().contains("unknown unit"));
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("=x").is_err());
    }
}
