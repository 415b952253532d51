//! What run, resume and restore share: the store, the engine with its
//! compiled-artifact cache, and driving a workflow to its next suspension
//! and committing the outcome as a version.

use std::io::Write as _;
use std::path::Path;

use anyhow::Result;

use crate::runtime::{Engine, Module, Step, Workflow};
use crate::snapshot::ModuleHash;
use crate::store::{Database, Lease, Outcome};

/// An open database and an engine.
pub(super) struct Session {
    pub store: Database,
    pub engine: Engine,
}

impl Session {
    /// Opens (or creates) the database.
    pub fn open(db: &Path) -> Result<Session> {
        Ok(Session {
            store: Database::open(db)?,
            engine: Engine::new()?,
        })
    }

    /// Opens an existing database.
    pub fn open_existing(db: &Path) -> Result<Session> {
        Ok(Session {
            store: super::open_existing(db)?,
            engine: Engine::new()?,
        })
    }

    /// Replaces the engine with one whose Wasm stack limit is `bytes`
    /// (`--max-wasm-stack`), when given.
    pub fn with_max_wasm_stack(mut self, bytes: Option<usize>) -> Result<Session> {
        if let Some(bytes) = bytes {
            self.engine = Engine::builder().max_wasm_stack(bytes).build()?;
        }
        Ok(self)
    }

    /// Loads a stored module, reusing its compiled artifact when this
    /// engine made one before, and keeping a new one for next time.
    pub fn module(&self, hash: &ModuleHash) -> Result<Module> {
        let wasm = self.store.module(hash)?;
        let fingerprint = self.engine.fingerprint();
        let artifact = self.store.compiled(hash, &fingerprint)?;
        let module = self.engine.load_with_artifact(&wasm, artifact.as_deref())?;
        if artifact.is_none() {
            self.store
                .put_compiled(hash, &fingerprint, &module.serialize()?)?;
        }
        Ok(module)
    }

    /// Runs the workflow to its next suspension or end, prints what it
    /// yielded, and commits the outcome as a child of `parent`.
    pub fn drive(
        &self,
        lease: &Lease,
        workflow: &mut Workflow,
        parent: Option<u32>,
        reply: &[u8],
    ) -> Result<()> {
        let instance = lease.instance();
        match workflow.run() {
            Ok(Step::Yielded(value)) => {
                let snapshot = workflow.snapshot()?;
                let version = self.store.commit_version(
                    lease,
                    parent,
                    &Outcome::Suspended(&snapshot),
                    reply,
                )?;
                print_value(&value)?;
                eprintln!("wasnap: instance {instance} suspended at version {version}");
            }
            Ok(Step::Finished(status)) => {
                let outcome = Outcome::Finished {
                    exit_status: Some(status),
                    result: &[],
                };
                let version = self.store.commit_version(lease, parent, &outcome, reply)?;
                let status = if status == 0 {
                    String::new()
                } else {
                    format!(" with exit status {status}")
                };
                std::io::stdout().flush()?;
                eprintln!("wasnap: instance {instance} finished{status} at version {version}");
            }
            Err(error) => {
                let message = super::one_line(&error);
                let outcome = Outcome::Failed { message: &message };
                let version = self.store.commit_version(lease, parent, &outcome, reply)?;
                std::io::stdout().flush()?;
                eprintln!("wasnap: instance {instance} failed at version {version}");
                return Err(error);
            }
        }
        Ok(())
    }
}

/// A yielded value as a line on stdout; an empty one prints nothing.
fn print_value(value: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    if !value.is_empty() {
        stdout.write_all(value)?;
        stdout.write_all(b"\n")?;
    }
    stdout.flush()?;
    Ok(())
}
