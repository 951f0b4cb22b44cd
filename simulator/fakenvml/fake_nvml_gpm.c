/*
 * GPU Performance Monitoring: nvmlGpmQueryDeviceSupport, the sample buffers
 * (nvmlGpmSampleAlloc / Free / Get, nvmlGpmMigSampleGet) and nvmlGpmMetricsGet.
 *
 * A real GPU's samples hold cumulative hardware counters, and a metric is the difference of
 * two samples over the time between them. Here each scope (a GPU, or one GPU instance of a
 * GPU in MIG mode) keeps a counter per metric: the integral over time of the figure the
 * scenario gives, advanced whenever the scope is sampled. So two samples taken while the file
 * says 45.5 give exactly 45.5, and a pair spanning a change gives the time-weighted mean of
 * what the file said at each sample (a change counts from the sample before it).
 *
 * `gpm_lock` guards the live samples and the counters; it is taken after the state lock,
 * never before.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_COUNTERS 256
#define BYTES_PER_MIB 1048576.0

typedef unsigned __int128 integral_t;

/* One scope's counters: the integral of each figure (units times nanoseconds). */
typedef struct {
    int used;
    long gpu;
    unsigned int gpu_instance;
    unsigned long long serial; /* a new one per claim, so a reused slot is not mistaken */
    unsigned long long touched; /* for eviction: the least recently sampled goes first */
    long long stamp_ns;
    integral_t integral[GPM_METRICS];
} counter_t;

struct nvmlGpmSample_st {
    struct nvmlGpmSample_st *next; /* the live samples */
    int filled;
    long gpu;
    unsigned int gpu_instance;
    unsigned long long serial;
    long long stamp_ns;
    unsigned int given; /* bit per metric the scope had when sampled */
    integral_t integral[GPM_METRICS];
};

static pthread_mutex_t gpm_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlGpmSample_st *live_samples; /* gpm_lock */
static counter_t counters[MAX_COUNTERS];      /* gpm_lock */
static unsigned long long next_serial, ticks; /* gpm_lock */

static long long monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int is_live_locked(nvmlGpmSample_t sample)
{
    for (struct nvmlGpmSample_st *s = live_samples; s; s = s->next)
        if (s == sample)
            return 1;
    return 0;
}

/* The counters of a scope, claimed (evicting the least recently sampled) on first use. */
static counter_t *counter_locked(long gpu, unsigned int gpu_instance, long long now)
{
    counter_t *oldest = &counters[0];
    for (int i = 0; i < MAX_COUNTERS; i++) {
        counter_t *c = &counters[i];
        if (c->used && c->gpu == gpu && c->gpu_instance == gpu_instance)
            return c;
        if (!c->used || (oldest->used && c->touched < oldest->touched))
            oldest = c;
    }
    memset(oldest, 0, sizeof *oldest);
    oldest->used = 1;
    oldest->gpu = gpu;
    oldest->gpu_instance = gpu_instance;
    oldest->serial = ++next_serial;
    oldest->stamp_ns = now;
    return oldest;
}

static const gpm_scope_t *scope_of(const gpu_t *gpu, unsigned int gpu_instance)
{
    for (unsigned int i = 0; i < gpu->gpm.n_scopes; i++)
        if (gpu->gpm.scopes[i].gpu_instance == gpu_instance)
            return &gpu->gpm.scopes[i];
    return NULL; /* a scope without figures: every metric NOT_SUPPORTED */
}

/* The GPU index of a GPU or MIG handle (the prologue has vetted it). */
static long gpu_index_of(nvmlDevice_t device)
{
    long index = handle_index(device), mig_index;
    if (index < 0)
        mig_handle_slot(device, &index, &mig_index);
    return index;
}

/* GPM answers NOT_SUPPORTED on a GPU without it (before Hopper, or absent from the file) and on
 * one whose counters another client holds (`gpm refused`: DCGM profiling, say). */
static nvmlReturn_t gpm_usable(const gpu_t *gpu)
{
    return gpu->gpm.mode == GPM_SUPPORTED ? NVML_SUCCESS : NVML_ERROR_NOT_SUPPORTED;
}

static nvmlReturn_t take_sample(const gpu_t *gpu, long index, unsigned int gpu_instance,
                                nvmlGpmSample_t sample)
{
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&gpm_lock);
    if (!sample || !is_live_locked(sample))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    else if ((rc = gpm_usable(gpu)) == NVML_SUCCESS) {
        long long now = monotonic_ns();
        counter_t *counter = counter_locked(index, gpu_instance, now);
        const gpm_scope_t *scope = scope_of(gpu, gpu_instance);
        long long elapsed = now - counter->stamp_ns;
        for (int m = 0; scope && m < GPM_METRICS; m++)
            if (scope->given & (1u << m))
                counter->integral[m] += (integral_t)scope->rate[m] * (integral_t)elapsed;
        counter->stamp_ns = now;
        counter->touched = ++ticks;
        sample->filled = 1;
        sample->gpu = index;
        sample->gpu_instance = gpu_instance;
        sample->serial = counter->serial;
        sample->stamp_ns = now;
        sample->given = scope ? scope->given : 0;
        memcpy(sample->integral, counter->integral, sizeof sample->integral);
    }
    pthread_mutex_unlock(&gpm_lock);
    return rc;
}

/* ---------------------------------------------------------------- entry points */

nvmlReturn_t nvmlGpmQueryDeviceSupport(nvmlDevice_t device, nvmlGpmSupport_t *support)
{
    ANY_DEVICE_CALL(nvmlGpmQueryDeviceSupport, device, {
        (void)mig; /* a MIG device has GPM where its GPU has */
        if (!support)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (support->version != NVML_GPM_SUPPORT_VERSION)
            rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        else /* refused counters are still a GPU that has GPM */
            support->isSupportedDevice =
                gpu->gpm.mode == GPM_SUPPORTED || gpu->gpm.mode == GPM_REFUSED;
    });
}

nvmlReturn_t nvmlGpmSampleAlloc(nvmlGpmSample_t *sample)
{
    GLOBAL_CALL(nvmlGpmSampleAlloc, {
        if (!sample)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!(*sample = calloc(1, sizeof **sample)))
            rc = NVML_ERROR_MEMORY;
        else {
            pthread_mutex_lock(&gpm_lock);
            (*sample)->next = live_samples;
            live_samples = *sample;
            pthread_mutex_unlock(&gpm_lock);
        }
    });
}

/* Only samples this library handed out and has not freed; anything else is INVALID_ARGUMENT,
 * never a crash, so a test can free twice and see the code. */
nvmlReturn_t nvmlGpmSampleFree(nvmlGpmSample_t sample)
{
    GLOBAL_CALL(nvmlGpmSampleFree, {
        rc = NVML_ERROR_INVALID_ARGUMENT;
        pthread_mutex_lock(&gpm_lock);
        for (struct nvmlGpmSample_st **p = &live_samples; *p; p = &(*p)->next) {
            if (*p == sample) {
                *p = sample->next;
                free(sample);
                rc = NVML_SUCCESS;
                break;
            }
        }
        pthread_mutex_unlock(&gpm_lock);
    });
}

/* On a MIG handle: the figures of its GPU instance. */
nvmlReturn_t nvmlGpmSampleGet(nvmlDevice_t device, nvmlGpmSample_t sample)
{
    ANY_DEVICE_CALL(nvmlGpmSampleGet, device,
                    rc = take_sample(gpu, gpu_index_of(device),
                                     mig ? mig->gpu_instance : GPM_WHOLE_GPU, sample));
}

nvmlReturn_t nvmlGpmMigSampleGet(nvmlDevice_t device, unsigned int gpu_instance,
                                 nvmlGpmSample_t sample)
{
    DEVICE_CALL(nvmlGpmMigSampleGet, device, {
        int found = 0;
        for (unsigned int i = 0; i < gpu->n_migs; i++)
            found |= gpu->migs[i].gpu_instance == gpu_instance;
        if (gpm_usable(gpu) != NVML_SUCCESS || !mig_enabled(gpu))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else if (!found)
            rc = NVML_ERROR_NOT_FOUND;
        else
            rc = take_sample(gpu, handle_index(device), gpu_instance, sample);
    });
}

static const gpm_metric_t *metric_by_id(unsigned int id, int *position)
{
    for (int i = 0; i < GPM_METRICS; i++) {
        if (GPM_METRIC_TABLE[i].id == id) {
            *position = i;
            return &GPM_METRIC_TABLE[i];
        }
    }
    return NULL;
}

/* One metric between two samples of the same scope, sample2 the later. */
static void put_metric(const struct nvmlGpmSample_st *first,
                       const struct nvmlGpmSample_st *second, nvmlGpmMetric_t *metric)
{
    int m = -1;
    const gpm_metric_t *what = metric_by_id(metric->metricId, &m);
    memset(&metric->metricInfo, 0, sizeof metric->metricInfo);
    metric->value = 0;
    if (metric->metricId == 0 || metric->metricId >= NVML_GPM_METRIC_MAX) {
        metric->nvmlReturn = NVML_ERROR_INVALID_ARGUMENT;
        return;
    }
    if (!what || !(first->given & second->given & (1u << m))) {
        metric->nvmlReturn = NVML_ERROR_NOT_SUPPORTED;
        return;
    }
    integral_t difference = second->integral[m] - first->integral[m];
    long long elapsed = second->stamp_ns - first->stamp_ns;
    /* Exact for a figure that did not change: rate * elapsed / elapsed. */
    double rate = (double)((long double)difference / (long double)elapsed);
    metric->value = what->is_percent ? rate / 1000.0 : rate / BYTES_PER_MIB;
    metric->nvmlReturn = NVML_SUCCESS;
    metric->metricInfo.shortName = (char *)what->short_name;
    metric->metricInfo.longName = (char *)what->long_name;
    metric->metricInfo.unit = (char *)what->unit;
}

static nvmlReturn_t metrics_between(nvmlGpmMetricsGet_t *request)
{
    if (!request)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (request->version != NVML_GPM_METRICS_GET_VERSION)
        return NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (request->numMetrics > NVML_GPM_METRIC_MAX)
        return NVML_ERROR_INVALID_ARGUMENT;
    nvmlReturn_t rc = NVML_SUCCESS;
    pthread_mutex_lock(&gpm_lock);
    const struct nvmlGpmSample_st *first = request->sample1, *second = request->sample2;
    if (!first || !second || !is_live_locked(request->sample1) ||
        !is_live_locked(request->sample2) || !first->filled || !second->filled)
        rc = NVML_ERROR_INVALID_ARGUMENT; /* not ours, freed, or never filled */
    else if (first->gpu != second->gpu || first->gpu_instance != second->gpu_instance ||
             first->serial != second->serial || second->stamp_ns <= first->stamp_ns)
        rc = NVML_ERROR_INVALID_ARGUMENT; /* two scopes, or not in the order taken */
    else
        for (unsigned int i = 0; i < request->numMetrics; i++)
            put_metric(first, second, &request->metrics[i]);
    pthread_mutex_unlock(&gpm_lock);
    return rc;
}

nvmlReturn_t nvmlGpmMetricsGet(nvmlGpmMetricsGet_t *request)
{
    GLOBAL_CALL(nvmlGpmMetricsGet, rc = metrics_between(request));
}

unsigned int gpm_release_samples(void)
{
    unsigned int count = 0;
    pthread_mutex_lock(&gpm_lock);
    while (live_samples) {
        struct nvmlGpmSample_st *next = live_samples->next;
        free(live_samples);
        live_samples = next;
        count++;
    }
    memset(counters, 0, sizeof counters);
    pthread_mutex_unlock(&gpm_lock);
    return count;
}
