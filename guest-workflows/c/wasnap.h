/*
 * wasnap.h — write wasnap workflows in C (header only).
 *
 * Build for WASI preview 1:  clang --target=wasm32-wasi -O2 my.c -o my.wasm
 *
 * The raw imports are the ABI of DESIGN.md ("Guest ABI"); the helpers below
 * add what every workflow needs: stdout is flushed before the workflow
 * suspends (the process may end at a yield, and bytes left in stdio's buffer
 * would be printed later by another process, out of order), replies come back
 * as NUL-terminated strings, and coroutines get a heap-allocated shadow stack
 * and a record of their parent, as greenlets have.
 *
 * The helpers keep their state in `static` variables: use this header from
 * one translation unit per module.
 */
#ifndef WASNAP_H
#define WASNAP_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#if !defined(__wasm32__)
#error "wasnap.h targets wasm32 (clang --target=wasm32-wasi)"
#endif

#define WASNAP_IMPORT(name) __attribute__((import_module("wasnap"), import_name(name)))

/* ---- The raw ABI: all i32, pointers are offsets into memory 0. ---- */

/* Publish [ptr, ptr+len) and suspend the workflow; returns the length of the
 * reply it is resumed with (0 when none). */
WASNAP_IMPORT("yield") int32_t wasnap_raw_yield(const void *ptr, int32_t len);
/* Copy up to cap bytes of the latest reply to ptr; returns the number copied. */
WASNAP_IMPORT("reply") int32_t wasnap_raw_reply(void *ptr, int32_t cap);
/* New coroutine running table0[func](arg) on [stack, stack+len); returns its id. */
WASNAP_IMPORT("spawn") int32_t wasnap_raw_spawn(int32_t func, int32_t arg, void *stack, int32_t len);
/* Run coroutine id (0 = main), handing it value; returns what we are resumed with. */
WASNAP_IMPORT("switch") int32_t wasnap_raw_switch(int32_t id, int32_t value);
/* Id of the running coroutine (0 = main). */
WASNAP_IMPORT("current") int32_t wasnap_current(void);
/* Suspend until ms milliseconds from now (a durable timer: a service wakes
 * the workflow then, even after a restart). */
WASNAP_IMPORT("sleep") void wasnap_raw_sleep(int64_t ms);
/* A question with a deadline: like yield, and if no reply arrives within ms
 * milliseconds the workflow is continued anyway and this returns -1. */
WASNAP_IMPORT("yield_timeout") int32_t wasnap_raw_yield_timeout(const void *ptr, int32_t len, int64_t ms);
/* In a query or update handler: the handler's result becomes [ptr, ptr+len). */
WASNAP_IMPORT("respond") void wasnap_raw_respond(const void *ptr, int32_t len);
/* In a handler exported as query_* or update_* (it answers any name):
 * copies up to cap bytes of the name asked for to ptr; returns its length. */
WASNAP_IMPORT("handler_name") int32_t wasnap_raw_handler_name(void *ptr, int32_t cap);
/* In a handler: end it with the error message [ptr, ptr+len); nothing it
 * changed is committed. It does not return. */
WASNAP_IMPORT("handler_fail") void wasnap_raw_handler_fail(const void *ptr, int32_t len);
/* 1 when the code should take the patch named [ptr, ptr+len) (see below). */
WASNAP_IMPORT("patched") int32_t wasnap_raw_patched(const void *ptr, int32_t len);

/* ---- Yielding ---- */

/* Yield len bytes; copy up to cap bytes of the reply into reply (which may be
 * NULL when cap is 0). Returns the full length of the reply. */
static inline size_t wasnap_yield(const void *data, size_t len, void *reply, size_t cap) {
    fflush(stdout);
    int32_t n = wasnap_raw_yield(data, (int32_t)len);
    if (n > 0 && cap > 0) wasnap_raw_reply(reply, (int32_t)cap);
    return (size_t)(n > 0 ? n : 0);
}

/* Yield a string; returns the reply as a malloc'd NUL-terminated string
 * (empty when there was none) that the caller frees. */
static inline char *wasnap_yield_str(const char *s) {
    fflush(stdout);
    int32_t n = wasnap_raw_yield(s, (int32_t)strlen(s));
    if (n < 0) n = 0;
    char *reply = malloc((size_t)n + 1);
    if (!reply) abort();
    int32_t got = n > 0 ? wasnap_raw_reply(reply, n) : 0;
    reply[got] = '\0';
    return reply;
}

/* A bare suspension (greenlet's root.switch()): yields nothing, ignores any reply. */
static inline void wasnap_suspend(void) {
    fflush(stdout);
    (void)wasnap_raw_yield(NULL, 0);
}

/* Sleep for ms milliseconds: the workflow is suspended meanwhile. */
static inline void wasnap_sleep(int64_t ms) {
    fflush(stdout);
    wasnap_raw_sleep(ms);
}

/* Yield a string and wait at most ms milliseconds for the reply: returns it
 * as a malloc'd NUL-terminated string that the caller frees, or NULL when
 * the deadline passed without one. */
static inline char *wasnap_yield_str_timeout(const char *s, int64_t ms) {
    fflush(stdout);
    int32_t n = wasnap_raw_yield_timeout(s, (int32_t)strlen(s), ms);
    if (n < 0) return NULL;
    char *reply = malloc((size_t)n + 1);
    if (!reply) abort();
    int32_t got = n > 0 ? wasnap_raw_reply(reply, n) : 0;
    reply[got] = '\0';
    return reply;
}

/* 1 when yielding s is answered with exactly `expected`. */
static inline int wasnap_ask(const char *s, const char *expected) {
    char *reply = wasnap_yield_str(s);
    int same = strcmp(reply, expected) == 0;
    free(reply);
    return same;
}

/* ---- Queries and updates ----
 *
 * A handler is an exported function of no arguments, run on the suspended
 * workflow's state (`wasnap query` / `wasnap update`): it reads its argument
 * with wasnap_arg() and answers with wasnap_respond(). It must not yield,
 * switch or spawn. The workflow's locals live in its suspended frames, not
 * in memory, so keep what handlers read or change in static variables:
 *
 *     static int machines = 3;
 *     WASNAP_QUERY(status) { wasnap_respond_str(status_text); }
 *     WASNAP_UPDATE(machines) { char *a = wasnap_arg(); machines = atoi(a); free(a); }
 */
#define WASNAP_QUERY(name) \
    __attribute__((export_name("query_" #name))) void wasnap_query_##name(void)
#define WASNAP_UPDATE(name) \
    __attribute__((export_name("update_" #name))) void wasnap_update_##name(void)

/* Handlers for any name, called when the module exports no handler of the
 * name asked for: an interpreter's, whose script registers its handlers at
 * run time. wasnap_handler_name() says which one was asked for. */
#define WASNAP_QUERY_ANY(fn) __attribute__((export_name("query_*"))) void fn(void)
#define WASNAP_UPDATE_ANY(fn) __attribute__((export_name("update_*"))) void fn(void)

/* The handler's argument as a malloc'd NUL-terminated string (the caller
 * frees it); empty when there is none. */
static inline char *wasnap_arg(void) {
    size_t cap = 64;
    for (;;) {
        char *arg = malloc(cap + 1);
        if (!arg) abort();
        int32_t got = wasnap_raw_reply(arg, (int32_t)cap);
        if (got < 0) got = 0;
        if ((size_t)got < cap) {
            arg[got] = '\0';
            return arg;
        }
        free(arg); /* it may be longer: ask again with more room */
        cap *= 4;
    }
}

/* In a handler for any name: the name asked for, as a malloc'd
 * NUL-terminated string (the caller frees it). */
static inline char *wasnap_handler_name(void) {
    int32_t len = wasnap_raw_handler_name(NULL, 0);
    if (len < 0) len = 0;
    char *name = malloc((size_t)len + 1);
    if (!name) abort();
    int32_t got = wasnap_raw_handler_name(name, len);
    name[got < 0 ? 0 : (got < len ? got : len)] = '\0';
    return name;
}

/* Ends the running handler with an error message; nothing it changed is
 * committed. */
__attribute__((noreturn)) static inline void wasnap_handler_fail(const char *message) {
    wasnap_raw_handler_fail(message, (int32_t)strlen(message));
    __builtin_trap();
}

/* The handler's result. */
static inline void wasnap_respond(const void *data, size_t len) {
    wasnap_raw_respond(data, (int32_t)len);
}

static inline void wasnap_respond_str(const char *s) {
    wasnap_raw_respond(s, (int32_t)strlen(s));
}

/* ---- Upgrades: telling replayed steps from new ones ----
 *
 * `wasnap upgrade` moves a waiting instance to new code by replaying its
 * recorded history on it. Code that changes what an already recorded step
 * did would not replay; write the change as
 *
 *     if (wasnap_patched("notify-on-start")) { new behaviour } else { old }
 *
 * wasnap_patched is 1 when running normally (and that is recorded), and
 * while replaying 1 only where the recorded run took the patch too: old
 * histories keep the old path, everything after them takes the new one. */
static inline int wasnap_patched(const char *id) {
    return wasnap_raw_patched(id, (int32_t)strlen(id)) != 0;
}

/* ---- Coroutines ---- */

typedef struct wasnap_coroutine {
    int32_t id;      /* given by the engine, > 0 */
    int32_t parent;  /* the coroutine that spawned it; it resumes when fn returns */
    int done;        /* fn has returned */
    void (*fn)(void *);
    void *data;
    void *stack;
    struct wasnap_coroutine *next;
} wasnap_coroutine;

static wasnap_coroutine *wasnap__coroutines;

/* Every coroutine starts here: spawn's func must be a table index of type
 * (i32) -> (), and its arg is the record above. */
static void wasnap__trampoline(int32_t arg) {
    wasnap_coroutine *co = (wasnap_coroutine *)(uintptr_t)arg;
    co->fn(co->data);
    co->done = 1;
    fflush(stdout); /* returning switches to the parent */
}

/* New coroutine that will run fn(data) on a fresh shadow stack of stack_size
 * bytes; it starts at the first wasnap_switch into it. */
static inline wasnap_coroutine *wasnap_spawn(void (*fn)(void *), void *data, size_t stack_size) {
    stack_size = (stack_size + 15) & ~(size_t)15; /* the stack top stays 16-aligned */
    wasnap_coroutine *co = calloc(1, sizeof *co);
    void *stack = aligned_alloc(16, stack_size);
    if (!co || !stack) abort();
    co->fn = fn;
    co->data = data;
    co->stack = stack;
    co->parent = wasnap_current();
    /* In wasm32 a function pointer is its index in table 0. */
    co->id = wasnap_raw_spawn((int32_t)(uintptr_t)&wasnap__trampoline,
                              (int32_t)(uintptr_t)co, stack, (int32_t)stack_size);
    co->next = wasnap__coroutines;
    wasnap__coroutines = co;
    return co;
}

/* Suspend the running coroutine and run coroutine id (0 = main). */
static inline int32_t wasnap_switch(int32_t id, int32_t value) {
    fflush(stdout);
    return wasnap_raw_switch(id, value);
}

/* The parent of the running coroutine (main, 0, for the main's own children);
 * -1 in main, which has none. */
static inline int32_t wasnap_parent(void) {
    int32_t me = wasnap_current();
    for (wasnap_coroutine *co = wasnap__coroutines; co; co = co->next)
        if (co->id == me) return co->parent;
    return -1;
}

/* greenlet.getcurrent().parent.switch(value) */
static inline int32_t wasnap_switch_parent(int32_t value) {
    int32_t parent = wasnap_parent();
    if (parent < 0) abort(); /* main has no parent */
    return wasnap_switch(parent, value);
}

/* Release a finished coroutine's record and stack. A coroutine that has not
 * finished still owns its stack: it is left alone and 0 is returned. */
static inline int wasnap_release(wasnap_coroutine *co) {
    if (!co->done) return 0;
    for (wasnap_coroutine **p = &wasnap__coroutines; *p; p = &(*p)->next)
        if (*p == co) { *p = co->next; break; }
    free(co->stack);
    free(co);
    return 1;
}

#endif /* WASNAP_H */
