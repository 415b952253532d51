/*
 * Deep recursion through an interpreter, the way script engines recurse:
 * a bytecode function calling itself re-enters the C function that
 * interprets bytecode, and the interpreter reaches the host through a
 * table of native functions (function pointers), one of which calls
 * `wasnap.yield`.
 *
 * The script computes f(depth), where
 *
 *     f(n) = n < 1 ? native_yield(n) : native_mix(n, f(n - 1) + g(n))
 *     g(n) = (n * 7) ^ 3
 *
 * so the only suspension happens at the bottom of the recursion, with
 * `depth` interpreter frames on the Wasm stack. `depth` is argv[1]
 * (default 1000). The recursion tests measure how much Wasm stack the
 * module needs for a given depth, before and after instrumentation, and
 * suspend it at the bottom.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

__attribute__((import_module("wasnap"), import_name("yield")))
int32_t wasnap_yield(const void *ptr, int32_t len);

enum op {
    OP_ARG,        /* push argument a */
    OP_CONST,      /* push constant a */
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_XOR,
    OP_LT,         /* push (x < y) */
    OP_JUMP_IF,    /* pop; if nonzero, jump to a */
    OP_JUMP,       /* jump to a */
    OP_CALL,       /* call function a with b arguments */
    OP_NATIVE,     /* call native a with b arguments */
    OP_RETURN,
};

typedef struct {
    uint8_t op;
    uint8_t b;
    int16_t a;
} Instr;

typedef struct {
    const Instr *code;
    int arity;
} Function;

typedef struct Machine Machine;
typedef int64_t (*Native)(Machine *, const int64_t *args, int count);

struct Machine {
    const Function *functions;
    const Native *natives;
    uint64_t steps;
    uint64_t native_calls;
    int64_t checksum;
};

#define MAX_STACK 16

/*
 * The interpreter: a dispatch loop over a switch, its operand stack in a
 * local array, calls to bytecode functions recursing into itself. Several
 * scalars (pc, sp, counters, a scratch pair) stay live across the calls,
 * as they do in real interpreters.
 */
__attribute__((noinline)) static int64_t interpret(Machine *m, int fn, const int64_t *args) {
    const Instr *code = m->functions[fn].code;
    int64_t stack[MAX_STACK];
    int sp = 0, pc = 0;
    uint64_t steps = 0;
    int64_t x, y;
    for (;;) {
        Instr in = code[pc++];
        steps++;
        switch (in.op) {
        case OP_ARG:
            stack[sp++] = args[in.a];
            break;
        case OP_CONST:
            stack[sp++] = in.a;
            break;
        case OP_ADD:
            y = stack[--sp], x = stack[--sp];
            stack[sp++] = x + y;
            break;
        case OP_SUB:
            y = stack[--sp], x = stack[--sp];
            stack[sp++] = x - y;
            break;
        case OP_MUL:
            y = stack[--sp], x = stack[--sp];
            stack[sp++] = x * y;
            break;
        case OP_XOR:
            y = stack[--sp], x = stack[--sp];
            stack[sp++] = x ^ y;
            break;
        case OP_LT:
            y = stack[--sp], x = stack[--sp];
            stack[sp++] = x < y;
            break;
        case OP_JUMP_IF:
            if (stack[--sp])
                pc = in.a;
            break;
        case OP_JUMP:
            pc = in.a;
            break;
        case OP_CALL: {
            sp -= in.b;
            int64_t result = interpret(m, in.a, &stack[sp]);
            stack[sp++] = result;
            break;
        }
        case OP_NATIVE: {
            sp -= in.b;
            int64_t result = m->natives[in.a](m, &stack[sp], in.b);
            m->native_calls++;
            stack[sp++] = result;
            break;
        }
        case OP_RETURN:
            m->steps += steps;
            return stack[sp - 1];
        default:
            abort();
        }
    }
}

static int64_t native_mix(Machine *m, const int64_t *args, int count) {
    int64_t h = m->checksum;
    for (int k = 0; k < count; k++)
        h = (h ^ args[k]) * 0x100000001b3LL;
    m->checksum = h;
    return (args[0] + args[1]) & 0xffffff;
}

static int64_t native_yield(Machine *m, const int64_t *args, int count) {
    (void)count;
    uint32_t progress[2] = {(uint32_t)m->steps, (uint32_t)args[0]};
    return wasnap_yield(progress, 0) + 1;
}

static int64_t native_hash(Machine *m, const int64_t *args, int count) {
    (void)m;
    int64_t h = 0;
    for (int k = 0; k < count; k++)
        h = h * 31 + args[k];
    return h;
}

enum { F_MAIN, F_DEEP, F_G };
enum { N_MIX, N_YIELD, N_HASH };

static const Instr deep_code[] = {
    /* 0 */ {OP_ARG, 0, 0},
    /* 1 */ {OP_CONST, 0, 1},
    /* 2 */ {OP_LT, 0, 0},
    /* 3 */ {OP_JUMP_IF, 0, 14},
    /* 4 */ {OP_ARG, 0, 0},
    /* 5 */ {OP_ARG, 0, 0},
    /* 6 */ {OP_CONST, 0, 1},
    /* 7 */ {OP_SUB, 0, 0},
    /* 8 */ {OP_CALL, 1, F_DEEP},
    /* 9 */ {OP_ARG, 0, 0},
    /* 10 */ {OP_CALL, 1, F_G},
    /* 11 */ {OP_ADD, 0, 0},
    /* 12 */ {OP_NATIVE, 2, N_MIX},
    /* 13 */ {OP_RETURN, 0, 0},
    /* 14 */ {OP_ARG, 0, 0},
    /* 15 */ {OP_NATIVE, 1, N_YIELD},
    /* 16 */ {OP_RETURN, 0, 0},
};

static const Instr g_code[] = {
    {OP_ARG, 0, 0}, {OP_CONST, 0, 7}, {OP_MUL, 0, 0},
    {OP_CONST, 0, 3}, {OP_XOR, 0, 0}, {OP_RETURN, 0, 0},
};

static const Instr main_code[] = {
    {OP_ARG, 0, 0},
    {OP_CALL, 1, F_DEEP},
    {OP_ARG, 0, 0},
    {OP_NATIVE, 2, N_HASH},
    {OP_RETURN, 0, 0},
};

static const Function functions[] = {
    [F_MAIN] = {main_code, 1},
    [F_DEEP] = {deep_code, 1},
    [F_G] = {g_code, 1},
};

static const Native natives[] = {
    [N_MIX] = native_mix,
    [N_YIELD] = native_yield,
    [N_HASH] = native_hash,
};

int main(int argc, char **argv) {
    int64_t depth = argc > 1 ? atoll(argv[1]) : 1000;
    Machine m = {functions, natives, 0, 0, 0};
    int64_t result = interpret(&m, F_MAIN, &depth);
    printf("depth %lld: result %lld, checksum %lld, %llu steps, %llu native calls\n",
           (long long)depth, (long long)result, (long long)m.checksum,
           (unsigned long long)m.steps, (unsigned long long)m.native_calls);
    return 0;
}
