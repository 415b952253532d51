/*
 * A compute-heavy workflow that calls the suspending import from its hot
 * loop: every item of work ends in `wasnap.yield`, which the host may turn
 * into a suspension. The instrumentation benchmark runs it with a host that
 * never suspends, so what it measures is what instrumentation costs a
 * workflow on the path where nothing is saved.
 *
 * Each item mixes a pseudo-random state through a table lookup, a small
 * hash and a fixed-point iteration, keeping several values live across the
 * call, as real workflows do. It prints a checksum so that every variant of
 * the module can be checked to compute the same thing.
 */
#include <stdint.h>
#include <stdio.h>

__attribute__((import_module("wasnap"), import_name("yield")))
int32_t wasnap_yield(const void *ptr, int32_t len);

#define ITEMS 400000
#define TABLE 4096

static uint32_t table[TABLE];

static uint32_t rotl(uint32_t x, int k) { return (x << k) | (x >> (32 - k)); }

/* One unit of work: about a hundred instructions, no calls. */
__attribute__((noinline)) static uint32_t work(uint32_t state, uint32_t item) {
    uint32_t h = 0x811c9dc5u ^ item;
    int32_t re = (int32_t)(state & 0xffff) - 0x8000, im = (int32_t)(state >> 16) - 0x8000;
    for (int k = 0; k < 24; k++) {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        uint32_t slot = state & (TABLE - 1);
        table[slot] += h;
        h = rotl(h ^ table[(slot * 7) & (TABLE - 1)], 5) * 0x01000193u;
        int32_t re2 = (int32_t)(((int64_t)re * re - (int64_t)im * im) >> 15);
        int32_t im2 = (int32_t)(((int64_t)re * im) >> 14);
        re = (re2 + (int32_t)(state & 0xfff)) & 0xffff;
        im = (im2 - (int32_t)(h & 0xfff)) & 0xffff;
    }
    return h ^ (uint32_t)re ^ ((uint32_t)im << 16);
}

/* The hot loop: every item ends at a possible suspension point. */
__attribute__((noinline)) static uint64_t run_items(uint32_t seed) {
    uint64_t checksum = 0;
    uint32_t state = seed, progress[2] = {0, 0};
    for (uint32_t item = 0; item < ITEMS; item++) {
        uint32_t h = work(state | 1, item);
        checksum = checksum * 31 + h;
        state = state * 1664525u + 1013904223u + h;
        progress[0] = item;
        progress[1] = h;
        /* A reply (never sent here) would reseed the state. */
        if (wasnap_yield(progress, 0) > 0)
            state ^= 0x9e3779b9u;
    }
    return checksum;
}

int main(void) {
    uint64_t checksum = run_items(12345);
    printf("compute checksum %016llx\n", (unsigned long long)checksum);
    return 0;
}
