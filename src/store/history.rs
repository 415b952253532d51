//! How each version came to be, and what a replay of it needs: its origin
//! (a run, a restored file, an update, an upgrade), the update handler and
//! its result, the inputs the run took from outside.

use anyhow::{Result, bail};

/// How a version came to be.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// A run: an instance's start (no parent) or a resume of the parent.
    Run,
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
    /// The name used in the database and in listings.
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Run => "run",
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
