/* Fix 1: the volume discount starts at 10 items. */
#include <hotstack.h>

static int fixed_discount_percent(int n)
{
    return n >= 10 ? 20 : 0;
}
HOTSTACK_PATCH(discount_percent, fixed_discount_percent);
