/*
 * A real, sizeable C program as a workflow: SQLite (compiled in from its
 * amalgamation) runs a small analytics job on an in-memory database, and
 * its progress handler calls the suspending import every few thousand
 * virtual-machine steps, so that a workflow could be checkpointed in the
 * middle of a long query. The instrumentation benchmark runs it with a host
 * that never suspends.
 *
 * SQLite is built with SQLITE_OS_OTHER: the VFS below is all the operating
 * system it gets. The database lives in memory, so the VFS never opens a
 * file; it only supplies randomness, time and path names.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "sqlite3.h"

__attribute__((import_module("wasnap"), import_name("yield")))
int32_t wasnap_yield(const void *ptr, int32_t len);

/* ---- The VFS: no files, deterministic randomness and time. ---- */

static int vfs_open(sqlite3_vfs *vfs, const char *name, sqlite3_file *file, int flags, int *out) {
    (void)vfs, (void)name, (void)flags, (void)out;
    file->pMethods = 0;
    return SQLITE_CANTOPEN;
}

static int vfs_delete(sqlite3_vfs *vfs, const char *name, int sync) {
    (void)vfs, (void)name, (void)sync;
    return SQLITE_OK;
}

static int vfs_access(sqlite3_vfs *vfs, const char *name, int flags, int *out) {
    (void)vfs, (void)name, (void)flags;
    *out = 0;
    return SQLITE_OK;
}

static int vfs_full_pathname(sqlite3_vfs *vfs, const char *name, int n, char *out) {
    (void)vfs;
    sqlite3_snprintf(n, out, "%s", name);
    return SQLITE_OK;
}

static int vfs_randomness(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs;
    static uint32_t state = 2463534242u;
    for (int i = 0; i < n; i++) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        out[i] = (char)state;
    }
    return n;
}

static int vfs_sleep(sqlite3_vfs *vfs, int micros) {
    (void)vfs;
    return micros;
}

static int vfs_current_time(sqlite3_vfs *vfs, double *out) {
    (void)vfs;
    *out = 2461000.5; /* a fixed Julian day: the output must not depend on the clock */
    return SQLITE_OK;
}

static int vfs_current_time64(sqlite3_vfs *vfs, sqlite3_int64 *out) {
    (void)vfs;
    *out = (sqlite3_int64)2461000 * 86400000 + 43200000;
    return SQLITE_OK;
}

static int vfs_last_error(sqlite3_vfs *vfs, int n, char *out) {
    (void)vfs, (void)n, (void)out;
    return 0;
}

static sqlite3_vfs memory_only = {
    .iVersion = 2,
    .szOsFile = sizeof(sqlite3_file),
    .mxPathname = 256,
    .zName = "memory-only",
    .xOpen = vfs_open,
    .xDelete = vfs_delete,
    .xAccess = vfs_access,
    .xFullPathname = vfs_full_pathname,
    .xRandomness = vfs_randomness,
    .xSleep = vfs_sleep,
    .xCurrentTime = vfs_current_time,
    .xGetLastError = vfs_last_error,
    .xCurrentTimeInt64 = vfs_current_time64,
};

int sqlite3_os_init(void) { return sqlite3_vfs_register(&memory_only, 1); }
int sqlite3_os_end(void) { return SQLITE_OK; }

/* ---- The workflow ---- */

static uint32_t progress_calls;

/* Called every PROGRESS_STEPS virtual-machine steps: a suspension point. */
static int checkpoint(void *arg) {
    (void)arg;
    progress_calls++;
    /* A reply (never sent here) would interrupt the query. */
    return wasnap_yield(&progress_calls, 0) > 0;
}

#define PROGRESS_STEPS 2000

static void check(sqlite3 *db, int rc, const char *what) {
    if (rc != SQLITE_OK && rc != SQLITE_DONE && rc != SQLITE_ROW) {
        printf("error in %s: %s\n", what, sqlite3_errmsg(db));
        fflush(stdout);
        __builtin_trap();
    }
}

static void exec(sqlite3 *db, const char *sql) {
    check(db, sqlite3_exec(db, sql, 0, 0, 0), sql);
}

/* Prints every row of a query, and folds it into the checksum. */
static uint64_t checksum = 1469598103934665603ull;

static void query(sqlite3 *db, const char *sql) {
    sqlite3_stmt *stmt;
    check(db, sqlite3_prepare_v2(db, sql, -1, &stmt, 0), sql);
    int rows = 0, rc;
    while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
        for (int i = 0; i < sqlite3_column_count(stmt); i++) {
            const unsigned char *text = sqlite3_column_text(stmt, i);
            for (; text && *text; text++)
                checksum = (checksum ^ *text) * 1099511628211ull;
        }
        rows++;
    }
    check(db, rc, sql);
    sqlite3_finalize(stmt);
    printf("%d rows, checksum %016llx: %.60s\n", rows, (unsigned long long)checksum, sql);
}

int main(void) {
    sqlite3 *db;
    check(0, sqlite3_open(":memory:", &db), "open");
    sqlite3_progress_handler(db, PROGRESS_STEPS, checkpoint, 0);
    exec(db, "CREATE TABLE customers(id INTEGER PRIMARY KEY, name TEXT, region TEXT, since INTEGER)");
    exec(db, "CREATE TABLE orders(id INTEGER PRIMARY KEY, customer INTEGER, amount REAL, item TEXT, day INTEGER)");
    exec(db,
         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 3000) "
         "INSERT INTO customers SELECT i, 'customer-' || i || '-' || hex(i * 2654435761 % 65536), "
         "CASE i % 5 WHEN 0 THEN 'north' WHEN 1 THEN 'south' WHEN 2 THEN 'east' WHEN 3 THEN 'west' ELSE 'centre' END, "
         "2000 + i % 25 FROM n");
    exec(db,
         "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 40000) "
         "INSERT INTO orders SELECT i, 1 + (i * 7919) % 3000, ((i * 104729) % 100000) / 100.0, "
         "'item-' || ((i * 31) % 997), (i * 13) % 365 FROM n");
    exec(db, "CREATE INDEX orders_by_customer ON orders(customer)");
    exec(db, "CREATE INDEX orders_by_item ON orders(item, day)");
    query(db, "SELECT region, count(*), round(sum(amount), 2), round(avg(amount), 2) FROM orders "
              "JOIN customers ON customers.id = orders.customer GROUP BY region ORDER BY region");
    query(db, "SELECT name, round(sum(amount), 2) AS total FROM orders JOIN customers ON customers.id = customer "
              "GROUP BY customer ORDER BY total DESC, name LIMIT 20");
    query(db, "SELECT item, count(*), min(day), max(day) FROM orders WHERE item LIKE 'item-1%' "
              "GROUP BY item ORDER BY count(*) DESC, item LIMIT 25");
    query(db, "SELECT day / 30 AS month, count(DISTINCT customer), round(total(amount), 2) FROM orders "
              "GROUP BY month ORDER BY month");
    query(db, "SELECT c.region, o.item, count(*) FROM orders o JOIN customers c ON c.id = o.customer "
              "WHERE o.amount > 500 AND c.since BETWEEN 2005 AND 2015 GROUP BY 1, 2 HAVING count(*) > 3 "
              "ORDER BY 3 DESC, 1, 2 LIMIT 30");
    exec(db, "UPDATE orders SET amount = amount * 1.1 WHERE day % 7 = 0");
    exec(db, "DELETE FROM orders WHERE amount < 50");
    query(db, "SELECT count(*), round(sum(amount), 2), group_concat(DISTINCT substr(item, 1, 6)) FROM orders");
    query(db, "SELECT upper(substr(name, 1, 12)), length(name), instr(name, '-') FROM customers "
              "ORDER BY name DESC LIMIT 50");
    sqlite3_close(db);
    printf("progress calls %u\n", progress_calls);
    return 0;
}
