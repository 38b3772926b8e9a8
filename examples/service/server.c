/*
 * A tiny "pricing service" for the hotstack demo. It answers one request
 * per line on stdin:
 *   quote N     price of N items (with the volume discount)
 *   hello       the greeting
 *   quit
 * It has a bug: the volume discount is applied to every order, not only
 * from 10 items on. The demo fixes it live, without restarting it.
 */
#include <stdio.h>
#include <string.h>
#include <stdlib.h>

#define UNIT_PRICE 250 /* cents */

/*
 * Patchable functions must stay real calls: not inlined, and their results
 * not propagated into callers. gcc has noipa for that; clang propagates
 * even the results of noinline functions, unless they may be overridden
 * (weak).
 */
#if defined(__clang__)
#define PATCHABLE __attribute__((noinline, weak))
#define PATCHABLE_STATIC __attribute__((noinline))
#else
#define PATCHABLE __attribute__((noipa))
#define PATCHABLE_STATIC __attribute__((noipa))
#endif

/* The percentage off an order of n items. Bug: should be 0 below 10 items. */
PATCHABLE int discount_percent(int n)
{
    return n > 0 ? 20 : 0;
}

static PATCHABLE_STATIC int round_cents(int cents)
{
    return (cents + 2) / 5 * 5; /* to the nearest 5 cents */
}

PATCHABLE int quote(int n)
{
    int total = n * UNIT_PRICE;
    return round_cents(total - total * discount_percent(n) / 100);
}

PATCHABLE const char *greeting(void)
{
    return "Welcome to the pricing service v1.0";
}

int main(void)
{
    char line[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "quote ", 6)) {
            int n = atoi(line + 6);
            int c = quote(n);
            printf("%d items: $%d.%02d\n", n, c / 100, c % 100);
        } else if (!strncmp(line, "hello", 5)) {
            printf("%s\n", greeting());
        } else if (!strncmp(line, "quit", 4)) {
            break;
        } else {
            printf("?\n");
        }
    }
    return 0;
}
