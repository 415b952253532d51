/*
 * QuickJS-ng as a benchmark guest: evaluates the script named by argv[1]
 * (one of the scripts compiled in, from benches/guests/interpreters/js/)
 * with the globals of the JavaScript runtime
 * (guest-workflows/js/wasnap_js.h): wasnap.yield, print, console.log, and
 * scriptArgs, the arguments after the script's name.
 */
#include <stdio.h>
#include <string.h>

#include "wasnap_js.h"

#include "js_scripts.h" /* generated: const struct script scripts[] */

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
    JSContext *ctx = wasnap_js_new_context();
    if (!ctx) return 1;
    wasnap_js_define_globals(ctx, argc - 2, argv + 2);
    int status = wasnap_js_run(ctx, script->source, strlen(script->source), script->name);
    wasnap_js_free(ctx);
    return status;
}
