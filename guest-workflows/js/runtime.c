/*
 * The JavaScript runtime for wasnap workflows: QuickJS-ng, with the
 * globals of wasnap_js.h, running a script the user gives at run time.
 *
 *   js.wasm SCRIPT.js [ARGS...]              reads SCRIPT.js through WASI
 *                                            (it needs a granted directory)
 *   js.wasm --source NAME SOURCE [ARGS...]   runs SOURCE, named NAME in
 *                                            stack traces
 *
 * `wasnap run approval.js` uses the second form: the script's text is a
 * WASI argument of the instance's first run. Either way the script is read
 * before the first suspension; from then on it lives, compiled, in the
 * interpreter's heap, which every snapshot holds.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wasnap.h"
#include "wasnap_js.h"

/* The script's context, for its handlers: they run while it is suspended
 * inside wasnap_js_run. */
static JSContext *script;

/* Every query and update is served by the handlers the script registered
 * (wasnap.query / wasnap.update), so the module answers any name. */
WASNAP_QUERY_ANY(query_any) {
    if (!script) wasnap_handler_fail("the script has not started");
    wasnap_js_handle(script, 0);
}

WASNAP_UPDATE_ANY(update_any) {
    if (!script) wasnap_handler_fail("the script has not started");
    wasnap_js_handle(script, 1);
}

static int usage(void) {
    fprintf(stderr,
            "usage: js.wasm SCRIPT.js [ARGS...]\n"
            "       js.wasm --source NAME SOURCE [ARGS...]\n");
    return 2;
}

/* The contents of `path`, NUL-terminated, in a malloc'd buffer; NULL (with
 * the cause on stderr) when it cannot be read. */
static char *read_file(const char *path, size_t *len) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        perror(path);
        return NULL;
    }
    size_t cap = 4096, used = 0;
    char *text = malloc(cap);
    while (text) {
        used += fread(text + used, 1, cap - used - 1, file);
        if (used < cap - 1) break;
        cap *= 2;
        char *bigger = realloc(text, cap);
        if (!bigger) free(text);
        text = bigger;
    }
    int failed = ferror(file);
    fclose(file);
    if (!text || failed) {
        fprintf(stderr, "%s: cannot read the script\n", path);
        free(text);
        return NULL;
    }
    text[used] = '\0';
    *len = used;
    return text;
}

int main(int argc, char **argv) {
    const char *name;
    char *source;
    size_t len;
    int first_arg;
    if (argc >= 4 && strcmp(argv[1], "--source") == 0) {
        name = argv[2];
        source = argv[3];
        len = strlen(source);
        first_arg = 4;
    } else if (argc >= 2 && argv[1][0] != '-') {
        name = argv[1];
        source = read_file(name, &len);
        if (!source) return 1;
        first_arg = 2;
    } else {
        return usage();
    }
    JSContext *ctx = wasnap_js_new_context();
    if (!ctx) {
        fprintf(stderr, "js.wasm: out of memory\n");
        return 1;
    }
    wasnap_js_define_globals(ctx, argc - first_arg, argv + first_arg);
    script = ctx;
    int status = wasnap_js_run(ctx, source, len, name);
    script = NULL;
    wasnap_js_free(ctx);
    return status;
}
