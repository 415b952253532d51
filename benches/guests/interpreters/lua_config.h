/*
 * How Lua 5.4 is configured for wasm32-wasi: scripts/build-bench-guests
 * includes this before every Lua source file (clang -include).
 */
#ifndef LUA_CONFIG_H
#define LUA_CONFIG_H

/* WebAssembly without its exception-handling proposal (which clang 14 and
 * wasi-libc do not offer) has no setjmp/longjmp. A protected call just
 * runs its body; an error, which would jump back to it, prints the error
 * and ends the program. The guest scripts raise none. */
struct lua_State;
_Noreturn void lua_guest_throw(struct lua_State *L);
#define LUAI_THROW(L, c) ((void)(c), lua_guest_throw(L))
#define LUAI_TRY(L, c, a) { a }
#define luai_jmpbuf int

/* The type of the fields a signal handler may set; wasi-libc has no
 * signals (and so no sig_atomic_t). */
#define l_signalT int

/* String hashes are normally seeded from the clock and addresses; a fixed
 * seed keeps table traversal order, and so the output, the same in every
 * run, as the tests compare runs. */
#define luai_makeseed(L) 0u

/* Lua stops C recursion (metamethods, pcall) at 200 levels; the `deep`
 * script recurses through __index far deeper, to measure how much Wasm
 * stack that takes. (The count is kept in 16 bits.) */
#define LUAI_MAXCCALLS 50000

#endif
