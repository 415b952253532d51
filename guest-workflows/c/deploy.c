/* The deploy workflow of ../deploy.expected.md. */
#include "wasnap.h"

#define MACHINES 3
/* Approve within 3 days, else the question goes to the release manager. */
#define APPROVAL_DEADLINE_MS (3LL * 24 * 60 * 60 * 1000)
/* The maintenance window opens 2 s after the approval. */
#define MAINTENANCE_WINDOW_MS 2000

int main(void) {
    char msg[64];
    printf("building release\n");
    char *answer = wasnap_yield_str_timeout("waiting for approval [yes/no]", APPROVAL_DEADLINE_MS);
    if (!answer) {
        printf("no answer within 3 days: escalating\n");
        answer = wasnap_yield_str("waiting for approval from the release manager [yes/no]");
    }
    int approved = strcmp(answer, "yes") == 0;
    free(answer);
    if (!approved) {
        printf("deployment not approved\n");
        return 0;
    }
    printf("waiting for the maintenance window\n");
    wasnap_sleep(MAINTENANCE_WINDOW_MS);
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
