/*
 * Lua's ldo.c includes <setjmp.h>, which wasi-libc does not provide (Wasm
 * has no setjmp/longjmp without its exception-handling proposal). With the
 * error handling of lua_config.h nothing of it is used, so it is empty.
 */
