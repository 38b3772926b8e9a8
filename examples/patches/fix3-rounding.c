/*
 * Fix 3 was built on top of fix 1 only (it does not know fix 2): it must
 * be refused while fix 2 is the top of the stack. It rounds to the cent
 * instead of the dollar, calling the service's static helper-free path.
 */
#include <hotstack.h>

extern int discount_percent(int n);

static int exact_quote(int n)
{
    int total = n * 250;
    return total - total * discount_percent(n) / 100;
}
HOTSTACK_PATCH(quote, exact_quote);
