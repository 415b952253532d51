//! Copying instances between databases, of either backend: how a SQLite
//! store moves to PostgreSQL (`wasnap migrate`), or back.
//!
//! An instance is copied whole, in one transaction of the target: its row
//! (same id, module, arguments, policy, creation time) and every version,
//! in order, with the same number, parent, reply, value and times, and
//! how each came to be (origin, update handler and result, recorded
//! inputs, the module it runs, every module stored along). Each
//! suspension is loaded from the source (which checks every page against
//! its name) and written as a commit would write it, so the target stores
//! its pages once, deduplicated against what it holds already. A run a
//! service was asked for and had not committed yet (a pending request) is
//! copied too, so that a server on the target runs it.

use anyhow::{Result, bail};

use super::history::Provenance;
use super::sql::{Begin, Dialect, params};
use super::versions::{self, NewVersion};
use super::{Database, InstanceId, Outcome, VersionKind, now_ms, pages, policy, work};
use crate::snapshot::ModuleHash;
use crate::snapshot::codec::Writer;

/// What [`Database::copy_from`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CopyReport {
    /// Instances copied.
    pub instances: u64,
    /// Their versions.
    pub versions: u64,
    /// Instances left alone because the target holds them already (copied
    /// by an earlier run).
    pub present: u64,
}

impl Database {
    /// Copies every instance of `source` into this database, with its
    /// version tree, keeping instance ids and version numbers. An instance
    /// the target holds already with the same module, creation time and
    /// number of versions is left alone (so an interrupted copy can be run
    /// again); any other instance with the same id is an error, before
    /// anything of it is written. Workers should be stopped first: what
    /// they commit meanwhile may be left out.
    pub fn copy_from(&self, source: &Database) -> Result<CopyReport> {
        if std::sync::Arc::ptr_eq(&self.shared, &source.shared)
            || self.location() == source.location()
        {
            bail!("cannot copy database {} into itself", self.location());
        }
        let mut report = CopyReport::default();
        for info in source.instances()? {
            match self.copy_instance(source, info.id)? {
                Some(versions) => {
                    report.instances += 1;
                    report.versions += versions;
                }
                None => report.present += 1,
            }
        }
        Ok(report)
    }

    /// Copies instance `id` of `source`; returns how many versions it has,
    /// or `None` when this database holds it already.
    fn copy_instance(&self, source: &Database, id: InstanceId) -> Result<Option<u64>> {
        let info = source.instance(id)?;
        let list = source.versions(id)?;
        // Every module its versions run (an upgrade moves to another); the
        // first version's is the one the instance started with.
        let mut modules = vec![info.module_hash];
        for v in &list {
            if !modules.contains(&v.module_hash) {
                modules.push(v.module_hash);
            }
        }
        let started = list.first().map_or(info.module_hash, |v| v.module_hash);
        let wasm: Vec<(ModuleHash, Vec<u8>)> = modules
            .iter()
            .map(|hash| Ok((*hash, source.module(hash)?)))
            .collect::<Result<_>>()?;
        let recorded = source.recorded(id)?;
        let pending = source.pending_request(id)?;
        let mut args = Writer::default();
        args.strings(&info.args)?;
        let policy = policy::encode(&info.policy)?;
        self.with(|s| {
            let dialect = s.conn.dialect();
            let mut tx = s.conn.transaction(Begin::Write)?;
            let existing = tx.query_opt(
                "SELECT module_hash, created, (SELECT count(*) FROM versions WHERE instance = ?1)
                 FROM instances WHERE id = ?1",
                params![id],
            )?;
            if let Some(mut row) = existing {
                let same = row.get::<[u8; 32]>(0)? == info.module_hash
                    && row.get::<u64>(1)? == info.created_ms
                    && row.get::<u64>(2)? == list.len() as u64;
                if same {
                    return Ok(None);
                }
                bail!(
                    "instance {id} exists in {} already, and differs from the one in {}",
                    s.name,
                    source.location()
                );
            }
            for (hash, bytes) in &wasm {
                tx.execute(
                    "INSERT INTO modules (hash, bytes, created) VALUES (?1, ?2, ?3)
                     ON CONFLICT (hash) DO NOTHING",
                    params![hash, bytes, now_ms()],
                )?;
            }
            tx.execute(
                "INSERT INTO instances (id, module_hash, state, created, args, policy)
                 VALUES (?1, ?2, 'created', ?3, ?4, ?5)",
                params![id, &started, info.created_ms, &args.buf, &policy],
            )?;
            if dialect == Dialect::Postgres {
                // Ids given explicitly leave the identity's sequence behind.
                tx.query(
                    "SELECT setval(pg_get_serial_sequence('instances', 'id'),
                                   (SELECT max(id) FROM instances))",
                    &[],
                )?;
            }
            // The list of the version last written, against which the next
            // one is planned; a branch reads its parent's list back first.
            let mut cache = pages::PageCache::default();
            for version in &list {
                let snapshot = match version.kind {
                    VersionKind::Suspended => Some(source.load_version(id, version.number)?),
                    _ => None,
                };
                let outcome = match (&snapshot, version.kind) {
                    (Some(s), _) => Outcome::Suspended(s),
                    (None, VersionKind::Finished) => Outcome::Finished {
                        exit_status: version.exit_status,
                        result: &version.value,
                    },
                    (None, _) => Outcome::Failed {
                        message: version.message.as_deref().unwrap_or_default(),
                    },
                };
                if let Some(parent) = version.parent
                    && !cache.holds(id, parent)
                {
                    let (list, shape) = pages::read_list(&mut *tx, id, parent)?;
                    cache.settle(id, parent, shape, &list, None);
                }
                let memories = match &outcome {
                    Outcome::Suspended(s) => &s.memories[..],
                    _ => &[],
                };
                let plan = pages::plan(memories, version.parent.map(|_| &cache))?;
                let (result, inputs) = recorded
                    .get(&version.number)
                    .map_or((None, None), |(r, i)| (r.as_deref(), i.as_deref()));
                let provenance = Provenance {
                    origin: version.origin,
                    handler: version.handler.as_deref(),
                    result,
                    inputs,
                };
                let new = NewVersion {
                    instance: id,
                    parent: version.parent,
                    outcome: &outcome,
                    reply: &version.reply,
                    provenance: &provenance,
                    timer: version.timer,
                    stamp: Some(version),
                };
                let written =
                    versions::write(&mut *tx, &mut s.compressor, &cache, &plan, &new, &|_| {})?;
                cache.commit(id, written.number, written.shape, &plan, &written.page_ids);
            }
            if let Some(request) = &pending {
                work::insert_request(&mut *tx, id, request, request.version)?;
            }
            tx.commit()?;
            Ok(Some(list.len() as u64))
        })
    }
}

impl Database {
    /// The update results and recorded inputs of every version of
    /// `instance`, by number: what a copy keeps besides what
    /// [`Database::versions`] lists.
    #[allow(clippy::type_complexity)]
    fn recorded(
        &self,
        instance: InstanceId,
    ) -> Result<std::collections::HashMap<u32, (Option<Vec<u8>>, Option<Vec<u8>>)>> {
        self.with(|s| {
            s.conn
                .query(
                    "SELECT number, result, inputs FROM versions WHERE instance = ?1",
                    params![instance],
                )?
                .into_iter()
                .map(|mut r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))
                .collect()
        })
    }
}
