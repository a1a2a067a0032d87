/*
 * The C test of cvmem-capi, in the shape QEMU would use it: memslots registered as
 * kvm_set_user_memory_region() registers them, conversions as kvm_convert_memory() does
 * them (validate, set the attributes, discard the side that lost its contents), a guest's
 * MapGPA hypercall decoded and applied, and the fault-path question. Exits non-zero on the
 * first check that fails.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cvmem.h"

#define GiB (1ull << 30)
#define MiB (1ull << 20)
#define KiB (1ull << 10)

static int failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            char why[256];                                                            \
            cvmem_last_error(why, sizeof why);                                        \
            fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n", __FILE__, \
                    __LINE__, #cond, why);                                            \
            failures++;                                                               \
        }                                                                             \
    } while (0)

/* What QEMU's ram_block_discard_range() / ram_block_discard_guest_memfd_range() would be
 * told: the byte count discarded on each side. */
static uint64_t discarded_shared, discarded_private;

static int count_runs(void *opaque, const CvmemRun *run)
{
    uint64_t *total = opaque;
    *total += run->size;
    return 0;
}

/* Counts runs; stops the walk with 7 at run number `stop_at` (0: never). */
struct walk {
    uint64_t runs, stop_at;
};

static int walk_runs(void *opaque, const CvmemRun *run)
{
    struct walk *w = opaque;
    (void)run;
    w->runs++;
    return w->stop_at && w->runs == w->stop_at ? 7 : 0;
}

static long peak_rss_kib(void)
{
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return u.ru_maxrss;
}

/* kvm_convert_memory(start, size, to_private) on top of cvmem. */
static int kvm_convert_memory(CvmemTracker *t, uint64_t start, uint64_t size, bool to_private)
{
    int ret = cvmem_set_memory_attributes(t, start, size, to_private ? CVMEM_ATTRIBUTE_PRIVATE : 0);
    if (ret) {
        return ret; /* -EINVAL etc.: nothing changed */
    }
    if (to_private) {
        discarded_shared += size;
    } else {
        discarded_private += size;
    }
    return 0;
}

int main(void)
{
    CvmemTracker *t = cvmem_tracker_new();
    CHECK(t != NULL);

    /* Guest RAM below 4G and above, guest_memfd backed, 1G-aligned host memory. */
    CHECK(cvmem_set_user_memory_region(t, 0, CVMEM_MEM_GUEST_MEMFD, 0, 2 * GiB, 0x7f0000000000ull, 3) == 0);
    CHECK(cvmem_set_user_memory_region(t, 1, CVMEM_MEM_GUEST_MEMFD, 4 * GiB, 4 * GiB, 0x7f0100000000ull, 3) == 0);
    /* An overlapping slot is -EEXIST, an unaligned one -EINVAL, unknown flags -EINVAL. */
    CHECK(cvmem_set_user_memory_region(t, 2, 0, GiB, GiB, 0x7f0200000000ull, 0) == -EEXIST);
    CHECK(cvmem_set_user_memory_region(t, 2, 0, 0x1001, GiB, 0x7f0200000000ull, 0) == -EINVAL);
    CHECK(cvmem_set_user_memory_region(t, 2, 1u << 9, 8 * GiB, GiB, 0x7f0200000000ull, 0) == -EINVAL);

    /* Boot: everything private, as QEMU does for guest_memfd RAM. */
    CHECK(kvm_convert_memory(t, 0, 2 * GiB, true) == 0);
    CHECK(kvm_convert_memory(t, 4 * GiB, 4 * GiB, true) == 0);
    CvmemFaultAnswer a;
    CHECK(cvmem_max_mapping_level(t, 4 * GiB + 12345 * 4096, true, &a) == 0);
    CHECK(a.kind == CVMEM_ANSWER_KIND_MAP && a.level == 3);
    CHECK(cvmem_max_mapping_level(t, 0x1000, false, &a) == 0);
    CHECK(a.kind == CVMEM_ANSWER_KIND_MEMORY_FAULT && a.fault_gpa == 0x1000 && !a.fault_private);
    CHECK(cvmem_max_mapping_level(t, 3 * GiB, true, &a) == 0 && a.kind == CVMEM_ANSWER_KIND_NO_SLOT);

    /* The guest shares a 64 KiB bounce buffer by MapGPA: decode, then apply. */
    CvmemMapGpaRequest req;
    CHECK(cvmem_map_gpa_range_decode(0x1000000, 16, 0, &req) == 0);
    CHECK(req.gpa == 0x1000000 && req.size == 64 * KiB && !req.to_private && req.hint_level == 1);
    CHECK(kvm_convert_memory(t, req.gpa, req.size, req.to_private) == 0);
    CHECK(!cvmem_is_private(t, 0x1000000) && cvmem_is_private(t, 0x1010000));
    /* Reserved attribute bits and an unaligned gpa are refused, as KVM refuses them. */
    CHECK(cvmem_map_gpa_range_decode(0x1000000, 16, 1u << 7, &req) == -EINVAL);
    CHECK(cvmem_map_gpa_range(t, 0x1000800, 1, 0) == -EINVAL);
    CHECK(cvmem_map_gpa_range(t, 0x2000000, 512, 0x10 | 2) == 0); /* private, 2M hint */
    /* Outside every memslot: to private is refused, to shared succeeds and tracks nothing, so
     * a guest cannot grow the tracking (one private page per 512 GiB, 1000 times). */
    int64_t before = cvmem_heap_bytes(t);
    for (uint64_t i = 1; i <= 1000; i++) {
        CHECK(cvmem_map_gpa_range(t, i << 39, 1, 0x10) == -EINVAL);
        CHECK(cvmem_map_gpa_range(t, (i << 39) + 4096, 1, 0) == 0);
    }
    CHECK(cvmem_map_gpa_range(t, 2 * GiB - 4096, 2, 0x10) == -EINVAL); /* straddles slot 0's end */
    CHECK(cvmem_heap_bytes(t) == before && !cvmem_is_private(t, 2 * GiB));

    /* The 2M page holding the buffer is mixed: 4K there, 2M next door, 1G elsewhere. */
    CHECK(cvmem_max_mapping_level(t, 0x1000000, false, &a) == 0 && a.level == 1);
    CHECK(cvmem_max_mapping_level(t, 0x1200000, true, &a) == 0 && a.level == 2);
    CHECK(cvmem_max_mapping_level(t, GiB + 4096, true, &a) == 0 && a.level == 3);

    /* Runs over the first 32 MiB: private, the shared buffer, private again. */
    uint64_t total = 0;
    CHECK(cvmem_for_each_run(t, 0, 32 * MiB, count_runs, &total) == 0);
    CHECK(total == 32 * MiB);

    /* Unaligned conversions are refused and change nothing. */
    CHECK(kvm_convert_memory(t, 0x1000800, 4096, true) == -EINVAL);
    CHECK(!cvmem_is_private(t, 0x1000000));
    char why[128];
    CHECK(cvmem_last_error(why, sizeof why) > 0 && strlen(why) > 0);

    /* Tracking stays small: a few hundred bytes for 6 GiB with one shared buffer. */
    int64_t heap = cvmem_heap_bytes(t);
    CHECK(heap > 0 && heap < 64 * (int64_t)KiB);
    printf("cvmem C API: 6 GiB guest, one shared buffer: %lld bytes of tracking; discarded %llu MiB shared, %llu KiB private\n",
           (long long)heap, (unsigned long long)(discarded_shared / MiB), (unsigned long long)(discarded_private / KiB));

    /* A walk streams: 4 GiB of alternating pages (a million runs) adds no memory per run (a
     * copy of the runs would be 24 MiB), and a non-zero return stops it. */
    CvmemTracker *frag = cvmem_tracker_new();
    CHECK(cvmem_set_user_memory_region(frag, 0, CVMEM_MEM_GUEST_MEMFD, 0, 4 * GiB, 0x7f0000000000ull, 3) == 0);
    for (uint64_t gpa = 0; gpa < 4 * GiB; gpa += 8192)
        CHECK(cvmem_set_memory_attributes(frag, gpa, 4096, CVMEM_ATTRIBUTE_PRIVATE) == 0);
    long rss_before = peak_rss_kib();
    struct walk w = {0, 0};
    CHECK(cvmem_for_each_run(frag, 0, 4 * GiB, walk_runs, &w) == 0 && w.runs == 1 << 20);
    long grown = peak_rss_kib() - rss_before;
    CHECK(grown < 4096);
    struct walk stop = {0, 1000};
    CHECK(cvmem_for_each_run(frag, 0, 4 * GiB, walk_runs, &stop) == 7 && stop.runs == 1000);
    printf("cvmem C API: a walk over %llu runs grew the peak RSS by %ld KiB\n",
           (unsigned long long)w.runs, grown);
    cvmem_tracker_free(frag);

    /* Save and restore as JSON: the copy answers as the original; a short buffer is -E2BIG
     * with the length needed; garbage, unknown fields and unreachable states are -EINVAL. */
    size_t need = 0;
    CHECK(cvmem_snapshot(t, NULL, 0, &need) == -E2BIG && need > 0);
    char *json = malloc(need + 1);
    CHECK(json != NULL);
    CHECK(cvmem_snapshot(t, json, need, &need) == -E2BIG);
    CHECK(cvmem_snapshot(t, json, need + 1, &need) == 0 && strlen(json) == need);
    CHECK(strstr(json, "0x7f0") == NULL && strstr(json, "139637976727552") == NULL); /* no host address */
    CvmemTracker *copy = NULL;
    CHECK(cvmem_tracker_restore(json, need, &copy) == 0 && copy != NULL);
    CHECK(cvmem_is_private(copy, 0x1000000) == 0 && cvmem_is_private(copy, 0x1010000) == 1);
    CHECK(cvmem_heap_bytes(copy) > 0);
    CvmemTracker *none = NULL;
    CHECK(cvmem_tracker_restore("{\"version\":2", 12, &none) == -EINVAL && none == NULL);
    const char *unknown = "{\"version\":2,\"supported_attributes\":8,\"gpa_bits\":52,\"memslots\":[],\"runs\":[],\"inhibited\":[],\"uaddr\":1}";
    CHECK(cvmem_tracker_restore(unknown, strlen(unknown), &none) == -EINVAL && none == NULL);
    const char *overlap = "{\"version\":2,\"supported_attributes\":8,\"gpa_bits\":52,\"memslots\":[],\"runs\":[{\"start\":0,\"end\":9,\"attributes\":8},{\"start\":4,\"end\":12,\"attributes\":8}],\"inhibited\":[]}";
    CHECK(cvmem_tracker_restore(overlap, strlen(overlap), &none) == -EINVAL && none == NULL);
    CHECK(cvmem_tracker_restore(NULL, 0, &none) == -EINVAL);
    free(json);
    CHECK(cvmem_tracker_free(copy) == 0);

    /* The library says what it is. */
    CHECK(cvmem_version() != NULL && strlen(cvmem_version()) >= 5);

    /* NULL is an error, never a crash or an answer that looks real. */
    CHECK(cvmem_set_memory_attributes(NULL, 0, 4096, 0) == -EINVAL);
    CHECK(cvmem_max_mapping_level(t, 0, true, NULL) == -EINVAL);
    CHECK(cvmem_is_private(NULL, 0) == -EINVAL);
    CHECK(cvmem_heap_bytes(NULL) == -EINVAL);
    CHECK(cvmem_snapshot(t, NULL, 0, NULL) == -EINVAL);
    /* A freed, foreign or forged handle is -EBADF, not a crash or a hang. */
    CHECK(cvmem_tracker_free(t) == 0);
    CHECK(cvmem_is_private(t, 0) == -EBADF);
    CHECK(cvmem_heap_bytes(t) == -EBADF);
    CHECK(cvmem_map_gpa_range(t, 0, 1, 0) == -EBADF);
    CHECK(cvmem_tracker_free(t) == -EBADF); /* double free */
    uint64_t local = 0;
    CvmemTracker *foreign = (CvmemTracker *)&local;
    CHECK(cvmem_set_memory_attributes(foreign, 0, 4096, 0) == -EBADF);
    CHECK(cvmem_is_private((CvmemTracker *)(uintptr_t)0xc7e3000001000000ull, 0) == -EBADF);
    CHECK(cvmem_tracker_free(NULL) == 0);
    if (failures) {
        fprintf(stderr, "%d checks failed\n", failures);
        return 1;
    }
    printf("cvmem C API: all checks passed\n");
    return 0;
}
