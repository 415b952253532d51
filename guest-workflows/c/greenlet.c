/* The article's greenlet demo: main is f, g is a coroutine with its own stack. */
#include "wasnap.h"

/* Fill buf with "special-g-stack" from three pieces, so that the whole text
 * exists only where it is built (g's stack), never in a data segment. */
static void build_mystack(volatile char *buf) {
    static const char *const pieces[] = {"special", "-g-", "stack"};
    size_t n = 0;
    for (size_t p = 0; p < 3; p++)
        for (const char *c = pieces[p]; *c; c++) buf[n++] = *c;
    buf[n] = '\0';
}

static int mystack_intact(const volatile char *buf) {
    static const char *const pieces[] = {"special", "-g-", "stack"};
    size_t n = 0;
    for (size_t p = 0; p < 3; p++)
        for (const char *c = pieces[p]; *c; c++)
            if (buf[n++] != *c) return 0;
    return buf[n] == '\0';
}

/* Where mystack's address escapes to. While its address is private to g,
 * clang may lay the bytes out in any order (at -O2 it reverses them), and the
 * text would not be in memory as written. */
static volatile char *volatile mystack_seen;

static void g(void *unused) {
    (void)unused;
    printf("enter g\n");
    /* volatile: the buffer must really live in g's stack frame in memory. */
    volatile char mystack[16];
    mystack_seen = mystack;
    build_mystack(mystack);
    wasnap_switch_parent(0);
    if (!mystack_intact(mystack)) abort(); /* g's stack did not survive */
    printf("leave g\n");
}

int main(void) {
    wasnap_coroutine *greenlet_g = wasnap_spawn(g, NULL, 16 * 1024);
    wasnap_switch(greenlet_g->id, 0);
    wasnap_suspend(); /* root.switch() */
    printf("a\n");
    wasnap_switch(greenlet_g->id, 0);
    wasnap_suspend();
    printf("b\n");
    wasnap_suspend();
    printf("c\n");
    wasnap_release(greenlet_g);
    return 0;
}
