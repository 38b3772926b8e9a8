/*
 * The cumulative fix: everything above in one payload built on the bare
 * service, applied with REPLACE. It also calls the service's static
 * round_cents() (a local symbol, reached as "server.c#round_cents").
 */
#include <hotstack.h>

extern int round_cents(int cents) HOTSTACK_BASE_STATIC("server.c", "round_cents");

static int cumulative_discount_percent(int n)
{
    return n >= 10 ? 20 : 0;
}

static int cumulative_quote(int n)
{
    int total = n * 250;
    int d = cumulative_discount_percent(n);
    /* Exact cents for small orders, rounded for big ones. */
    return n >= 10 ? round_cents(total - total * d / 100) : total - total * d / 100;
}

static const char *cumulative_greeting(void)
{
    return "Welcome! 20% off from 10 items (service v1.0, cumulative fix)";
}

HOTSTACK_PATCH(discount_percent, cumulative_discount_percent);
HOTSTACK_PATCH(quote, cumulative_quote);
HOTSTACK_PATCH(greeting, cumulative_greeting);
