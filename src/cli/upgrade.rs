//! `wasnap upgrade INSTANCE NEW.wasm [--dry-run]` and
//! `wasnap upgrade --all MODULE NEW.wasm [--dry-run]`

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use wasnap::executor::{Executor, Upgrade, UpgradeOptions, UpgradeReport, one_line};
use wasnap::runtime::{module_hash, short_hash};
use wasnap::snapshot::ModuleHash;
use wasnap::store::hex;

use super::session;

/// Move a suspended instance to new code. The new module is run from its
/// start through the instance's recorded history (replies, updates, clock
/// readings, random bytes); it must yield the same values at every step and
/// arrive at the call the instance waits in. Then the instance's head
/// becomes a new version on the new module; older versions stay on the old
/// one. Otherwise nothing changes and the first divergence is reported.
#[derive(Args, Debug)]
pub struct UpgradeCommand {
    /// The instance; with `--all`, the old module: a hash prefix as `ls`
    /// shows it, or the old module's file.
    target: String,
    /// The new module (`.wasm`, or `.wat` text).
    module: PathBuf,
    /// Check only: replay, report, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Every suspended instance of the old module, with a table of which
    /// can move (and, without --dry-run, moving those that can).
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    engine: session::EngineArgs,
}

impl UpgradeCommand {
    pub(super) fn execute(self, db: &Path) -> Result<()> {
        let wasm = super::read_module(&self.module)?;
        let executor = session::open_existing(db, &self.engine)?;
        let options = UpgradeOptions {
            dry_run: self.dry_run,
        };
        let new = short_hash(&module_hash(&wasm));
        if !self.all {
            let instance = self.target.parse().with_context(|| {
                format!(
                    "{:?} is not an instance (with --all, give the old module)",
                    self.target
                )
            })?;
            let report = executor.upgrade(instance, &wasm, options)?;
            return match &report.outcome {
                Upgrade::Diverged(divergence) => {
                    bail!("instance {instance} cannot move to module {new}: {divergence}")
                }
                _ => {
                    println!("instance {instance}: {}", result(&report));
                    Ok(())
                }
            };
        }
        let old = find_module(&executor, &self.target)?;
        let reports = executor.upgrade_all(&old, &wasm, options)?;
        println!("{:>8}  {:>4}  {:>5}  RESULT", "INSTANCE", "HEAD", "STEPS");
        let mut refused = 0;
        for (instance, report) in &reports {
            match report {
                Ok(report) => {
                    if matches!(report.outcome, Upgrade::Diverged(_)) {
                        refused += 1;
                    }
                    println!(
                        "{instance:>8}  {:>4}  {:>5}  {}",
                        report.head,
                        report.steps,
                        result(report)
                    );
                }
                Err(error) => {
                    refused += 1;
                    println!(
                        "{instance:>8}  {:>4}  {:>5}  cannot: {}",
                        "-",
                        "-",
                        one_line(error)
                    );
                }
            }
        }
        let verb = if self.dry_run { "can move" } else { "moved" };
        eprintln!(
            "wasnap: {} of {} suspended instances of module {} {verb} to module {new}",
            reports.len() - refused,
            reports.len(),
            short_hash(&old)
        );
        if refused > 0 {
            bail!(
                "{refused} instance{} cannot move",
                if refused == 1 { "" } else { "s" }
            );
        }
        Ok(())
    }
}

/// What came of one instance, in a few words.
fn result(report: &UpgradeReport) -> String {
    let steps = format!(
        "{} step{} replayed",
        report.steps,
        if report.steps == 1 { "" } else { "s" }
    );
    match &report.outcome {
        Upgrade::Moved { version } => format!(
            "moved to module {} at version {version} ({steps})",
            short_hash(&report.to)
        ),
        Upgrade::Possible => format!("can move ({steps})"),
        Upgrade::Diverged(divergence) => format!("diverges at {divergence}"),
    }
}

/// The stored module a hash prefix or a module file names.
fn find_module(executor: &Executor, given: &str) -> Result<ModuleHash> {
    let path = Path::new(given);
    if path.exists() {
        return Ok(module_hash(&super::read_module(path)?));
    }
    let prefix = given.to_ascii_lowercase();
    if prefix.len() < 4 || !prefix.chars().all(|c| c.is_ascii_hexdigit()) {
        bail!("{given:?} is neither a module file nor a module hash prefix (4 or more hex digits)");
    }
    let found: Vec<ModuleHash> = executor
        .database()
        .module_hashes()?
        .into_iter()
        .filter(|h| hex(h).starts_with(&prefix))
        .collect();
    match found.as_slice() {
        [one] => Ok(*one),
        [] => bail!("no stored module's hash starts with {prefix}"),
        _ => bail!(
            "{} stored modules' hashes start with {prefix}: give more digits",
            found.len()
        ),
    }
}
