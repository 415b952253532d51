/* New code for the approval workflow, compatible with its histories: up to
 * the boss's answer it does what approval.c does, and after it, something
 * new. `wasnap upgrade ID approval-v2.wasm` moves a waiting instance here. */
#include "wasnap.h"

static const char *status = "starting";

static char *step(const char *question) {
    status = question;
    return wasnap_yield_str(question);
}

WASNAP_QUERY(status) { wasnap_respond_str(status); }

int main(void) {
    free(step("do something"));
    char *answer = step("ask boss for permission");
    int approved = strcmp(answer, "true") == 0;
    free(answer);
    if (approved)
        free(step("do another after approved, and tell the team"));
    else
        free(step("do another after rejected, and tell the team"));
    status = "done";
    return 0;
}
