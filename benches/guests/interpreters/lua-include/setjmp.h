/*
 * Lua's ldo.c includes <setjmp.h>, which wasi-libc does not provide (Wasm
 * has no setjmp/longjmp without its exception-handling proposal).
 *
 * Lua 5.4 uses nothing of it with the error handling of lua_config.h. Lua
 * 5.1, whose luaconf.h cannot be told otherwise, is built with
 * LUA_USE_ULONGJMP and gets the same handling from here: a protected call
 * just runs its body, and an error prints itself and ends the program.
 */
#ifndef LUA_GUEST_SETJMP_H
#define LUA_GUEST_SETJMP_H

_Noreturn void lua_guest_abort(void);
typedef int jmp_buf;
#define _setjmp(buffer) ((void)(buffer), 0)
#define _longjmp(buffer, value) ((void)(buffer), (void)(value), lua_guest_abort())

#endif
