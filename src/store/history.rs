//! How each version came to be, and what a replay of it needs: its origin
//! (a run, a restored file, an update, an upgrade), the update handler and
//! its result, the inputs the run took from outside, and its module.

use anyhow::{Result, bail};

use super::sql::params;
use super::{Database, InstanceId, values};
use crate::snapshot::ModuleHash;

/// How a version came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A run: an instance's start (no parent) or a resume of the parent.
    Run,
    /// A run continued by the parent's timer firing, not by a reply: a
    /// sleep woke, or a question with a deadline timed out.
    Wake,
    /// A snapshot file loaded as a new instance: there is no run before it.
    Restore,
    /// An update handler changed the parent's state; the version waits at
    /// the parent's pending call.
    Update,
    /// The parent's state moved to new code by replay; the version waits at
    /// the parent's pending call, on another module.
    Upgrade,
}

impl Origin {
    /// How the origin is stored: the `origin` column (a wake is a run)
    /// and the `woken` flag.
    pub(super) fn stored(self) -> (&'static str, bool) {
        match self {
            Origin::Wake => ("run", true),
            origin => (origin.as_str(), false),
        }
    }

    /// Reads a stored origin back ([`Origin::stored`]).
    pub(super) fn from_stored(origin: &str, woken: i64) -> Result<Self> {
        match (Origin::parse(origin)?, woken) {
            (Origin::Run, 1) => Ok(Origin::Wake),
            (origin, 0) => Ok(origin),
            (origin, _) => bail!(
                "version origin {:?} marked woken in the database",
                origin.as_str()
            ),
        }
    }

    /// The name used in listings (and, but for `wake`, in the database).
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Run => "run",
            Origin::Wake => "wake",
            Origin::Restore => "restore",
            Origin::Update => "update",
            Origin::Upgrade => "upgrade",
        }
    }

    pub(super) fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "run" => Origin::Run,
            "restore" => Origin::Restore,
            "update" => Origin::Update,
            "upgrade" => Origin::Upgrade,
            other => bail!("unknown version origin {other:?} in the database"),
        })
    }
}

/// What a commit says about how its version came to be.
#[derive(Clone, Copy, Debug)]
pub struct Provenance<'a> {
    /// How it came to be.
    pub origin: Origin,
    /// The update handler's name (updates only).
    pub handler: Option<&'a str>,
    /// The update handler's result (updates only).
    pub result: Option<&'a [u8]>,
    /// The encoded inputs the run or handler took
    /// ([`Inputs::encode`](crate::runtime::journal::Inputs::encode));
    /// `None` when they were not recorded.
    pub inputs: Option<&'a [u8]>,
}

impl Provenance<'_> {
    /// A run whose inputs were not recorded.
    pub const UNRECORDED_RUN: Provenance<'static> = Provenance {
        origin: Origin::Run,
        handler: None,
        result: None,
        inputs: None,
    };
}

/// One version as a replay needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    /// The version's number.
    pub number: u32,
    /// How it came to be.
    pub origin: Origin,
    /// Its update handler, for an update.
    pub handler: Option<String>,
    /// The reply it was resumed with, or the update's argument.
    pub reply: Vec<u8>,
    /// The update's result.
    pub result: Vec<u8>,
    /// The value it yielded (for a suspension).
    pub value: Vec<u8>,
    /// The encoded inputs its run took; `None` when not recorded.
    pub inputs: Option<Vec<u8>>,
    /// The module it runs.
    pub module_hash: ModuleHash,
}

impl Database {
    /// The versions from the root of `instance`'s tree down to `version`,
    /// root first: the history a replay of `version` goes through.
    pub fn history(&self, instance: InstanceId, version: u32) -> Result<Vec<Step>> {
        self.with(|s| {
            let mut path = Vec::new();
            let mut next = Some(version);
            while let Some(number) = next {
                let row = s.conn.query_opt(
                    "SELECT number, parent, origin, handler, reply, length(reply), reply_zstd,
                            result, value, length(value), value_zstd, inputs, module_hash, woken
                     FROM versions WHERE instance = ?1 AND number = ?2",
                    params![instance, number],
                )?;
                let Some(mut r) = row else {
                    bail!("version {number} of instance {instance} not found");
                };
                if path.len() > u32::MAX as usize {
                    bail!("the version tree of instance {instance} has a cycle");
                }
                next = r.get(1)?;
                path.push(Step {
                    reply: values::read(&mut r, 4, None)?.0,
                    value: values::read(&mut r, 8, None)?.0,
                    number: r.get(0)?,
                    origin: Origin::from_stored(&r.get::<String>(2)?, r.get(13)?)?,
                    handler: r.get(3)?,
                    result: r.get::<Option<Vec<u8>>>(7)?.unwrap_or_default(),
                    inputs: r.get(11)?,
                    module_hash: r.get(12)?,
                });
            }
            path.reverse();
            Ok(path)
        })
    }

    /// The suspended instances whose head runs module `hash`, by id.
    pub fn suspended_instances_of(&self, hash: &ModuleHash) -> Result<Vec<InstanceId>> {
        self.with(|s| {
            s.conn
                .query(
                    "SELECT id FROM instances WHERE module_hash = ?1 AND state = 'suspended'
                     ORDER BY id",
                    params![hash],
                )?
                .into_iter()
                .map(|mut r| r.get(0))
                .collect()
        })
    }
}

impl Database {
    /// The hashes of every stored module.
    pub fn module_hashes(&self) -> Result<Vec<ModuleHash>> {
        self.with(|s| {
            s.conn
                .query("SELECT hash FROM modules ORDER BY created, hash", &[])?
                .into_iter()
                .map(|mut r| r.get(0))
                .collect()
        })
    }
}
