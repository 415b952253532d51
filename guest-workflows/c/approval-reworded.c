/* New code for the approval workflow that is not compatible with its
 * histories: it asks its second question differently, so an instance that
 * waits for the boss cannot be moved here (`wasnap upgrade` refuses and
 * names the step). */
#include "wasnap.h"

static const char *status = "starting";

static char *step(const char *question) {
    status = question;
    return wasnap_yield_str(question);
}

WASNAP_QUERY(status) { wasnap_respond_str(status); }

int main(void) {
    free(step("do something"));
    char *answer = step("ask the boss for permission, please");
    int approved = strcmp(answer, "true") == 0;
    free(answer);
    if (approved)
        free(step("do another after approved"));
    else
        free(step("do another after rejected"));
    status = "done";
    return 0;
}
