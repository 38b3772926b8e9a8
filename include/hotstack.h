/*
 * hotstack.h: write live patches for hotstack in C (or C++: the same
 * macros compile with g++ and clang++).
 *
 * A payload is a relocatable object in Xen's livepatch format (payload
 * version 2). This header gives the record layout, the hook macros, and
 * the declarations `hotstack build` understands:
 *
 *   #include <hotstack.h>
 *
 *   static const char *my_greeting(void) { return "fixed"; }
 *   HOTSTACK_PATCH(greeting, my_greeting);        // greeting() now runs my_greeting()
 *   HOTSTACK_NOP(debug_trap, 2);                   // NOP the first 2 bytes of debug_trap
 *
 *   // Call a static function of the patched program:
 *   extern int helper(int) HOTSTACK_BASE_STATIC("server.c", "helper");
 *
 * `hotstack build` fills in the sizes, the build-id notes and metadata.
 * Get the compiler flags for your own build system with `hotstack cflags`.
 */
#ifndef HOTSTACK_H
#define HOTSTACK_H

#include <stddef.h>
#include <stdint.h>

#define HOTSTACK_PAYLOAD_VERSION 2
/* Size of expect.data, and the most bytes a NOP patch may cover. */
#define HOTSTACK_OPAQUE_SIZE 31

struct livepatch_expectation {
    uint8_t enabled : 1;
    uint8_t len : 5;
    uint8_t rsv : 2;
    uint8_t data[HOTSTACK_OPAQUE_SIZE];
};

/* Xen's struct livepatch_func: one patched function (104 bytes). */
struct livepatch_func {
    const char *name;      /* function to patch, looked up in the base */
    void *new_addr;        /* replacement; NULL means NOP-patching */
    void *old_addr;        /* NULL: resolve `name` when the payload is loaded */
    uint32_t new_size;     /* size of the replacement, or bytes to NOP */
    uint32_t old_size;     /* size of the function being patched */
    uint8_t version;       /* HOTSTACK_PAYLOAD_VERSION */
    uint8_t opaque[39];    /* the engine's; leave zero */
    struct livepatch_expectation expect;
};

#ifdef __cplusplus
#define HOTSTACK_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define HOTSTACK_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif
HOTSTACK_STATIC_ASSERT(sizeof(struct livepatch_func) == 104, "struct livepatch_func must be 104 bytes");
HOTSTACK_STATIC_ASSERT(offsetof(struct livepatch_func, expect) == 72, "expect must be at offset 72");

/* Payload states, as hooks see them. */
#define HOTSTACK_STATE_CHECKED 1
#define HOTSTACK_STATE_APPLIED 2

/* What pre/post and action hooks receive. */
struct hotstack_payload {
    const char *name;                     /* the payload's name */
    int32_t state;                        /* HOTSTACK_STATE_* */
    int32_t rc;                           /* result of the last action (negative errno) */
    const struct livepatch_func *funcs;   /* the payload's records */
    uint32_t nfuncs;
    uint32_t reserved;
};

typedef void hotstack_load_hook_t(void);
typedef int hotstack_pre_hook_t(struct hotstack_payload *);
typedef void hotstack_post_hook_t(struct hotstack_payload *);
typedef int hotstack_action_hook_t(struct hotstack_payload *);

#define HOTSTACK_CAT_(a, b) a##b
#define HOTSTACK_CAT(a, b) HOTSTACK_CAT_(a, b)
#define HOTSTACK_UNIQUE(prefix) HOTSTACK_CAT(prefix, __COUNTER__)

/*
 * Hooks run inside the patched process (by a remote call from hotstack):
 * load/unload hooks while every thread is stopped, right after patching /
 * right before un-patching, so they must not take locks (no malloc, no
 * stdio) another thread may hold; pre/post hooks run with the process
 * running; a pre hook returning non-zero vetoes the action; the apply and
 * revert hooks replace the built-in patching. Several load/unload hooks
 * may be given; the others at most once per payload.
 */
#define HOTSTACK_HOOK_(type, sec, fn)                                             \
    static type *const HOTSTACK_UNIQUE(__hotstack_hook_)                          \
        __attribute__((used, aligned(8), section(sec))) = (fn)

#define HOTSTACK_LOAD_HOOK(fn)      HOTSTACK_HOOK_(hotstack_load_hook_t, ".livepatch.hooks.load", fn)
#define HOTSTACK_UNLOAD_HOOK(fn)    HOTSTACK_HOOK_(hotstack_load_hook_t, ".livepatch.hooks.unload", fn)
#define HOTSTACK_PREAPPLY_HOOK(fn)  HOTSTACK_HOOK_(hotstack_pre_hook_t, ".livepatch.hooks.preapply", fn)
#define HOTSTACK_POSTAPPLY_HOOK(fn) HOTSTACK_HOOK_(hotstack_post_hook_t, ".livepatch.hooks.postapply", fn)
#define HOTSTACK_PREREVERT_HOOK(fn) HOTSTACK_HOOK_(hotstack_pre_hook_t, ".livepatch.hooks.prerevert", fn)
#define HOTSTACK_POSTREVERT_HOOK(fn) HOTSTACK_HOOK_(hotstack_post_hook_t, ".livepatch.hooks.postrevert", fn)
#define HOTSTACK_APPLY_HOOK(fn)     HOTSTACK_HOOK_(hotstack_action_hook_t, ".livepatch.hooks.apply", fn)
#define HOTSTACK_REVERT_HOOK(fn)    HOTSTACK_HOOK_(hotstack_action_hook_t, ".livepatch.hooks.revert", fn)

/*
 * HOTSTACK_PATCH(old_function, new_function): new_function (defined in
 * this source, static or not) replaces the base's old_function. The
 * record is resolved by name at load time (old_addr 0), which survives
 * ASLR; `hotstack build` fills in old_size and new_size.
 */
#define HOTSTACK_PATCH(old_function, new_function)                                \
    static struct livepatch_func HOTSTACK_UNIQUE(__hotstack_func_)                \
        __attribute__((used, aligned(8), section(".livepatch.funcs"))) = {        \
            .name = #old_function,                                                \
            .new_addr = (void *)(new_function),                                   \
            .old_addr = 0,                                                        \
            .version = HOTSTACK_PAYLOAD_VERSION,                                  \
    }

/* HOTSTACK_NOP(old_function, nbytes): overwrite the first nbytes (<= 31) with NOPs. */
#define HOTSTACK_NOP(old_function, nbytes)                                        \
    static struct livepatch_func HOTSTACK_UNIQUE(__hotstack_func_)                \
        __attribute__((used, aligned(8), section(".livepatch.funcs"))) = {        \
            .name = #old_function,                                                \
            .new_addr = 0,                                                        \
            .old_addr = 0,                                                        \
            .new_size = (nbytes),                                                 \
            .version = HOTSTACK_PAYLOAD_VERSION,                                  \
    }

/*
 * Bind a declaration to a static (local) symbol of the base, named the way
 * Xen names them, FILE#NAME, where FILE is the source file the compiler
 * recorded (the STT_FILE symbol, usually the name given to gcc):
 *   extern int helper(int) HOTSTACK_BASE_STATIC("server.c", "helper");
 */
#if defined(__clang__)
/* clang's integrated assembler takes the label as the symbol name itself. */
#define HOTSTACK_BASE_STATIC(file, name) __asm__(file "#" name)
#else
/* gcc writes the label into assembly, where '#' starts a comment: quote it. */
#define HOTSTACK_BASE_STATIC(file, name) __asm__("\"" file "#" name "\"")
#endif

#endif /* HOTSTACK_H */
