/*
 * The GPU Performance Monitoring keys of a [gpu] section: `gpm` (whether the GPU has GPM),
 * `gpm_metric` (a figure of the whole GPU) and `gpm_mig_metric` (a figure of one GPU instance).
 * The format is described in README.md; fake_nvml_gpm.c serves what is parsed here.
 */
#include "fake_nvml.h"

#include <string.h>

#define MAX_MILLI_PERCENT 100000ull
#define MAX_BYTES_PER_SECOND (1ull << 48) /* 256 TiB/s: room for any link, and for the sums */

/* The figures a scenario can give, by NVML metric id; percentages are 0-100 like NVML's. */
const gpm_metric_t GPM_METRIC_TABLE[GPM_METRICS] = {
    {"graphics_active", NVML_GPM_METRIC_GRAPHICS_UTIL, 1, "gr_util",
     "Percentage of time any compute/graphics app was active on the GPU", "%"},
    {"sm_active", NVML_GPM_METRIC_SM_UTIL, 1, "sm_util", "Percentage of SMs that were busy", "%"},
    {"sm_occupancy", NVML_GPM_METRIC_SM_OCCUPANCY, 1, "sm_occupancy",
     "Percentage of warps that were active vs theoretical maximum", "%"},
    {"integer_active", NVML_GPM_METRIC_INTEGER_UTIL, 1, "int_util",
     "Percentage of time the GPU's SMs were doing integer operations", "%"},
    {"tensor_active", NVML_GPM_METRIC_ANY_TENSOR_UTIL, 1, "any_tensor_util",
     "Percentage of time the GPU's SMs were doing ANY tensor operations", "%"},
    {"dram_active", NVML_GPM_METRIC_DRAM_BW_UTIL, 1, "dram_bw_util",
     "Percentage of DRAM bw used vs theoretical maximum", "%"},
    {"fp64_active", NVML_GPM_METRIC_FP64_UTIL, 1, "fp64_util",
     "Percentage of time the GPU's SMs were doing non-tensor FP64 math", "%"},
    {"fp32_active", NVML_GPM_METRIC_FP32_UTIL, 1, "fp32_util",
     "Percentage of time the GPU's SMs were doing non-tensor FP32 math", "%"},
    {"fp16_active", NVML_GPM_METRIC_FP16_UTIL, 1, "fp16_util",
     "Percentage of time the GPU's SMs were doing non-tensor FP16 math", "%"},
    {"pcie_tx", NVML_GPM_METRIC_PCIE_TX_PER_SEC, 0, "pcie_tx", "PCIe traffic from this GPU",
     "MiB/sec"},
    {"pcie_rx", NVML_GPM_METRIC_PCIE_RX_PER_SEC, 0, "pcie_rx", "PCIe traffic to this GPU",
     "MiB/sec"},
    {"nvlink_rx", NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC, 0, "nvlink_total_rx",
     "NvLink read bandwidth for all links", "MiB/sec"},
    {"nvlink_tx", NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC, 0, "nvlink_total_tx",
     "NvLink write bandwidth for all links", "MiB/sec"},
};

static const char *const GPM_KEYS[] = {"gpm", "gpm_metric", "gpm_mig_metric"};

int is_gpm_key(const char *key, size_t key_length)
{
    for (size_t i = 0; i < sizeof GPM_KEYS / sizeof GPM_KEYS[0]; i++)
        if (token_is(key, key_length, GPM_KEYS[i]))
            return 1;
    return 0;
}

/* "45", "45.5", "12.125": a percentage with at most three decimals, in milli-percent. */
static int parse_percent(const char *token, size_t length, unsigned long long *milli)
{
    const char *dot = memchr(token, '.', length);
    size_t whole = dot ? (size_t)(dot - token) : length;
    size_t decimals = dot ? length - whole - 1 : 0;
    unsigned long long integer, fraction = 0;
    if (whole == 0 || decimals > 3 || (dot && decimals == 0) ||
        parse_number(token, whole, 100, &integer) != 0)
        return -1;
    for (size_t i = 0; i < decimals; i++) {
        char c = dot[1 + i];
        if (c < '0' || c > '9')
            return -1;
        fraction = fraction * 10 + (unsigned long long)(c - '0');
    }
    for (size_t i = decimals; i < 3; i++)
        fraction *= 10;
    *milli = integer * 1000 + fraction;
    return *milli <= MAX_MILLI_PERCENT ? 0 : -1;
}

static int parse_mode(const char *p, const char *end, gpu_t *gpu, parse_error_t *error)
{
    static const struct {
        const char *word;
        enum gpm_mode mode;
    } modes[] = {
        {"supported", GPM_SUPPORTED}, {"unsupported", GPM_UNSUPPORTED}, {"refused", GPM_REFUSED},
    };
    const char *token;
    size_t length = next_token(&p, end, &token);
    if (gpu->gpm.mode != GPM_ABSENT)
        return fail_parse(error, "duplicate key 'gpm' in this [gpu] section");
    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
        if (token_is(token, length, modes[i].word)) {
            if (!at_end(p, end))
                return fail_parse(error, "unexpected text after the value of gpm");
            gpu->gpm.mode = modes[i].mode;
            return 0;
        }
    }
    return fail_parse(error, "gpm must be supported, unsupported or refused, got '%s'",
                      shown(token, length));
}

static gpm_scope_t *scope_of(gpm_t *gpm, unsigned int gpu_instance)
{
    for (unsigned int i = 0; i < gpm->n_scopes; i++)
        if (gpm->scopes[i].gpu_instance == gpu_instance)
            return &gpm->scopes[i];
    if (gpm->n_scopes == MAX_GPM_SCOPES)
        return NULL;
    gpm_scope_t *scope = &gpm->scopes[gpm->n_scopes++];
    memset(scope, 0, sizeof *scope);
    scope->gpu_instance = gpu_instance;
    return scope;
}

/* `gpm_metric <name> <value>` or `gpm_mig_metric <gpu instance> <name> <value>`. */
static int parse_metric(int per_instance, const char *p, const char *end, gpu_t *gpu,
                        parse_error_t *error)
{
    const char *key = per_instance ? "gpm_mig_metric" : "gpm_metric";
    const char *token;
    size_t length;
    unsigned long long gpu_instance = GPM_WHOLE_GPU;
    if (gpu->gpm.mode == GPM_ABSENT)
        return fail_parse(error, "%s needs a 'gpm' line above it", key);
    if (per_instance) {
        length = next_token(&p, end, &token);
        if (parse_number(token, length, 0xFFFFFFFEull, &gpu_instance) != 0)
            return fail_parse(error, "gpm_mig_metric needs a GPU instance id, got '%s'",
                              shown(token, length));
        int declared = 0;
        for (unsigned int i = 0; i < gpu->n_migs; i++)
            declared |= gpu->migs[i].gpu_instance == gpu_instance;
        if (!declared)
            return fail_parse(error, "gpm_mig_metric: no mig line above declares GPU instance "
                              "%llu", gpu_instance);
    }
    length = next_token(&p, end, &token);
    int metric = -1;
    for (int i = 0; i < GPM_METRICS; i++)
        if (token_is(token, length, GPM_METRIC_TABLE[i].key))
            metric = i;
    if (metric < 0)
        return fail_parse(error, "%s: unknown metric '%s' (see README.md for the list)", key,
                          shown(token, length));
    const gpm_metric_t *what = &GPM_METRIC_TABLE[metric];
    unsigned long long rate;
    length = next_token(&p, end, &token);
    if (what->is_percent ? parse_percent(token, length, &rate) != 0
                         : parse_number(token, length, MAX_BYTES_PER_SECOND, &rate) != 0)
        return fail_parse(error, what->is_percent
                                     ? "%s %s needs a percentage from 0 to 100 with at most "
                                       "three decimals, got '%s'"
                                     : "%s %s needs bytes per second, at most 2^48, got '%s'",
                          key, what->key, shown(token, length));
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the value of %s %s", key, what->key);
    gpm_scope_t *scope = scope_of(&gpu->gpm, (unsigned int)gpu_instance);
    if (!scope)
        return fail_parse(error, "more than %d GPU instances with GPM figures", MAX_MIG_DEVICES);
    if (scope->given & (1u << metric))
        return fail_parse(error, "a second %s %s for this %s", key, what->key,
                          per_instance ? "GPU instance" : "GPU");
    scope->given |= 1u << metric;
    scope->rate[metric] = rate;
    return 0;
}

int parse_gpm_line(const char *key, size_t key_length, const char *value, const char *end,
                   gpu_t *gpu, parse_error_t *error)
{
    int rc;
    if (token_is(key, key_length, "gpm"))
        rc = parse_mode(value, end, gpu, error);
    else if (token_is(key, key_length, "gpm_metric"))
        rc = parse_metric(0, value, end, gpu, error);
    else if (token_is(key, key_length, "gpm_mig_metric"))
        rc = parse_metric(1, value, end, gpu, error);
    else
        return 0;
    return rc == 0 ? 1 : -1;
}
