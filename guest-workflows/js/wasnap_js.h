/*
 * wasnap_js.h — QuickJS-ng as a wasnap guest: the globals every wasnap
 * JavaScript runtime gives its scripts, and running a script with them.
 *
 *   wasnap.yield(text) -> reply   publish text as this step's value, suspend
 *                                 the workflow, return the reply it is
 *                                 resumed with ("" when there is none)
 *   wasnap.yield(text, ms)        the same with a deadline: null when ms
 *                                 milliseconds pass without a reply
 *   wasnap.sleep(ms)              a durable timer
 *   wasnap.query(name, fn)        fn(arg) answers `wasnap query ID name`
 *   wasnap.update(name, fn)       fn(arg) answers `wasnap update ID name`
 *   print(...values), console.log(...values)
 *   scriptArgs                    the arguments after the script
 *
 * wasnap.yield is a C function called from interpreted code, so the
 * suspending import is reached through the interpreter's own dispatch and
 * function pointers: the whole interpreter, with the script's frames and
 * heap, is what a snapshot holds.
 *
 * Used by the product runtime (runtime.c beside this file) and by the
 * benchmark guest (benches/guests/interpreters/quickjs.c).
 */
#ifndef WASNAP_JS_H
#define WASNAP_JS_H

#include "quickjs.h"

/* A runtime and context whose C recursion is bounded below the module's
 * linear-memory stack (its size is given at link time, see the build
 * scripts), so that deep JavaScript recursion raises a RangeError instead
 * of overrunning it. NULL when out of memory. */
JSContext *wasnap_js_new_context(void);

/* Defines the globals above; `args` are the script's own arguments. */
void wasnap_js_define_globals(JSContext *ctx, int argc, char **args);

/* Runs the handler the script registered for the name the running query
 * (update = 0) or update (update = 1) handler was asked for: its argument
 * is the handler's, what it returns is the answer (a string as it is,
 * undefined or null as nothing, anything else as JSON), and an exception
 * it throws, or a name the script did not register, fails the handler
 * with its message. Called from the module's `query_*` / `update_*`
 * exports while the script is suspended. */
void wasnap_js_handle(JSContext *ctx, int update);

/* Evaluates `source` as a global script named `name`. On an uncaught
 * exception, prints it and its stack trace to stderr and returns 1; else
 * 0. Flushes stdout either way. */
int wasnap_js_run(JSContext *ctx, const char *source, size_t len, const char *name);

/* Frees the context and its runtime. */
void wasnap_js_free(JSContext *ctx);

#endif
