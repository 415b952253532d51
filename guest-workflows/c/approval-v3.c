/* New code for the approval workflow that adds a step before the boss is
 * asked: an audit record. Instances that were asked already must not see
 * it, so the step is behind wasnap_patched("audit"): replaying their
 * history, it is skipped; from the first step that runs anew, it is taken. */
#include "wasnap.h"

static const char *status = "starting";

static char *step(const char *question) {
    status = question;
    return wasnap_yield_str(question);
}

WASNAP_QUERY(status) { wasnap_respond_str(status); }

int main(void) {
    free(step("do something"));
    if (wasnap_patched("audit"))
        free(step("audit: approval requested"));
    char *answer = step("ask boss for permission");
    int approved = strcmp(answer, "true") == 0;
    free(answer);
    if (approved)
        free(step("do another after approved"));
    else
        free(step("do another after rejected"));
    status = "done";
    return 0;
}
