/*
 * Lua (5.4, and 5.1: the same file compiles against either) as a workflow
 * guest: runs the script named by argv[1] (one of the
 * scripts compiled in, from benches/guests/interpreters/lua/) with
 *
 *   wasnap.yield(text) -> reply   publish text, suspend, return the reply
 *                                 ("" when there is none)
 *   arg                           the arguments after the script's name
 *
 * wasnap.yield is a C function called from interpreted code, so the
 * suspending import is reached through the interpreter's own dispatch and
 * function pointers, as any host call of a real interpreter is.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lauxlib.h"
#include "lua.h"
#include "lualib.h"
#include "wasnap.h"

#include "lua_scripts.h" /* generated: const struct script scripts[] */

/* The program's only Lua state, for lua_guest_abort. */
static lua_State *guest_state;

_Noreturn void lua_guest_throw(lua_State *L) {
    const char *message = lua_tostring(L, -1);
    fflush(stdout);
    fprintf(stderr, "lua: %s\n", message ? message : "(error object is not a string)");
    abort();
}

_Noreturn void lua_guest_abort(void) { lua_guest_throw(guest_state); }

static int wasnap_yield_lua(lua_State *L) {
    size_t len;
    const char *text = luaL_checklstring(L, 1, &len);
    fflush(stdout);
    int32_t n = wasnap_raw_yield(text, (int32_t)len);
    char *bytes = n > 0 ? malloc((size_t)n) : NULL;
    int32_t got = bytes ? wasnap_raw_reply(bytes, n) : 0;
    lua_pushlstring(L, bytes ? bytes : "", (size_t)(got > 0 ? got : 0));
    free(bytes);
    return 1;
}

static const luaL_Reg wasnap_functions[] = {{"yield", wasnap_yield_lua}, {NULL, NULL}};

#if LUA_VERSION_NUM >= 504
static int open_wasnap(lua_State *L) {
    luaL_newlib(L, wasnap_functions);
    return 1;
}
#endif

/* The standard libraries a workflow script needs; io, os and package are
 * left out: a workflow talks to the world through wasnap.yield. */
#if LUA_VERSION_NUM >= 504
static void open_libraries(lua_State *L) {
    static const luaL_Reg libraries[] = {
        {LUA_GNAME, luaopen_base},
        {LUA_TABLIBNAME, luaopen_table},
        {LUA_STRLIBNAME, luaopen_string},
        {LUA_MATHLIBNAME, luaopen_math},
        {LUA_UTF8LIBNAME, luaopen_utf8},
        {"wasnap", open_wasnap},
        {NULL, NULL},
    };
    for (const luaL_Reg *lib = libraries; lib->func; lib++) {
        luaL_requiref(L, lib->name, lib->func, 1);
        lua_pop(L, 1);
    }
}
#else
/* Lua 5.1: each library's opener registers its own global table (its base
 * library brings coroutine too); there is no utf8. */
static void open_libraries(lua_State *L) {
    static const lua_CFunction openers[] = {luaopen_base, luaopen_table, luaopen_string,
                                            luaopen_math, NULL};
    for (const lua_CFunction *open = openers; *open; open++) {
        lua_pushcfunction(L, *open);
        lua_call(L, 0, 0);
    }
    luaL_register(L, "wasnap", wasnap_functions);
    lua_pop(L, 1);
}
#endif

static void set_arguments(lua_State *L, int argc, char **argv) {
    lua_createtable(L, argc > 2 ? argc - 2 : 0, 0);
    for (int i = 2; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - 1);
    }
    lua_setglobal(L, "arg");
}

static const struct script *find_script(const char *name) {
    for (const struct script *s = scripts; s->name; s++)
        if (strcmp(s->name, name) == 0) return s;
    return NULL;
}

int main(int argc, char **argv) {
    const struct script *script = argc >= 2 ? find_script(argv[1]) : NULL;
    if (!script) {
        fprintf(stderr, "usage: lua.wasm SCRIPT [ARGS...], where SCRIPT is one of:");
        for (const struct script *s = scripts; s->name; s++) fprintf(stderr, " %s", s->name);
        fprintf(stderr, "\n");
        return 2;
    }
    lua_State *L = guest_state = luaL_newstate();
    if (!L) return 1;
    open_libraries(L);
    set_arguments(L, argc, argv);
    if (luaL_loadbuffer(L, script->source, strlen(script->source), script->name) != 0 ||
        lua_pcall(L, 0, 0, 0) != 0)
        lua_guest_throw(L);
    lua_close(L);
    fflush(stdout);
    return 0;
}
