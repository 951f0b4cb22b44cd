/*
 * The scenario file parser: bytes in, a state_t out, or the line and reason it is wrong.
 * The format is described in README.md.
 */
#include "fake_nvml.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define AS_NAME(name) #name,
const char *const ENTRY_NAMES[EP_COUNT] = {ENTRY_POINTS(AS_NAME)};

/* Text limits are the NVML buffer sizes less the terminating NUL. */
static const struct {
    const char *key;
    unsigned long long max;
} FIELDS[F_COUNT] = {
    [F_NAME] = {"name", TEXT_SIZE - 1},
    [F_UUID] = {"uuid", 95},
    [F_SERIAL] = {"serial", 29},
    [F_PCI_BUS_ID] = {"pci_bus_id", 31},
    [F_MINOR_NUMBER] = {"minor_number", 0xFFFFFFFFull},
    [F_MEMORY_TOTAL] = {"memory_total", ~0ull},
    [F_MEMORY_USED] = {"memory_used", ~0ull},
    [F_MEMORY_RESERVED] = {"memory_reserved", ~0ull},
    [F_UTILIZATION_GPU] = {"utilization_gpu", 100},
    [F_UTILIZATION_MEMORY] = {"utilization_memory", 100},
    [F_TEMPERATURE] = {"temperature", 0xFFFFFFFFull},
    [F_POWER_USAGE] = {"power_usage", 0xFFFFFFFFull},
    [F_POWER_LIMIT] = {"power_limit", 0xFFFFFFFFull},
    [F_ENERGY] = {"energy", ~0ull},
    [F_FAN_SPEED] = {"fan_speed", 100},
    [F_CLOCK_SM] = {"clock_sm", 0xFFFFFFFFull},
    [F_CLOCK_MEM] = {"clock_mem", 0xFFFFFFFFull},
    [F_PSTATE] = {"pstate", 32}, /* 0-15, or 32: NVML_PSTATE_UNKNOWN */
    [F_ECC_CORRECTED] = {"ecc_corrected", ~0ull},
    [F_ECC_UNCORRECTED] = {"ecc_uncorrected", ~0ull},
    [F_THROTTLE_REASONS] = {"throttle_reasons", ~0ull},
    [F_ENCODER_UTILIZATION] = {"encoder_utilization", 100},
    [F_DECODER_UTILIZATION] = {"decoder_utilization", 100},
    [F_PCIE_REPLAY] = {"pcie_replay", 0xFFFFFFFFull},
    [F_ECC_AGGREGATE_CORRECTED] = {"ecc_aggregate_corrected", ~0ull},
    [F_ECC_AGGREGATE_UNCORRECTED] = {"ecc_aggregate_uncorrected", ~0ull},
    [F_NVLINK_LINKS] = {"nvlink_links", NVML_NVLINK_MAX_LINKS},
};

void free_state(state_t *state)
{
    if (!state)
        return;
    for (unsigned int i = 0; i < state->n_gpus; i++) {
        free(state->gpus[i].procs);
        free(state->gpus[i].samples);
    }
    free(state);
}

int fail_parse(parse_error_t *error, const char *format, ...)
{
    va_list args;
    va_start(args, format);
    vsnprintf(error->message, sizeof error->message, format, args);
    va_end(args);
    return -1;
}

/* A printable copy of a token for error messages (keys may hold any bytes). */
const char *shown(const char *token, size_t length)
{
    static __thread char buffer[48];
    size_t n = length < sizeof buffer - 1 ? length : sizeof buffer - 1;
    for (size_t i = 0; i < n; i++)
        buffer[i] = isprint((unsigned char)token[i]) ? token[i] : '?';
    buffer[n] = '\0';
    return buffer;
}

static int is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static const char *skip_blanks(const char *p, const char *end)
{
    while (p < end && is_blank(*p))
        p++;
    return p;
}

/* The next blank-separated token; the cursor moves past it. Empty at end or comment. */
size_t next_token(const char **cursor, const char *end, const char **token)
{
    const char *p = skip_blanks(*cursor, end);
    *token = p;
    if (p < end && *p == '#')
        return 0;
    while (p < end && !is_blank(*p))
        p++;
    *cursor = p;
    return (size_t)(p - *token);
}

/* Nothing but blanks or a comment left on the line. */
int at_end(const char *p, const char *end)
{
    p = skip_blanks(p, end);
    return p == end || *p == '#';
}

int token_is(const char *token, size_t length, const char *word)
{
    return strlen(word) == length && memcmp(token, word, length) == 0;
}

/* Decimal, or hexadecimal with 0x; never octal, so "010" is ten. */
int parse_number(const char *token, size_t length, unsigned long long max,
                 unsigned long long *value)
{
    unsigned int base = 10;
    if (length > 2 && token[0] == '0' && (token[1] == 'x' || token[1] == 'X')) {
        base = 16;
        token += 2;
        length -= 2;
    }
    if (length == 0)
        return -1;
    unsigned long long v = 0;
    for (size_t i = 0; i < length; i++) {
        int c = (unsigned char)token[i], digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if (base == 16 && isxdigit(c))
            digit = tolower(c) - 'a' + 10;
        else
            return -1;
        if (v > (~0ull - (unsigned long long)digit) / base)
            return -1;
        v = v * base + (unsigned long long)digit;
    }
    if (v > max)
        return -1;
    *value = v;
    return 0;
}

static int parse_seconds(const char *token, size_t length, double *seconds)
{
    char buffer[32], *after;
    if (length == 0 || length >= sizeof buffer)
        return -1;
    memcpy(buffer, token, length);
    buffer[length] = '\0';
    errno = 0;
    double v = strtod(buffer, &after);
    if (errno != 0 || *after != '\0' || !isfinite(v) || v < 0 || v > MAX_BLOCK_SECONDS)
        return -1;
    *seconds = v;
    return 0;
}

static int find_entry_point(const char *token, size_t length)
{
    for (int i = 0; i < EP_COUNT; i++)
        if (token_is(token, length, ENTRY_NAMES[i]))
            return i;
    return -1;
}

/* `fail <entry point> <code>` or `block <entry point> <seconds>`. */
static int parse_fault(int is_block, const char *p, const char *end, faults_t *faults,
                       parse_error_t *error)
{
    const char *token;
    size_t length = next_token(&p, end, &token);
    int ep = find_entry_point(token, length);
    if (ep < 0)
        return fail_parse(error, "unknown entry point '%s' (see README.md for the list)",
                          shown(token, length));
    length = next_token(&p, end, &token);
    if (is_block) {
        double seconds;
        if (parse_seconds(token, length, &seconds) != 0)
            return fail_parse(error, "block needs seconds from 0 to %.0f, got '%s'",
                              MAX_BLOCK_SECONDS, shown(token, length));
        if (faults->block[ep] > 0)
            return fail_parse(error, "a second block for %s", ENTRY_NAMES[ep]);
        faults->block[ep] = seconds;
    } else {
        unsigned long long code;
        if (parse_number(token, length, 999, &code) != 0)
            return fail_parse(error, "fail needs an nvmlReturn_t code from 0 to 999, got '%s'",
                              shown(token, length));
        if (faults->fail[ep] != 0)
            return fail_parse(error, "a second fail for %s", ENTRY_NAMES[ep]);
        faults->fail[ep] = (int)code;
    }
    return at_end(p, end) ? 0 : fail_parse(error, "unexpected text after the value");
}

static int parse_process(const char *p, const char *end, gpu_t *gpu, parse_error_t *error)
{
    const char *token;
    size_t length = next_token(&p, end, &token);
    process_t process;
    if (token_is(token, length, "compute"))
        process.kind = COMPUTE;
    else if (token_is(token, length, "graphics"))
        process.kind = GRAPHICS;
    else
        return fail_parse(error, "process kind must be compute or graphics, got '%s'",
                          shown(token, length));
    unsigned long long pid, used;
    length = next_token(&p, end, &token);
    if (parse_number(token, length, 0xFFFFFFFFull, &pid) != 0)
        return fail_parse(error, "process needs a pid, got '%s'", shown(token, length));
    length = next_token(&p, end, &token);
    if (parse_number(token, length, ~0ull, &used) != 0)
        return fail_parse(error, "process needs used GPU memory in bytes, got '%s'",
                          shown(token, length));
    /* On a GPU in MIG mode: the GPU instance and compute instance it runs in. */
    process.gpu_instance = process.compute_instance = NO_INSTANCE;
    length = next_token(&p, end, &token);
    if (length > 0) {
        unsigned long long gi, ci;
        if (parse_number(token, length, 0xFFFFFFFEull, &gi) != 0)
            return fail_parse(error, "process needs a GPU instance id after the bytes, got '%s'",
                              shown(token, length));
        length = next_token(&p, end, &token);
        if (parse_number(token, length, 0xFFFFFFFEull, &ci) != 0)
            return fail_parse(error, "process needs a compute instance id after the GPU "
                              "instance id, got '%s'", shown(token, length));
        if (!find_mig(gpu, (unsigned int)gi, (unsigned int)ci))
            return fail_parse(error, "process is in GPU instance %llu compute instance %llu, "
                              "but no mig line above declares it", gi, ci);
        process.gpu_instance = (unsigned int)gi;
        process.compute_instance = (unsigned int)ci;
    }
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the process");
    process.pid = (unsigned int)pid;
    process.used_bytes = used;
    if (gpu->n_procs == gpu->cap_procs) {
        size_t capacity = gpu->cap_procs ? gpu->cap_procs * 2 : 16;
        process_t *grown = realloc(gpu->procs, capacity * sizeof *grown);
        if (!grown)
            return fail_parse(error, "out of memory");
        gpu->procs = grown;
        gpu->cap_procs = capacity;
    }
    gpu->procs[gpu->n_procs++] = process;
    return 0;
}

static int find_field(const char *key, size_t length)
{
    for (int i = 0; i < F_COUNT; i++)
        if (token_is(key, length, FIELDS[i].key))
            return i;
    return -1;
}

static int parse_gpu_line(const char *key, size_t key_length, const char *value,
                          const char *end, gpu_t *gpu, parse_error_t *error)
{
    if (token_is(key, key_length, "fail") || token_is(key, key_length, "block"))
        return parse_fault(key_length == 5, value, end, &gpu->faults, error);
    if (token_is(key, key_length, "process"))
        return parse_process(value, end, gpu, error);
    if (token_is(key, key_length, "lost")) {
        if (!at_end(value, end))
            return fail_parse(error, "lost takes no value");
        gpu->lost = 1;
        return 0;
    }
    int parsed = parse_mig_line(key, key_length, value, end, gpu, error);
    if (parsed == 0)
        parsed = parse_utilization_line(key, key_length, value, end, gpu, error);
    if (parsed == 0)
        parsed = parse_health_line(key, key_length, value, end, gpu, error);
    if (parsed == 0)
        parsed = parse_gpm_line(key, key_length, value, end, gpu, error);
    if (parsed != 0)
        return parsed < 0 ? -1 : 0;
    int field = find_field(key, key_length);
    if (field < 0)
        return fail_parse(error, "unknown key '%s' in a [gpu] section", shown(key, key_length));
    if (gpu->present & FIELD_BIT(field))
        return fail_parse(error, "duplicate key '%s' in this [gpu] section", FIELDS[field].key);
    size_t length = (size_t)(end - value);
    if (field < TEXT_FIELDS) {
        /* Raw bytes to the end of the line: names may hold '#', quotes, anything but NUL. */
        if (length == 0 || length > FIELDS[field].max)
            return fail_parse(error, "%s must be 1 to %llu bytes, got %zu", FIELDS[field].key,
                              FIELDS[field].max, length);
        memcpy(gpu->text[field], value, length);
        gpu->text[field][length] = '\0';
    } else {
        const char *token;
        length = next_token(&value, end, &token);
        if (parse_number(token, length, FIELDS[field].max, &gpu->num[field]) != 0)
            return fail_parse(error, "%s needs an integer from 0 to %llu, got '%s'",
                              FIELDS[field].key, FIELDS[field].max, shown(token, length));
        if (!at_end(value, end))
            return fail_parse(error, "unexpected text after the value of %s", FIELDS[field].key);
        if (field == F_PSTATE && gpu->num[field] > 15 && gpu->num[field] != NVML_PSTATE_UNKNOWN)
            return fail_parse(error, "pstate needs 0 to 15, or 32 (unknown), got %llu",
                              gpu->num[field]);
    }
    gpu->present |= FIELD_BIT(field);
    return 0;
}

static int parse_global_line(const char *key, size_t key_length, const char *value,
                             const char *end, state_t *state, parse_error_t *error)
{
    if (token_is(key, key_length, "fail") || token_is(key, key_length, "block"))
        return parse_fault(key_length == 5, value, end, &state->faults, error);
    int is_driver = token_is(key, key_length, "driver_version");
    if (is_driver || token_is(key, key_length, "nvml_version")) {
        char *target = is_driver ? state->driver_version : state->nvml_version;
        unsigned int bit = 1u << (is_driver ? G_DRIVER_VERSION : G_NVML_VERSION);
        size_t length = (size_t)(end - value);
        if (state->present & bit)
            return fail_parse(error, "duplicate key '%s'", shown(key, key_length));
        if (length == 0 || length >= sizeof state->driver_version)
            return fail_parse(error, "%s must be 1 to 79 bytes", shown(key, key_length));
        memcpy(target, value, length);
        target[length] = '\0';
        state->present |= bit;
        return 0;
    }
    if (token_is(key, key_length, "cuda_driver_version")) {
        const char *token;
        size_t length = next_token(&value, end, &token);
        unsigned long long version;
        if (state->present & (1u << G_CUDA_DRIVER_VERSION))
            return fail_parse(error, "duplicate key 'cuda_driver_version'");
        if (parse_number(token, length, 0x7FFFFFFF, &version) != 0 || !at_end(value, end))
            return fail_parse(error, "cuda_driver_version needs an integer such as 12040");
        state->cuda_driver_version = (int)version;
        state->present |= 1u << G_CUDA_DRIVER_VERSION;
        return 0;
    }
    if (find_field(key, key_length) >= 0 || token_is(key, key_length, "process") ||
        token_is(key, key_length, "lost") || is_health_key(key, key_length) ||
        is_gpm_key(key, key_length))
        return fail_parse(error, "'%s' belongs in a [gpu] section", shown(key, key_length));
    return fail_parse(error, "unknown key '%s'", shown(key, key_length));
}

static int check_gpu(const gpu_t *gpu, unsigned int index, parse_error_t *error)
{
    unsigned long long reserved = gpu->num[F_MEMORY_RESERVED]; /* absent: 0 */
    unsigned long long both = FIELD_BIT(F_MEMORY_TOTAL) | FIELD_BIT(F_MEMORY_USED);
    if ((gpu->present & both) == both &&
        (gpu->num[F_MEMORY_USED] > gpu->num[F_MEMORY_TOTAL] ||
         reserved > gpu->num[F_MEMORY_TOTAL] - gpu->num[F_MEMORY_USED])) {
        error->line = gpu->first_line;
        return fail_parse(error, "GPU %u: memory_used + memory_reserved exceed memory_total",
                          index);
    }
    return check_mig(gpu, index, error);
}

static int parse_line(const char *p, const char *end, state_t *state, parse_error_t *error)
{
    while (end > p && (is_blank(end[-1]) || end[-1] == '\r'))
        end--;
    p = skip_blanks(p, end);
    if (p == end || *p == '#')
        return 0;
    const char *key = p;
    while (p < end && !is_blank(*p))
        p++;
    size_t key_length = (size_t)(p - key);
    const char *value = skip_blanks(p, end);
    if (token_is(key, key_length, "[gpu]")) {
        if (!at_end(value, end))
            return fail_parse(error, "[gpu] takes no value");
        if (state->n_gpus > 0 && check_gpu(&state->gpus[state->n_gpus - 1],
                                           state->n_gpus - 1, error) != 0)
            return -1;
        if (state->n_gpus == MAX_GPUS)
            return fail_parse(error, "more than %d GPUs", MAX_GPUS);
        state->gpus[state->n_gpus++].first_line = error->line;
        return 0;
    }
    if (state->n_gpus == 0)
        return parse_global_line(key, key_length, value, end, state, error);
    return parse_gpu_line(key, key_length, value, end, &state->gpus[state->n_gpus - 1], error);
}

state_t *parse_scenario(const char *data, size_t length, parse_error_t *error)
{
    state_t *state = calloc(1, sizeof *state);
    if (!state) {
        fail_parse(error, "out of memory");
        return NULL;
    }
    if (memchr(data, '\0', length)) {
        error->line = 1;
        for (const char *p = data; *p; p++)
            error->line += *p == '\n';
        fail_parse(error, "NUL byte");
        free_state(state);
        return NULL;
    }
    const char *p = data, *end = data + length;
    for (error->line = 1; p < end; error->line++) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (!eol)
            eol = end;
        if (parse_line(p, eol, state, error) != 0) {
            free_state(state);
            return NULL;
        }
        p = eol + 1;
    }
    if (state->n_gpus > 0 &&
        check_gpu(&state->gpus[state->n_gpus - 1], state->n_gpus - 1, error) != 0) {
        free_state(state);
        return NULL;
    }
    return state;
}

