/* Fix 2 (stacks on fix 1): a friendlier greeting, quoting the policy. */
#include <hotstack.h>

static const char *patched_greeting(void)
{
    return "Welcome! 20% off from 10 items (service v1.0, patched live)";
}
HOTSTACK_PATCH(greeting, patched_greeting);
