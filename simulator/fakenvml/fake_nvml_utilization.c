/*
 * Per-process and video-engine utilization: the `process_utilization`,
 * `process_utilization_period`, `encoder_utilization` and `decoder_utilization` keys.
 *
 * A real driver keeps a buffer of samples and stamps each with the CPU time it was taken; a
 * reader passes the newest stamp it has seen and gets only newer samples, or
 * NVML_ERROR_NOT_FOUND. Here every sample of a GPU carries the same stamp: the time the
 * scenario was loaded, moved forward by whole sampling periods as they pass. So a reader that
 * polls with the last stamp it saw gets each sample once per period and once per change of the
 * file, and NOT_FOUND in between, as from a real GPU.
 */
#include "fake_nvml.h"

#include <stdlib.h>
#include <time.h>

#define DEFAULT_SAMPLE_PERIOD_US 1000000ull
#define MAX_SAMPLE_PERIOD_US 86400000000ull
#define VIDEO_PERIOD_US 1000000u /* samplingPeriodUs of the encoder and decoder readings */

static unsigned long long now_us(void)
{
    struct timespec now;
    clock_gettime(CLOCK_REALTIME, &now); /* the CPU time readers compare stamps with */
    return (unsigned long long)now.tv_sec * 1000000ull + (unsigned long long)now.tv_nsec / 1000;
}

/* ---------------------------------------------------------------- scenario keys */

/* The first utilization key of a [gpu] marks the query as supported and dates the samples:
 * parsing happens when the file is (re)loaded. */
static void support_samples(gpu_t *gpu)
{
    if (!gpu->has_samples) {
        gpu->has_samples = 1;
        gpu->samples_loaded_us = now_us();
    }
}

/* process_utilization <pid> <sm%> <memory%> <encoder%> <decoder%> */
static int parse_sample(const char *p, const char *end, gpu_t *gpu, parse_error_t *error)
{
    static const char *const what[] = {"a pid", "sm percent", "memory percent",
                                       "encoder percent", "decoder percent"};
    unsigned long long values[5];
    const char *token;
    for (int i = 0; i < 5; i++) {
        size_t length = next_token(&p, end, &token);
        if (parse_number(token, length, i == 0 ? 0xFFFFFFFFull : 100, &values[i]) != 0)
            return fail_parse(error, "process_utilization needs %s%s, got '%s'", what[i],
                              i == 0 ? "" : " from 0 to 100", shown(token, length));
    }
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the process utilization");
    if (gpu->n_samples == gpu->cap_samples) {
        size_t capacity = gpu->cap_samples ? gpu->cap_samples * 2 : 16;
        sample_t *grown = realloc(gpu->samples, capacity * sizeof *grown);
        if (!grown)
            return fail_parse(error, "out of memory");
        gpu->samples = grown;
        gpu->cap_samples = capacity;
    }
    gpu->samples[gpu->n_samples++] = (sample_t){
        .pid = (unsigned int)values[0],
        .sm = (unsigned int)values[1],
        .memory = (unsigned int)values[2],
        .encoder = (unsigned int)values[3],
        .decoder = (unsigned int)values[4],
    };
    support_samples(gpu);
    return 0;
}

static int parse_period(const char *p, const char *end, gpu_t *gpu, parse_error_t *error)
{
    const char *token;
    size_t length = next_token(&p, end, &token);
    if (gpu->has_sample_period)
        return fail_parse(error, "duplicate key 'process_utilization_period' in this [gpu] "
                          "section");
    if (parse_number(token, length, MAX_SAMPLE_PERIOD_US, &gpu->sample_period_us) != 0)
        return fail_parse(error, "process_utilization_period needs microseconds from 0 to "
                          "%llu, got '%s'", MAX_SAMPLE_PERIOD_US, shown(token, length));
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the value of "
                          "process_utilization_period");
    gpu->has_sample_period = 1;
    support_samples(gpu);
    return 0;
}

int parse_utilization_line(const char *key, size_t key_length, const char *value,
                           const char *end, gpu_t *gpu, parse_error_t *error)
{
    int rc;
    if (token_is(key, key_length, "process_utilization"))
        rc = parse_sample(value, end, gpu, error);
    else if (token_is(key, key_length, "process_utilization_period"))
        rc = parse_period(value, end, gpu, error);
    else
        return 0;
    return rc == 0 ? 1 : -1;
}

/* ---------------------------------------------------------------- entry points */

/* The stamp of the GPU's samples now: the load time plus the whole periods since. */
static unsigned long long sample_stamp(const gpu_t *gpu)
{
    unsigned long long period = gpu->has_sample_period ? gpu->sample_period_us
                                                       : DEFAULT_SAMPLE_PERIOD_US;
    unsigned long long loaded = gpu->samples_loaded_us, now = now_us();
    if (period == 0 || now <= loaded)
        return loaded;
    return loaded + (now - loaded) / period * period;
}

/* The size probe (utilization NULL, or *count too small) answers INSUFFICIENT_SIZE with the
 * count; no sample newer than last_seen is NOT_FOUND, even for the probe. */
static nvmlReturn_t put_samples(const gpu_t *gpu, nvmlProcessUtilizationSample_t *utilization,
                                unsigned int *count, unsigned long long last_seen)
{
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!gpu->has_samples || mig_enabled(gpu))
        return NVML_ERROR_NOT_SUPPORTED;
    unsigned long long stamp = sample_stamp(gpu);
    unsigned int n = stamp > last_seen ? (unsigned int)gpu->n_samples : 0;
    if (n == 0)
        return NVML_ERROR_NOT_FOUND;
    if (!utilization || *count < n) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    for (unsigned int i = 0; i < n; i++) {
        const sample_t *sample = &gpu->samples[i];
        utilization[i] = (nvmlProcessUtilizationSample_t){
            .pid = sample->pid,
            .timeStamp = stamp,
            .smUtil = sample->sm,
            .memUtil = sample->memory,
            .encUtil = sample->encoder,
            .decUtil = sample->decoder,
        };
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetProcessUtilization(nvmlDevice_t device,
                                             nvmlProcessUtilizationSample_t *utilization,
                                             unsigned int *count,
                                             unsigned long long last_seen)
{
    DEVICE_CALL(nvmlDeviceGetProcessUtilization, device,
                rc = put_samples(gpu, utilization, count, last_seen));
}

/* Like the real library, a GPU in MIG mode cannot tell. */
static nvmlReturn_t put_video(const gpu_t *gpu, enum field field, unsigned int *utilization,
                              unsigned int *period_us)
{
    if (!utilization || !period_us)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!has(gpu, field) || mig_enabled(gpu))
        return NVML_ERROR_NOT_SUPPORTED;
    *utilization = (unsigned int)gpu->num[field];
    *period_us = VIDEO_PERIOD_US;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetEncoderUtilization(nvmlDevice_t device, unsigned int *utilization,
                                             unsigned int *period_us)
{
    DEVICE_CALL(nvmlDeviceGetEncoderUtilization, device,
                rc = put_video(gpu, F_ENCODER_UTILIZATION, utilization, period_us));
}

nvmlReturn_t nvmlDeviceGetDecoderUtilization(nvmlDevice_t device, unsigned int *utilization,
                                             unsigned int *period_us)
{
    DEVICE_CALL(nvmlDeviceGetDecoderUtilization, device,
                rc = put_video(gpu, F_DECODER_UTILIZATION, utilization, period_us));
}
