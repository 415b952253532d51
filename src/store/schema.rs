//! The database schema and its migrations, for both backends.
//!
//! The schema version is SQLite's `PRAGMA user_version`, and the one row of
//! the table `wasnap_schema` in PostgreSQL. Migration `i` (0-based in
//! [`MIGRATIONS`]) takes a database from version `i` to `i + 1`; each runs in
//! its own transaction together with the version bump, so an interrupted
//! upgrade leaves the database at the version before it.
//!
//! PostgreSQL databases begin at [`POSTGRES_BASELINE`], the schema of
//! version 7 written whole (no PostgreSQL database is older); every
//! migration after it is written for both.

use anyhow::{Result, bail};

use super::sql::{Begin, Connection, Dialect, params};

/// The schema version this build writes, and the newest it can open.
pub const SCHEMA_VERSION: u32 = MIGRATIONS.len() as u32;

/// One step of the schema, in each dialect.
struct Migration {
    /// For SQLite.
    sqlite: &'static str,
    /// For PostgreSQL; `None` for the steps [`POSTGRES_BASELINE`] covers.
    postgres: Option<&'static str>,
}

/// Each entry migrates from its index to its index + 1.
const MIGRATIONS: &[Migration] = &[
    Migration {
        sqlite: V1,
        postgres: None,
    },
    Migration {
        sqlite: V2,
        postgres: None,
    },
    Migration {
        sqlite: V3,
        postgres: None,
    },
    Migration {
        sqlite: V4,
        postgres: None,
    },
    Migration {
        sqlite: V5,
        postgres: None,
    },
    Migration {
        sqlite: V6,
        postgres: None,
    },
    Migration {
        sqlite: V7,
        postgres: None,
    },
    Migration {
        sqlite: V8_SQLITE,
        postgres: Some(V8_POSTGRES),
    },
    Migration {
        sqlite: V9,
        postgres: Some(V9),
    },
    Migration {
        sqlite: V10,
        postgres: Some(V10),
    },
];

/// The first schema.
///
/// Notes on choices:
/// - `instances.id` is AUTOINCREMENT so that the id of a removed instance
///   is never handed out again (ids appear in logs and scripts).
/// - `versions.parent` is checked by the code that commits a version rather
///   than by a foreign key: a self-reference would need an extra index that
///   every commit pays for, only to speed up deletions.
/// - `version_pages.hash` has no foreign key and no index for the same
///   reason: a version's page references are written in the transaction
///   that makes sure the pages exist, and `gc` deletes only pages that no
///   reference names, inside one transaction.
/// - `pages` is a rowid table: its rows (compressed pages, up to 64 KiB)
///   are too large for a WITHOUT ROWID table to pay off.
const V1: &str = "
CREATE TABLE modules (
    hash    BLOB PRIMARY KEY CHECK (length(hash) = 32),
    bytes   BLOB NOT NULL,
    created INTEGER NOT NULL
);
CREATE TABLE compiled (
    module_hash BLOB NOT NULL REFERENCES modules(hash) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    bytes       BLOB NOT NULL,
    PRIMARY KEY (module_hash, fingerprint)
);
CREATE TABLE instances (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    module_hash BLOB NOT NULL REFERENCES modules(hash),
    state       TEXT NOT NULL
                CHECK (state IN ('created', 'suspended', 'finished', 'failed')),
    head        INTEGER,
    created     INTEGER NOT NULL,
    args        BLOB NOT NULL,
    lease_pid   INTEGER,
    lease_owner TEXT,
    lease_token INTEGER
);
CREATE TABLE versions (
    id           INTEGER PRIMARY KEY,
    instance     INTEGER NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    number       INTEGER NOT NULL CHECK (number > 0),
    parent       INTEGER,
    kind         TEXT NOT NULL CHECK (kind IN ('suspended', 'finished', 'failed')),
    value        BLOB NOT NULL,
    reply        BLOB NOT NULL,
    created      INTEGER NOT NULL,
    memory_bytes INTEGER NOT NULL,
    stored_bytes INTEGER NOT NULL,
    state        BLOB,
    exit_status  INTEGER,
    message      TEXT,
    UNIQUE (instance, number),
    CHECK ((kind = 'suspended') = (state IS NOT NULL))
);
CREATE TABLE pages (
    hash BLOB PRIMARY KEY CHECK (length(hash) = 32),
    data BLOB NOT NULL
);
CREATE TABLE version_pages (
    version    INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    memory     INTEGER NOT NULL,
    page_index INTEGER NOT NULL,
    hash       BLOB NOT NULL,
    PRIMARY KEY (version, memory, page_index)
) WITHOUT ROWID;
";

/// Versions refer to their pages by a small integer id instead of the
/// page's 32-byte hash.
///
/// Every version lists every non-zero page it holds, changed or not: with
/// the hash in each row, the list cost about 50 bytes a page a version,
/// 54 KB per version of a 64 MiB workflow, more than a third of what its
/// changed pages cost. An id row is about 17 bytes. Pages are still named
/// and found by their hash (unique), so storing a page twice stays
/// impossible. A reference to a page that is missing (a corrupt database)
/// fails the migration rather than vanish.
const V2: &str = "
CREATE TABLE pages_v2 (
    id   INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE CHECK (length(hash) = 32),
    data BLOB NOT NULL
);
INSERT INTO pages_v2 (hash, data) SELECT hash, data FROM pages;
CREATE TABLE version_pages_v2 (
    version    INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    memory     INTEGER NOT NULL,
    page_index INTEGER NOT NULL,
    page       INTEGER NOT NULL,
    PRIMARY KEY (version, memory, page_index)
) WITHOUT ROWID;
INSERT INTO version_pages_v2 (version, memory, page_index, page)
    SELECT vp.version, vp.memory, vp.page_index, p.id
    FROM version_pages vp LEFT JOIN pages_v2 p ON p.hash = vp.hash;
DROP TABLE version_pages;
DROP TABLE pages;
ALTER TABLE pages_v2 RENAME TO pages;
ALTER TABLE version_pages_v2 RENAME TO version_pages;
";

/// Instances keep the limits and grants they were started with (time and
/// memory limits, granted directories, environment), applied again at every
/// resume. Instances made before have none: an empty policy.
const V3: &str = "
ALTER TABLE instances ADD COLUMN policy BLOB NOT NULL DEFAULT x'';
";

/// A version's value and reply may be zstd-compressed (`value_zstd`,
/// `reply_zstd`), and its snapshot no longer repeats the yielded value
/// (see `store::values`). The rows of earlier versions keep both as they
/// were, uncompressed, and read as before.
const V4: &str = "
ALTER TABLE versions ADD COLUMN value_zstd INTEGER NOT NULL DEFAULT 0;
ALTER TABLE versions ADD COLUMN reply_zstd INTEGER NOT NULL DEFAULT 0;
";

/// A compiled artifact is kept with a MAC that authenticates it (see
/// `store::artifacts`). Artifacts cached before have none and could never
/// be used: they go.
const V5: &str = "
ALTER TABLE compiled ADD COLUMN mac BLOB;
DELETE FROM compiled;
";

/// A version's page list may be kept as the difference from its parent's.
///
/// With a row for every non-zero page of every version, the lists grew
/// with memory size: about 17 bytes a page a version, 70 KB per version of
/// a 256 MiB workflow however few pages it changed. Now `list_depth` says
/// how a version's rows are to be read: 0, they are its full list (every
/// version of the earlier schemas, and every first version); n > 0, they
/// are the changes from its parent's list (a `page` of `NULL` where a page
/// became all zeros), and the parent's depth is n - 1. `list_chain_rows`
/// counts the rows of the differences down to the last full list, which a
/// commit keeps at or under the length of a full list (see
/// `store::pages`). `version_pages.page` becomes nullable, which SQLite
/// only allows by copying the table.
const V6: &str = "
ALTER TABLE versions ADD COLUMN list_depth INTEGER NOT NULL DEFAULT 0;
ALTER TABLE versions ADD COLUMN list_chain_rows INTEGER NOT NULL DEFAULT 0;
CREATE TABLE version_pages_v6 (
    version    INTEGER NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    memory     INTEGER NOT NULL,
    page_index INTEGER NOT NULL,
    page       INTEGER,
    PRIMARY KEY (version, memory, page_index)
) WITHOUT ROWID;
INSERT INTO version_pages_v6 (version, memory, page_index, page)
    SELECT version, memory, page_index, page FROM version_pages;
DROP TABLE version_pages;
ALTER TABLE version_pages_v6 RENAME TO version_pages;
";

/// Versions say how they came to be and keep what a replay needs:
///
/// - `origin`: `run` (a start or a resume), `restore` (a snapshot file
///   loaded as a new instance), `update` (an update handler changed the
///   parent's state; `handler` names it, `reply` holds its argument and
///   `result` its result) or `upgrade` (the parent's state moved to new
///   code by replay);
/// - `inputs`: what the run or handler took from outside (clock readings,
///   random bytes, host function answers, patches), in order, in the
///   compact form of `runtime::journal::Inputs`; empty when it took
///   nothing, NULL when it was not recorded (versions made before);
/// - `module_hash`: the module the version runs, so that one instance's
///   versions can span modules after an upgrade; `instances.module_hash`
///   is the module of the head. Earlier versions get their instance's.
const V7: &str = "
ALTER TABLE versions ADD COLUMN origin TEXT NOT NULL DEFAULT 'run'
    CHECK (origin IN ('run', 'restore', 'update', 'upgrade'));
ALTER TABLE versions ADD COLUMN handler TEXT;
ALTER TABLE versions ADD COLUMN result BLOB;
ALTER TABLE versions ADD COLUMN inputs BLOB;
ALTER TABLE versions ADD COLUMN module_hash BLOB REFERENCES modules(hash);
UPDATE versions SET module_hash =
    (SELECT module_hash FROM instances WHERE instances.id = versions.instance);
";

/// Durable timers and the work a service claims.
///
/// - `versions.wake_at` / `versions.timer`: a suspension's timer, in
///   milliseconds since the Unix epoch: when a `sleep` wakes (`'sleep'`) or
///   a question asked with `yield_timeout` times out (`'deadline'`).
/// - `instances.wake_at`: the head version's timer, copied when the head
///   moves, so that due instances are found through an index.
/// - `instances.lease_expires`: leases may expire, by the database's
///   clock: a service's leases unless renewed, and on PostgreSQL every
///   lease, so that the leases of a holder on another machine, which no
///   pid check can see die, are taken over too. NULL: held while the
///   holder lives (SQLite).
/// - `requests`: at most one pending run per instance (its first run, a
///   reply to a version, or a wake-up), recorded before it runs so that
///   any server can claim it, and deleted in the transaction that commits
///   its outcome.
const V8_SQLITE: &str = "
ALTER TABLE versions ADD COLUMN wake_at INTEGER;
ALTER TABLE versions ADD COLUMN timer TEXT CHECK (timer IN ('sleep', 'deadline'));
ALTER TABLE instances ADD COLUMN wake_at INTEGER;
ALTER TABLE instances ADD COLUMN lease_expires INTEGER;
CREATE INDEX instances_by_wake_at ON instances (wake_at) WHERE wake_at IS NOT NULL;
CREATE TABLE requests (
    instance INTEGER PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    version  INTEGER,
    reply    BLOB NOT NULL,
    wake     INTEGER NOT NULL CHECK (wake IN (0, 1)),
    created  INTEGER NOT NULL
);
";

/// See [`V8_SQLITE`].
const V8_POSTGRES: &str = "
ALTER TABLE versions ADD COLUMN wake_at BIGINT;
ALTER TABLE versions ADD COLUMN timer TEXT CHECK (timer IN ('sleep', 'deadline'));
ALTER TABLE instances ADD COLUMN wake_at BIGINT;
ALTER TABLE instances ADD COLUMN lease_expires BIGINT;
CREATE INDEX instances_by_wake_at ON instances (wake_at) WHERE wake_at IS NOT NULL;
CREATE TABLE requests (
    instance BIGINT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
    version  BIGINT,
    reply    BYTEA NOT NULL,
    wake     BIGINT NOT NULL CHECK (wake IN (0, 1)),
    created  BIGINT NOT NULL
);
";

/// Version 9, for both backends:
/// - `versions.woken`: 1 when the run that made the version was continued
///   by its parent's timer firing (a sleep woke, a question with a deadline
///   timed out) rather than by a reply, so that a replay fires it again:
///   an empty reply and a timeout differ. The origin stays `run`.
const V9: &str = "
ALTER TABLE versions ADD COLUMN woken BIGINT NOT NULL DEFAULT 0 CHECK (woken IN (0, 1));
";

/// Finding a version's children (`versions.parent` holds the parent's
/// number): a request answering a version is refused when a child already
/// answered it, and without this index that check read every version of
/// the instance, so answering slowed down as an instance's history grew.
/// `number` is in the index so that the smallest child is read from it
/// (with only the first two columns, SQLite's planner preferred scanning
/// the `(instance, number)` index in order for `min(number)`).
const V10: &str = "
CREATE INDEX versions_by_parent ON versions (instance, parent, number);
";

/// The version [`POSTGRES_BASELINE`] brings a new PostgreSQL database to.
const POSTGRES_BASELINE_VERSION: u32 = 7;

/// The schema of version 7 for PostgreSQL, whole; the notes of [`V1`] and
/// [`V4`] to [`V7`] apply. Integers are `BIGINT` (SQLite's integers are 64 bits), byte
/// strings `BYTEA`; instance ids come from an identity column that never
/// hands out an id again, and accepts given ids (`wasnap migrate` keeps
/// them). Pages are stored already compressed, so PostgreSQL is told not
/// to compress them again.
const POSTGRES_BASELINE: &str = "
CREATE TABLE modules (
    hash    BYTEA PRIMARY KEY CHECK (length(hash) = 32),
    bytes   BYTEA NOT NULL,
    created BIGINT NOT NULL
);
CREATE TABLE compiled (
    module_hash BYTEA NOT NULL REFERENCES modules(hash) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    bytes       BYTEA NOT NULL,
    mac         BYTEA,
    PRIMARY KEY (module_hash, fingerprint)
);
CREATE TABLE instances (
    id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    module_hash BYTEA NOT NULL REFERENCES modules(hash),
    state       TEXT NOT NULL
                CHECK (state IN ('created', 'suspended', 'finished', 'failed')),
    head        BIGINT,
    created     BIGINT NOT NULL,
    args        BYTEA NOT NULL,
    lease_pid   BIGINT,
    lease_owner TEXT,
    lease_token BIGINT,
    policy      BYTEA NOT NULL DEFAULT ''
);
CREATE TABLE versions (
    id           BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance     BIGINT NOT NULL REFERENCES instances(id) ON DELETE CASCADE,
    number       BIGINT NOT NULL CHECK (number > 0),
    parent       BIGINT,
    kind         TEXT NOT NULL CHECK (kind IN ('suspended', 'finished', 'failed')),
    value        BYTEA NOT NULL,
    value_zstd   BIGINT NOT NULL DEFAULT 0,
    reply        BYTEA NOT NULL,
    reply_zstd   BIGINT NOT NULL DEFAULT 0,
    created      BIGINT NOT NULL,
    memory_bytes BIGINT NOT NULL,
    stored_bytes BIGINT NOT NULL,
    state        BYTEA,
    exit_status  BIGINT,
    message      TEXT,
    list_depth      BIGINT NOT NULL DEFAULT 0,
    list_chain_rows BIGINT NOT NULL DEFAULT 0,
    origin       TEXT NOT NULL DEFAULT 'run'
                 CHECK (origin IN ('run', 'restore', 'update', 'upgrade')),
    handler      TEXT,
    result       BYTEA,
    inputs       BYTEA,
    module_hash  BYTEA REFERENCES modules(hash),
    UNIQUE (instance, number),
    CHECK ((kind = 'suspended') = (state IS NOT NULL))
);
CREATE TABLE pages (
    id   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    hash BYTEA NOT NULL UNIQUE CHECK (length(hash) = 32),
    data BYTEA NOT NULL
);
ALTER TABLE pages ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE TABLE version_pages (
    version    BIGINT NOT NULL REFERENCES versions(id) ON DELETE CASCADE,
    memory     BIGINT NOT NULL,
    page_index BIGINT NOT NULL,
    page       BIGINT,
    PRIMARY KEY (version, memory, page_index)
);
";

/// Serialises migrations of one PostgreSQL database (an advisory lock's
/// key: "wasnap" and 1).
const MIGRATION_LOCK: i64 = 0x7761_736e_6170_0001;

/// Reads the schema version; this is also the first read of the
/// database, so it is where a file that is not SQLite shows itself.
pub(super) fn version(conn: &mut dyn Connection) -> Result<u32> {
    match conn.dialect() {
        Dialect::Sqlite => conn.query_value("PRAGMA user_version", &[]),
        Dialect::Postgres => {
            let table: Option<String> =
                conn.query_value("SELECT CAST(to_regclass('wasnap_schema') AS TEXT)", &[])?;
            if table.is_none() {
                return Ok(0);
            }
            let found: Option<u32> =
                conn.query_value("SELECT max(version) FROM wasnap_schema", &[])?;
            Ok(found.unwrap_or(0))
        }
    }
}

fn set_version(conn: &mut dyn Connection, version: u32) -> Result<()> {
    match conn.dialect() {
        Dialect::Sqlite => conn.batch(&format!("PRAGMA user_version = {version}")),
        Dialect::Postgres => {
            conn.execute("DELETE FROM wasnap_schema", &[])?;
            conn.execute(
                "INSERT INTO wasnap_schema (version) VALUES (?1)",
                params![version],
            )?;
            Ok(())
        }
    }
}

/// The error for a database written by a newer wasnap.
pub(super) fn check_not_newer(found: u32) -> Result<()> {
    if found > SCHEMA_VERSION {
        bail!(
            "database schema version {found} is newer than this wasnap supports ({SCHEMA_VERSION})"
        );
    }
    Ok(())
}

/// Brings the schema up to [`SCHEMA_VERSION`], one migration per
/// transaction.
pub(super) fn migrate(conn: &mut dyn Connection) -> Result<()> {
    loop {
        let mut tx = conn.transaction(Begin::Write)?;
        let dialect = tx.dialect();
        if dialect == Dialect::Postgres {
            tx.execute("SELECT pg_advisory_xact_lock(?1)", params![MIGRATION_LOCK])?;
            tx.batch("CREATE TABLE IF NOT EXISTS wasnap_schema (version BIGINT NOT NULL)")?;
        }
        // Read again under the write lock: another process may have
        // migrated since we looked.
        let current = version(&mut *tx)?;
        check_not_newer(current)?;
        if current == SCHEMA_VERSION {
            return Ok(());
        }
        let (sql, next) = match (dialect, &MIGRATIONS[current as usize]) {
            (Dialect::Sqlite, m) => (m.sqlite, current + 1),
            (
                Dialect::Postgres,
                Migration {
                    postgres: Some(sql),
                    ..
                },
            ) => (*sql, current + 1),
            (Dialect::Postgres, _) if current == 0 => {
                (POSTGRES_BASELINE, POSTGRES_BASELINE_VERSION)
            }
            (Dialect::Postgres, _) => {
                bail!("a PostgreSQL database cannot be at schema version {current}")
            }
        };
        tx.batch(sql)?;
        set_version(&mut *tx, next)?;
        tx.commit()?;
    }
}
