/*
 * QuickJS-ng as a workflow guest: evaluates the script named by argv[1] (one
 * of the scripts compiled in, from benches/guests/interpreters/js/) with
 * these globals:
 *
 *   wasnap.yield(text) -> reply   publish text, suspend, return the reply
 *                                 ("" when there is none)
 *   print(...values), console.log(...values)
 *   scriptArgs                    the arguments after the script's name
 *
 * wasnap.yield is a C function called from interpreted code, so the
 * suspending import is reached through the interpreter's own dispatch and
 * function pointers, as any host call of a real interpreter is.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quickjs.h"
#include "wasnap.h"

#include "js_scripts.h" /* generated: const struct script scripts[] */

/* QuickJS raises a RangeError when its C recursion comes this close to
 * the end of the linear-memory stack the module is linked with (see
 * scripts/build-bench-guests), instead of overrunning it. */
#define JS_STACK_BYTES (3 * 1024 * 1024)

static JSValue js_wasnap_yield(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val, (void)argc;
    size_t len;
    const char *text = JS_ToCStringLen(ctx, &len, argv[0]);
    if (!text) return JS_EXCEPTION;
    fflush(stdout);
    int32_t n = wasnap_raw_yield(text, (int32_t)len);
    JS_FreeCString(ctx, text);
    if (n <= 0) return JS_NewStringLen(ctx, "", 0);
    char *reply = malloc((size_t)n);
    if (!reply) return JS_ThrowOutOfMemory(ctx);
    int32_t got = wasnap_raw_reply(reply, n);
    JSValue result = JS_NewStringLen(ctx, reply, (size_t)(got > 0 ? got : 0));
    free(reply);
    return result;
}

static JSValue js_print(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val;
    for (int i = 0; i < argc; i++) {
        const char *text = JS_ToCString(ctx, argv[i]);
        if (!text) return JS_EXCEPTION;
        printf(i ? " %s" : "%s", text);
        JS_FreeCString(ctx, text);
    }
    putchar('\n');
    return JS_UNDEFINED;
}

static void define_globals(JSContext *ctx, int argc, char **argv) {
    JSValue global = JS_GetGlobalObject(ctx);

    JSValue wasnap = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, wasnap, "yield", JS_NewCFunction(ctx, js_wasnap_yield, "yield", 1));
    JS_SetPropertyStr(ctx, global, "wasnap", wasnap);

    JS_SetPropertyStr(ctx, global, "print", JS_NewCFunction(ctx, js_print, "print", 1));
    JSValue console = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, console, "log", JS_NewCFunction(ctx, js_print, "log", 1));
    JS_SetPropertyStr(ctx, global, "console", console);

    JSValue args = JS_NewArray(ctx);
    for (int i = 2; i < argc; i++)
        JS_SetPropertyUint32(ctx, args, (uint32_t)(i - 2), JS_NewString(ctx, argv[i]));
    JS_SetPropertyStr(ctx, global, "scriptArgs", args);

    JS_FreeValue(ctx, global);
}

/* Prints the pending exception and its stack trace to stderr. */
static void report_exception(JSContext *ctx) {
    JSValue exception = JS_GetException(ctx);
    const char *message = JS_ToCString(ctx, exception);
    fprintf(stderr, "quickjs: %s\n", message ? message : "(exception)");
    JS_FreeCString(ctx, message);
    JSValue stack = JS_GetPropertyStr(ctx, exception, "stack");
    if (!JS_IsUndefined(stack)) {
        const char *trace = JS_ToCString(ctx, stack);
        if (trace) fprintf(stderr, "%s", trace);
        JS_FreeCString(ctx, trace);
    }
    JS_FreeValue(ctx, stack);
    JS_FreeValue(ctx, exception);
}

static const struct script *find_script(const char *name) {
    for (const struct script *s = scripts; s->name; s++)
        if (strcmp(s->name, name) == 0) return s;
    return NULL;
}

int main(int argc, char **argv) {
    const struct script *script = argc >= 2 ? find_script(argv[1]) : NULL;
    if (!script) {
        fprintf(stderr, "usage: quickjs.wasm SCRIPT [ARGS...], where SCRIPT is one of:");
        for (const struct script *s = scripts; s->name; s++) fprintf(stderr, " %s", s->name);
        fprintf(stderr, "\n");
        return 2;
    }
    JSRuntime *rt = JS_NewRuntime();
    if (!rt) return 1;
    JS_SetMaxStackSize(rt, JS_STACK_BYTES);
    JSContext *ctx = JS_NewContext(rt);
    if (!ctx) return 1;
    define_globals(ctx, argc, argv);

    JSValue result = JS_Eval(ctx, script->source, strlen(script->source), script->name,
                             JS_EVAL_TYPE_GLOBAL);
    int status = 0;
    if (JS_IsException(result)) {
        report_exception(ctx);
        status = 1;
    }
    JS_FreeValue(ctx, result);
    JS_FreeContext(ctx);
    JS_FreeRuntime(rt);
    fflush(stdout);
    return status;
}
