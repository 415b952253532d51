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

/* The handlers the script registered, by name: query handlers in [0],
 * update handlers in [1]; objects without a prototype, so that no name
 * ("toString") finds a handler the script did not register. */
static JSValue handler_tables[2];

/* wasnap.query(name, fn) and wasnap.update(name, fn): registers fn as the
 * handler `name` (magic 0: query, 1: update); registering a name again
 * replaces its handler. Returns fn. */
static JSValue js_wasnap_register(JSContext *ctx, JSValueConst this_val, int argc, JSValueConst *argv,
                                  int magic) {
    (void)this_val;
    const char *kind = magic ? "update" : "query";
    if (argc < 2 || !JS_IsString(argv[0]) || !JS_IsFunction(ctx, argv[1]))
        return JS_ThrowTypeError(ctx, "wasnap.%s(name, fn): a name and a function", kind);
    const char *name = JS_ToCString(ctx, argv[0]);
    if (!name) return JS_EXCEPTION;
    int set = JS_SetPropertyStr(ctx, handler_tables[magic], name, JS_DupValue(ctx, argv[1]));
    JS_FreeCString(ctx, name);
    if (set < 0) return JS_EXCEPTION;
    return JS_DupValue(ctx, argv[1]);
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
    for (int update = 0; update <= 1; update++) {
        const char *kind = update ? "update" : "query";
        handler_tables[update] = JS_NewObjectProto(ctx, JS_NULL);
        JS_SetPropertyStr(ctx, wasnap, kind,
                          JS_NewCFunctionMagic(ctx, js_wasnap_register, kind, 2, JS_CFUNC_generic_magic, update));
    }
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

/* The text a handler's result (neither undefined nor null) is answered
 * with: a string is itself, anything else is its JSON. NULL (with an
 * exception pending) when it cannot be converted. */
static const char *result_text(JSContext *ctx, JSValueConst result, size_t *len) {
    if (JS_IsString(result)) return JS_ToCStringLen(ctx, len, result);
    JSValue json = JS_JSONStringify(ctx, result, JS_UNDEFINED, JS_UNDEFINED);
    if (JS_IsException(json)) return NULL;
    /* JSON has no text for a function or a symbol: their String(). */
    const char *text = JS_ToCStringLen(ctx, len, JS_IsUndefined(json) ? result : json);
    JS_FreeValue(ctx, json);
    return text;
}

/* The names registered in a handler table, ", "-separated, into buf. */
static void handler_names(JSContext *ctx, JSValueConst table, char *buf, size_t cap) {
    JSPropertyEnum *names;
    uint32_t count;
    buf[0] = '\0';
    if (JS_GetOwnPropertyNames(ctx, &names, &count, table, JS_GPN_STRING_MASK | JS_GPN_ENUM_ONLY) < 0)
        return;
    size_t used = 0;
    for (uint32_t i = 0; i < count && used < cap; i++) {
        const char *name = JS_AtomToCString(ctx, names[i].atom);
        if (!name) continue;
        used += (size_t)snprintf(buf + used, cap - used, "%s%s", i ? ", " : "", name);
        JS_FreeCString(ctx, name);
    }
    JS_FreePropertyEnum(ctx, names, count);
}

/* Fails the running handler with the pending exception's message. */
static void fail_with_exception(JSContext *ctx) {
    JSValue exception = JS_GetException(ctx);
    const char *message = JS_ToCString(ctx, exception);
    char text[1024];
    snprintf(text, sizeof text, "%s", message ? message : "(exception)");
    JS_FreeCString(ctx, message);
    JS_FreeValue(ctx, exception);
    wasnap_handler_fail(text);
}

void wasnap_js_handle(JSContext *ctx, int update) {
    const char *kind = update ? "update" : "query";
    char *name = wasnap_handler_name();
    JSValue handler = JS_GetPropertyStr(ctx, handler_tables[update], name);
    if (!JS_IsFunction(ctx, handler)) {
        char known[512], text[1024];
        handler_names(ctx, handler_tables[update], known, sizeof known);
        snprintf(text, sizeof text, "the script has no %s handler \"%s\" (%s%s)", kind, name,
                 known[0] ? "it has: " : "it registered none with wasnap.", known[0] ? known : kind);
        wasnap_handler_fail(text);
    }
    free(name);
    char *arg = wasnap_arg();
    JSValue argument = JS_NewString(ctx, arg);
    free(arg);
    JSValue result = JS_Call(ctx, handler, JS_UNDEFINED, 1, &argument);
    JS_FreeValue(ctx, argument);
    JS_FreeValue(ctx, handler);
    if (JS_IsException(result)) fail_with_exception(ctx);
    /* What the handler printed goes out with its answer. */
    fflush(stdout);
    if (JS_IsUndefined(result) || JS_IsNull(result)) {
        wasnap_respond("", 0);
        return;
    }
    size_t len;
    const char *text = result_text(ctx, result, &len);
    JS_FreeValue(ctx, result);
    if (!text) fail_with_exception(ctx);
    wasnap_respond(text, len);
    JS_FreeCString(ctx, text);
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
    for (int update = 0; update <= 1; update++) {
        JS_FreeValue(ctx, handler_tables[update]);
        handler_tables[update] = JS_UNDEFINED;
    }
    JSRuntime *rt = JS_GetRuntime(ctx);
    JS_FreeContext(ctx);
    JS_FreeRuntime(rt);
}
