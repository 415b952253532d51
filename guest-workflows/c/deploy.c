/* The deploy workflow of ../deploy.expected.md. */
#include "wasnap.h"

#define MACHINES 3

int main(void) {
    char msg[64];
    printf("building release\n");
    if (!wasnap_ask("waiting for approval", "yes")) {
        printf("deployment not approved\n");
        return 0;
    }
    for (int k = 1; k <= MACHINES; k++) {
        snprintf(msg, sizeof msg, "deploying to machine-%d", k);
        if (wasnap_ask(msg, "fail")) {
            /* Machine k failed: undo the ones already done, newest first. */
            for (int j = k - 1; j >= 1; j--) {
                snprintf(msg, sizeof msg, "rolling back machine-%d", j);
                free(wasnap_yield_str(msg));
            }
            printf("rolled back after machine-%d failed\n", k);
            return 0;
        }
    }
    printf("deployed to %d machines\n", MACHINES);
    return 0;
}
