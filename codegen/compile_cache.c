/* The persistent compile cache: machine code of JIT modules on disk, so a process
 * that compiles a graph some earlier process compiled loads it instead.
 *
 * The key is a hash of the module as lowered (its bitcode: every decision kiln made,
 * shapes, fusion, tiles, threads, small constants; large constants are run-time
 * arguments, so weights never change the code) and of what LLVM makes of it (LLVM's
 * version, the target triple, CPU, features and pipeline). An entry is the object
 * file behind a header with the key, its size and a hash of its bytes; it is
 * written with kiln_write_replace (temporary file, rename), so readers never see
 * half of one; it is not fsynced (a compile waits on each store, and on this kind of
 * VM a store's two fsyncs cost milliseconds): an entry a crash damaged fails its
 * check, and an entry that fails its check (or that the JIT cannot load) is replaced.
 *
 * Entries are of two kinds: a whole module's objects (NAME.kjit) and one shared
 * function's (NAME.kfn, compile_parts.c), which compiles that miss take one by one.
 *
 * Where: $KILN_CACHE_DIR, else $XDG_CACHE_HOME/kiln, else ~/.cache/kiln. KILN_CACHE=0
 * turns it off. KILN_CACHE_MAX_MB bounds its size (default 1024): after each module's store
 * the least recently used entries (by modification time, refreshed on every hit)
 * are removed until it fits. The hit/miss counters are process-wide. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <llvm-c/BitWriter.h>
#include <llvm-c/Core.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "codegen/cg.h"
#include "runtime/checkpoint_impl.h"

enum { ENTRY_FORMAT = 1 };
static const char MAGIC[8] = {'K', 'I', 'L', 'N', 'J', 'I', 'T', '0' + ENTRY_FORMAT};
typedef struct {
  char magic[8];
  uint64_t key_lo, key_hi, size, sum_lo, sum_hi;
} entry_header;

static uint64_t stat_hits, stat_misses, stat_stores, stat_rejected, stat_functions_reused, stat_functions_stored;

void kiln_cache_get_stats(kiln_cache_stats *out) {
  if (!out) return;
  out->hits = __atomic_load_n(&stat_hits, __ATOMIC_RELAXED);
  out->misses = __atomic_load_n(&stat_misses, __ATOMIC_RELAXED);
  out->stores = __atomic_load_n(&stat_stores, __ATOMIC_RELAXED);
  out->rejected = __atomic_load_n(&stat_rejected, __ATOMIC_RELAXED);
  out->functions_reused = __atomic_load_n(&stat_functions_reused, __ATOMIC_RELAXED);
  out->functions_stored = __atomic_load_n(&stat_functions_stored, __ATOMIC_RELAXED);
}

static void count(uint64_t *c) { __atomic_fetch_add(c, 1, __ATOMIC_RELAXED); }
void cg_cache_count_miss(void) { count(&stat_misses); }

/* ---- hashing: a 64-bit multiply-rotate hash (the xxHash64 construction) ---- */

static const uint64_t P1 = 0x9E3779B185EBCA87u, P2 = 0xC2B2AE3D27D4EB4Fu, P3 = 0x165667B19E3779F9u,
                      P4 = 0x85EBCA77C2B2AE63u, P5 = 0x27D4EB2F165667C5u;
static uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
static uint64_t read64(const unsigned char *p) {
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
}
static uint64_t round64(uint64_t acc, uint64_t in) { return rotl(acc + in * P2, 31) * P1; }
static uint64_t merge64(uint64_t acc, uint64_t v) { return (acc ^ round64(0, v)) * P1 + P4; }

static uint64_t hash64(const void *data, size_t n, uint64_t seed) {
  const unsigned char *p = data, *end = p + n;
  uint64_t h;
  if (n >= 32) {
    uint64_t v[4] = {seed + P1 + P2, seed + P2, seed, seed - P1};
    for (; end - p >= 32; p += 32)
      for (int i = 0; i < 4; i++) v[i] = round64(v[i], read64(p + 8 * i));
    h = rotl(v[0], 1) + rotl(v[1], 7) + rotl(v[2], 12) + rotl(v[3], 18);
    for (int i = 0; i < 4; i++) h = merge64(h, v[i]);
  } else {
    h = seed + P5;
  }
  h += (uint64_t)n;
  for (; end - p >= 8; p += 8) h = rotl(h ^ round64(0, read64(p)), 27) * P1 + P4;
  for (; p < end; p++) h = rotl(h ^ (*p * P5), 11) * P1;
  h ^= h >> 33;
  h *= P2;
  h ^= h >> 29;
  h *= P3;
  return h ^ (h >> 32);
}

/* Two independent 64-bit hashes, each chained through the previous key. */
static void hash_into(cg_cache_key *k, const void *data, size_t n) {
  k->lo = hash64(data, n, k->lo);
  k->hi = hash64(data, n, k->hi ^ 0x6b696c6e63616368u);
}
static void hash_str(cg_cache_key *k, const char *s) { hash_into(k, s, strlen(s) + 1); }

void cg_cache_key_of_bitcode(const void *bitcode, size_t size, LLVMTargetMachineRef tm, const char *pipeline,
                             cg_cache_key *key) {
  *key = (cg_cache_key){ENTRY_FORMAT, ENTRY_FORMAT};
  unsigned major, minor, patch;
  LLVMGetVersion(&major, &minor, &patch);
  char llvm[48];
  snprintf(llvm, sizeof llvm, "kiln " KILN_VERSION " llvm %u.%u.%u", major, minor, patch);
  hash_str(key, llvm);
  char *triple = LLVMGetTargetMachineTriple(tm), *cpu = LLVMGetTargetMachineCPU(tm),
       *feat = LLVMGetTargetMachineFeatureString(tm);
  hash_str(key, triple);
  hash_str(key, cpu);
  hash_str(key, feat);
  LLVMDisposeMessage(triple);
  LLVMDisposeMessage(cpu);
  LLVMDisposeMessage(feat);
  hash_str(key, pipeline);
  hash_str(key, getenv("KILN_LLVM_ARGS") ? getenv("KILN_LLVM_ARGS") : ""); /* LLVM's own options may change the code */
  hash_into(key, bitcode, size);
}

kiln_status cg_cache_key_of(LLVMModuleRef mod, LLVMTargetMachineRef tm, const char *pipeline, cg_cache_key *key) {
  LLVMMemoryBufferRef bc = LLVMWriteBitcodeToMemoryBuffer(mod);
  if (!bc) return kiln_set_error(KILN_ERR_NOMEM, "compile cache: cannot serialise the module");
  cg_cache_key_of_bitcode(LLVMGetBufferStart(bc), LLVMGetBufferSize(bc), tm, pipeline, key);
  LLVMDisposeMemoryBuffer(bc);
  return KILN_OK;
}

/* ---- where ---- */

bool cg_cache_enabled(void) {
  const char *on = getenv("KILN_CACHE");
  return !(on && (!strcmp(on, "0") || !strcmp(on, "off") || !strcmp(on, "false")));
}

/* The directory, created if needed; false when there is none to use. */
static bool cache_dir(char *dir, size_t cap) {
  const char *env = getenv("KILN_CACHE_DIR"), *xdg = getenv("XDG_CACHE_HOME"), *home = getenv("HOME");
  int n;
  if (env && *env) n = snprintf(dir, cap, "%s", env);
  else if (xdg && *xdg) n = snprintf(dir, cap, "%s/kiln", xdg);
  else if (home && *home) n = snprintf(dir, cap, "%s/.cache/kiln", home);
  else return false;
  if (n <= 0 || (size_t)n >= cap) return false;
  /* mkdir -p */
  for (char *p = dir + 1;; p++) {
    char ch = *p;
    if (ch != '/' && ch != 0) continue;
    *p = 0;
    int rc = mkdir(dir, 0700);
    *p = ch;
    if (rc && errno != EEXIST) return false;
    if (!ch) break;
  }
  return true;
}

static const char *const extension[] = {[CG_ENTRY_MODULE] = ".kjit", [CG_ENTRY_FUNCTION] = ".kfn"};

static bool entry_path(cg_entry_kind kind, cg_cache_key key, char *path, size_t cap) {
  char dir[4096];
  if (!cache_dir(dir, sizeof dir)) return false;
  int n = snprintf(path, cap, "%s/%016llx%016llx%s", dir, (unsigned long long)key.hi, (unsigned long long)key.lo,
                   extension[kind]);
  return n > 0 && (size_t)n < cap;
}

/* ---- reading and writing ---- */

static bool read_all(int fd, void *buf, size_t n) {
  for (char *p = buf; n;) {
    ssize_t k = read(fd, p, n);
    if (k <= 0) return false;
    p += k, n -= (size_t)k;
  }
  return true;
}

static void reject(const char *path, const char *why) {
  count(&stat_rejected);
  fprintf(stderr, "kiln: compile cache entry %s %s; recompiling it\n", path, why);
  unlink(path);
}

bool cg_cache_load(cg_entry_kind kind, cg_cache_key key, void **data, size_t *size) {
  *data = NULL;
  *size = 0;
  char path[4200];
  if (!entry_path(kind, key, path, sizeof path)) return false;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  struct stat st;
  entry_header h;
  void *buf = NULL;
  const char *why = NULL;
  if (fstat(fd, &st) || st.st_size < (off_t)sizeof h) why = "is shorter than its header";
  else if (!read_all(fd, &h, sizeof h)) why = "cannot be read";
  else if (memcmp(h.magic, MAGIC, sizeof MAGIC)) why = "has an unknown format";
  else if (h.key_lo != key.lo || h.key_hi != key.hi) why = "holds another key";
  else if (h.size != (uint64_t)st.st_size - sizeof h) why = "has the wrong size (truncated?)";
  else if (!(buf = malloc(h.size ? h.size : 1))) why = "does not fit in memory";
  else if (!read_all(fd, buf, h.size)) why = "cannot be read";
  else {
    cg_cache_key sum = {0, 0};
    hash_into(&sum, buf, h.size);
    if (sum.lo != h.sum_lo || sum.hi != h.sum_hi) why = "fails its checksum";
  }
  close(fd);
  if (why) {
    free(buf);
    reject(path, why);
    return false;
  }
  utimensat(AT_FDCWD, path, NULL, 0); /* recently used */
  count(kind == CG_ENTRY_MODULE ? &stat_hits : &stat_functions_reused);
  *data = buf;
  *size = h.size;
  return true;
}

void cg_cache_reject(cg_entry_kind kind, cg_cache_key key, const char *why) {
  char path[4200];
  if (entry_path(kind, key, path, sizeof path)) reject(path, why);
}

static uint64_t max_bytes(void) {
  const char *env = getenv("KILN_CACHE_MAX_MB");
  double mb = env && *env ? strtod(env, NULL) : 1024;
  return mb > 0 ? (uint64_t)(mb * (1 << 20)) : 1024ull << 20;
}

typedef struct {
  char name[64];
  uint64_t bytes;
  struct timespec used;
} entry_info;

static int older_first(const void *a, const void *b) {
  const struct timespec *x = &((const entry_info *)a)->used, *y = &((const entry_info *)b)->used;
  if (x->tv_sec != y->tv_sec) return x->tv_sec < y->tv_sec ? -1 : 1;
  return x->tv_nsec < y->tv_nsec ? -1 : x->tv_nsec > y->tv_nsec;
}

/* Removes least recently used entries until the cache holds at most `limit` bytes. */
static void evict(const char *dir, uint64_t limit) {
  DIR *d = opendir(dir);
  if (!d) return;
  entry_info *e = NULL;
  size_t n = 0, cap = 0;
  uint64_t total = 0;
  struct dirent *de;
  time_t now = time(NULL);
  while ((de = readdir(d))) {
    size_t len = strlen(de->d_name);
    struct stat tst;
    /* a temporary file (kiln_write_replace's NAME.tmp-XXXXXX) an hour old belongs to a
     * process that died writing it */
    if ((strstr(de->d_name, ".kjit.tmp-") || strstr(de->d_name, ".kfn.tmp-")) && !fstatat(dirfd(d), de->d_name, &tst, 0) &&
        now - tst.st_mtime > 3600)
      unlinkat(dirfd(d), de->d_name, 0);
    bool entry = (len > 5 && !strcmp(de->d_name + len - 5, ".kjit")) || (len > 4 && !strcmp(de->d_name + len - 4, ".kfn"));
    if (!entry || len >= sizeof e->name) continue;
    struct stat st;
    if (fstatat(dirfd(d), de->d_name, &st, 0)) continue;
    if (n == cap) {
      entry_info *ne = realloc(e, sizeof *e * (cap = cap ? 2 * cap : 64));
      if (!ne) break;
      e = ne;
    }
    memcpy(e[n].name, de->d_name, len + 1);
    e[n].bytes = (uint64_t)st.st_size;
    e[n].used = st.st_mtim;
    total += e[n++].bytes;
  }
  if (total > limit && n) {
    qsort(e, n, sizeof *e, older_first);
    for (size_t i = 0; i < n && total > limit; i++)
      if (!unlinkat(dirfd(d), e[i].name, 0)) total -= e[i].bytes;
  }
  closedir(d);
  free(e);
}

void cg_cache_store(cg_entry_kind kind, cg_cache_key key, const void *data, size_t size) {
  char path[4200], dir[4096];
  if (!cache_dir(dir, sizeof dir) || !entry_path(kind, key, path, sizeof path)) return;
  entry_header h = {.key_lo = key.lo, .key_hi = key.hi, .size = size};
  memcpy(h.magic, MAGIC, sizeof MAGIC);
  cg_cache_key sum = {0, 0};
  hash_into(&sum, data, size);
  h.sum_lo = sum.lo, h.sum_hi = sum.hi;
  const unsigned char *parts[2] = {(const unsigned char *)&h, data};
  size_t sizes[2] = {sizeof h, size};
  /* A read-only or full disk only costs the next process a compile: the compile that
   * produced this object still succeeds, so its message is not kept either. */
  char saved[1024]; /* kiln_errmsg's size (ir/util.c) */
  snprintf(saved, sizeof saved, "%s", kiln_errmsg());
  if (kiln_write_replace(path, parts, sizes, 2) == KILN_OK) {
    count(kind == CG_ENTRY_MODULE ? &stat_stores : &stat_functions_stored);
    /* once per compile, not per shared function: a scan of the directory each; the
     * module's store comes last and its scan counts the functions' entries too */
    if (kind == CG_ENTRY_MODULE) evict(dir, max_bytes());
  }
  kiln_set_error(KILN_OK, "%s", saved);
}
