/**
 * What a call to an imported C library function reads, when its name says
 * so. Without this, a call into another object counts as reading every
 * argument register, and every register a caller merely left behind
 * before `call puts` looks like reliance (a veneer nobody needs).
 *
 * Fixed-arity functions read their parameters. The printf family reads
 * its fixed parameters, the variadic ones its format asks for when the
 * format is a string constant in the object (counted as the C library
 * does: `*` widths and integer/pointer conversions take a general
 * register, floating conversions a vector register, `L` long doubles the
 * stack), and every argument register otherwise. Names not listed read
 * every argument register, as before. Positional formats (`%1$d`) are
 * not counted.
 */
import { R8, R9, RAX, RCX, RDI, RDX, RSI } from './regs.js';

/** Integer argument registers in ABI order. */
export const ARG_ORDER = [RDI, RSI, RDX, RCX, R8, R9];

/** Fixed-arity functions: [general registers, vector registers]. */
const FIXED: Record<string, [number, number]> = {};
function fixed(gpr: number, vec: number, names: string): void {
  for (const n of names.split(/\s+/)) if (n) FIXED[n] = [gpr, vec];
}
fixed(0, 0, 'abort getpid getppid getuid geteuid getgid __errno_location __ctype_b_loc __ctype_tolower_loc __ctype_toupper_loc rand pthread_self __stack_chk_fail fork');
fixed(1, 0, `puts putchar free malloc strlen strdup atoi atol atoll fflush fclose exit _exit close sleep usleep
  time getenv perror fileno strerror toupper tolower isalpha isdigit isspace isalnum isupper islower
  pthread_mutex_lock pthread_mutex_unlock pthread_mutex_trylock pthread_mutex_destroy pthread_cond_signal
  pthread_cond_broadcast pthread_cond_destroy srand ftell rewind feof ferror clearerr getc fgetc opendir
  closedir readdir unlink rmdir chdir dup localtime gmtime mktime system pthread_detach srandom`);
fixed(2, 0, `strcmp strcpy strcat strchr strrchr strstr strspn strcspn strpbrk fputs fputc putc fopen
  calloc realloc clock_gettime gettimeofday nanosleep pthread_join pthread_mutex_init pthread_cond_wait
  strtod strtof strnlen strndup rename kill signal dup2 access stat fstat lstat mkdir setenv unsetenv
  localtime_r gmtime_r ungetc pipe`);
fixed(3, 0, `strncmp strncpy strncat memcpy memmove memset memcmp memchr memrchr mempcpy fgets strtol strtoul
  strtoll strtoull read write lseek fseek open setvbuf pthread_cond_timedwait poll writev readv
  ioctl fcntl sigaction pthread_sigmask sigprocmask getline`);
fixed(4, 0, 'fwrite fread pthread_create qsort setsockopt getsockopt recv send openat __memcpy_chk __memmove_chk __memset_chk getdelim');
fixed(5, 0, 'bsearch');
fixed(0, 1, 'sqrt sqrtf sin cos tan exp log log10 log2 floor ceil round trunc fabs sinf cosf expf logf floorf ceilf roundf fabsf');
fixed(0, 2, 'pow powf atan2 fmod fmin fmax hypot');

/** printf family: the index of the format among the integer arguments (the fixed arguments are those up to it). */
const PRINTF: Record<string, number> = {
  printf: 0, fprintf: 1, sprintf: 1, snprintf: 2, dprintf: 1, asprintf: 1, syslog: 1,
  __printf_chk: 1, __fprintf_chk: 2, __sprintf_chk: 3, __snprintf_chk: 4, __dprintf_chk: 2, __asprintf_chk: 2, __syslog_chk: 2,
};

/** How many argument registers the format register index `k` can be (the tracked ones). */
export const TRACKED_ARGS = 5;

/** What a call reads: integer registers as a mask, and how many vector registers (-1: as al says). */
export interface CallReads {
  g: number;
  vec: number;
}

const mask = (n: number): number => ARG_ORDER.slice(0, Math.min(n, 6)).reduce((m, r) => m | (1 << r), 0);

/** Everything (an unknown function): six integer registers, al, and the vectors al announces. */
export const UNKNOWN_CALL: CallReads = { g: mask(6) | (1 << RAX), vec: -1 };

/**
 * What a call to `name` reads. `constantArg(k)` gives the address held by
 * integer argument register k when known; `readString(addr)` the string
 * there (undefined when it cannot be read).
 */
export function callReads(name: string | undefined, constantArg: (k: number) => number, readString: (addr: number) => string | undefined): CallReads {
  if (name === undefined) return UNKNOWN_CALL;
  const f = FIXED[name];
  if (f) return { g: mask(f[0]), vec: f[1] };
  const k = PRINTF[name];
  if (k === undefined) return UNKNOWN_CALL;
  const addr = k < TRACKED_ARGS ? constantArg(k) : -1;
  const fmt = addr >= 0 ? readString(addr) : undefined;
  const counted = fmt !== undefined ? countPrintf(fmt) : null;
  // al is read by every variadic call; vectors as al says, or as the format says when known.
  if (!counted) return { g: mask(6) | (1 << RAX), vec: -1 };
  return { g: mask(k + 1 + counted.gpr) | (1 << RAX), vec: Math.min(counted.vec, 8) };
}

/** Arguments a printf format takes: integer-class and vector-class. Null when it cannot be counted. */
export function countPrintf(fmt: string): { gpr: number; vec: number } | null {
  let gpr = 0, vec = 0;
  for (let i = 0; i < fmt.length; i++) {
    if (fmt[i] !== '%') continue;
    i++;
    if (fmt[i] === '%') continue;
    // flags
    while (i < fmt.length && "-+ #0'I".includes(fmt[i]!)) i++;
    // width
    if (fmt[i] === '*') { gpr++; i++; } else while (i < fmt.length && fmt[i]! >= '0' && fmt[i]! <= '9') i++;
    if (fmt[i] === '$') return null; // positional: %1$d
    // precision
    if (fmt[i] === '.') {
      i++;
      if (fmt[i] === '*') { gpr++; i++; } else while (i < fmt.length && fmt[i]! >= '0' && fmt[i]! <= '9') i++;
    }
    // length
    let longDouble = false;
    while (i < fmt.length && 'hlLqjzZt'.includes(fmt[i]!)) {
      if (fmt[i] === 'L' || fmt[i] === 'q') longDouble = true;
      i++;
    }
    const c = fmt[i];
    if (c === undefined) return null;
    if ('diouxXcCsSpnb'.includes(c)) gpr++;
    else if ('eEfFgGaA'.includes(c)) { if (!longDouble) vec++; } else if (c !== 'm') return null; // unknown conversion: cannot tell
  }
  return { gpr, vec };
}
