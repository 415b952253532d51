/* The deploy workflow of ../deploy.expected.md, with a `status` query and
 * a `machines` update (how many machines to roll out to). */
#include "wasnap.h"

#define MAX_MACHINES 9
/* Approve within 3 days, else the question goes to the release manager. */
#define APPROVAL_DEADLINE_MS (3LL * 24 * 60 * 60 * 1000)
/* The maintenance window opens 2 s after the approval. */
#define MAINTENANCE_WINDOW_MS 2000

static int machines = 3;  /* changed by `wasnap update ID machines --arg N` */
static int deployed = 0;  /* machines done so far */
static char status[80] = "building release";

WASNAP_QUERY(status) {
    char text[160];
    snprintf(text, sizeof text, "%s (%d of %d machines done)", status, deployed, machines);
    wasnap_respond_str(text);
}

WASNAP_UPDATE(machines) {
    char *arg = wasnap_arg();
    int n = atoi(arg);
    free(arg);
    char text[80];
    if (n < deployed || n < 1 || n > MAX_MACHINES) {
        snprintf(text, sizeof text, "refused: %d machines (at least %d, at most %d)",
                 n, deployed > 1 ? deployed : 1, MAX_MACHINES);
    } else {
        machines = n;
        snprintf(text, sizeof text, "machines = %d", n);
    }
    wasnap_respond_str(text);
}

static int ask(const char *question, const char *expected) {
    snprintf(status, sizeof status, "%s", question);
    return wasnap_ask(question, expected);
}

int main(void) {
    char msg[64];
    printf("building release\n");
    snprintf(status, sizeof status, "%s", "waiting for approval [yes/no]");
    char *answer = wasnap_yield_str_timeout(status, APPROVAL_DEADLINE_MS);
    if (!answer) {
        printf("no answer within 3 days: escalating\n");
        snprintf(status, sizeof status, "%s", "waiting for approval from the release manager [yes/no]");
        answer = wasnap_yield_str(status);
    }
    int approved = strcmp(answer, "yes") == 0;
    free(answer);
    if (!approved) {
        printf("deployment not approved\n");
        return 0;
    }
    printf("waiting for the maintenance window\n");
    snprintf(status, sizeof status, "%s", "waiting for the maintenance window");
    wasnap_sleep(MAINTENANCE_WINDOW_MS);
    for (int k = 1; k <= machines; k++) {
        snprintf(msg, sizeof msg, "deploying to machine-%d", k);
        if (ask(msg, "fail")) {
            /* Machine k failed: undo the ones already done, newest first. */
            for (int j = k - 1; j >= 1; j--) {
                snprintf(msg, sizeof msg, "rolling back machine-%d", j);
                snprintf(status, sizeof status, "%s", msg);
                deployed = j - 1;
                free(wasnap_yield_str(msg));
            }
            printf("rolled back after machine-%d failed\n", k);
            return 0;
        }
        deployed = k;
    }
    snprintf(status, sizeof status, "deployed");
    printf("deployed to %d machines\n", machines);
    return 0;
}
