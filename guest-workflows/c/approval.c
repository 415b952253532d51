/* The article's approval workflow, with a `status` query. */
#include "wasnap.h"

/* What the workflow is waiting for, for `wasnap query ID status`. */
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
        free(step("do another after approved"));
    else
        free(step("do another after rejected"));
    status = "done";
    return 0;
}
