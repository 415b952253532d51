/* The article's approval workflow. */
#include "wasnap.h"

int main(void) {
    free(wasnap_yield_str("do something"));
    if (wasnap_ask("ask boss for permission", "true"))
        free(wasnap_yield_str("do another after approved"));
    else
        free(wasnap_yield_str("do another after rejected"));
    return 0;
}
