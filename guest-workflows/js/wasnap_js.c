/* QuickJS-ng as a wasnap guest: see wasnap_js.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasnap.h"
#include "wasnap_js.h"

/* QuickJS raises a RangeError when its C recursion comes this close to
 * the end of the linear-memory stack the module is linked with (4 MiB,
 * -Wl,-z,stack-size), instead of overrunning it. */
#define JS_STACK_BYTES (3 * 1024 * 1024)

/* wasnap.yield(value[, timeoutMs]): publishes the value, suspends, and
 * returns the reply as a string; with a timeout, a question with a
 * deadline that returns null when the deadline passes unanswered. */
static JSValue js_wasnap_yield(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val;
    int64_t timeout_ms = -1;
    if (argc > 1 && !JS_IsUndefined(argv[1]) && JS_ToInt64(ctx, &timeout_ms, argv[1]))
        return JS_EXCEPTION;
    size_t len;
    const char *text = JS_ToCStringLen(ctx, &len, argc > 0 ? argv[0] : JS_UNDEFINED);
    if (!text) return JS_EXCEPTION;
    /* Output still in stdio's buffer would be printed after the resume,
     * by another process, out of order. */
    fflush(stdout);
    int32_t n = timeout_ms >= 0 ? wasnap_raw_yield_timeout(text, (int32_t)len, timeout_ms)
                                : wasnap_raw_yield(text, (int32_t)len);
    JS_FreeCString(ctx, text);
    if (n < 0) return JS_NULL;
    if (n == 0) return JS_NewStringLen(ctx, "", 0);
    char *reply = malloc((size_t)n);
    if (!reply) return JS_ThrowOutOfMemory(ctx);
    int32_t got = wasnap_raw_reply(reply, n);
    JSValue result = JS_NewStringLen(ctx, reply, (size_t)(got > 0 ? got : 0));
    free(reply);
    return result;
}

/* wasnap.sleep(ms): a durable timer; the workflow suspends and continues
 * when it fires (wasnap serve fires it; `wasnap resume --now` early). */
static JSValue js_wasnap_sleep(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv) {
    (void)this_val;
    int64_t ms = 0;
    if (argc > 0 && JS_ToInt64(ctx, &ms, argv[0])) return JS_EXCEPTION;
    fflush(stdout);
    wasnap_raw_sleep(ms);
    return JS_UNDEFINED;
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

JSContext *wasnap_js_new_context(void) {
    JSRuntime *rt = JS_NewRuntime();
    if (!rt) return NULL;
    JS_SetMaxStackSize(rt, JS_STACK_BYTES);
    JSContext *ctx = JS_NewContext(rt);
    if (!ctx) JS_FreeRuntime(rt);
    return ctx;
}

void wasnap_js_define_globals(JSContext *ctx, int argc, char **args) {
    JSValue global = JS_GetGlobalObject(ctx);

    JSValue wasnap = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, wasnap, "yield", JS_NewCFunction(ctx, js_wasnap_yield, "yield", 2));
    JS_SetPropertyStr(ctx, wasnap, "sleep", JS_NewCFunction(ctx, js_wasnap_sleep, "sleep", 1));
    JS_SetPropertyStr(ctx, global, "wasnap", wasnap);

    JS_SetPropertyStr(ctx, global, "print", JS_NewCFunction(ctx, js_print, "print", 1));
    JSValue console = JS_NewObject(ctx);
    JS_SetPropertyStr(ctx, console, "log", JS_NewCFunction(ctx, js_print, "log", 1));
    JS_SetPropertyStr(ctx, global, "console", console);

    JSValue list = JS_NewArray(ctx);
    for (int i = 0; i < argc; i++)
        JS_SetPropertyUint32(ctx, list, (uint32_t)i, JS_NewString(ctx, args[i]));
    JS_SetPropertyStr(ctx, global, "scriptArgs", list);

    JS_FreeValue(ctx, global);
}

/* Prints the pending exception and its stack trace to stderr. */
static void report_exception(JSContext *ctx) {
    JSValue exception = JS_GetException(ctx);
    const char *message = JS_ToCString(ctx, exception);
    fprintf(stderr, "%s\n", message ? message : "(exception)");
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

int wasnap_js_run(JSContext *ctx, const char *source, size_t len, const char *name) {
    JSValue result = JS_Eval(ctx, source, len, name, JS_EVAL_TYPE_GLOBAL);
    int status = 0;
    if (JS_IsException(result)) {
        fflush(stdout);
        report_exception(ctx);
        status = 1;
    }
    JS_FreeValue(ctx, result);
    fflush(stdout);
    return status;
}

void wasnap_js_free(JSContext *ctx) {
    JSRuntime *rt = JS_GetRuntime(ctx);
    JS_FreeContext(ctx);
    JS_FreeRuntime(rt);
}
