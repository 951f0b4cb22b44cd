/*
 * The GPU-health keys of a [gpu] section that take several values (PCIe link, NVLink links,
 * remapped rows, retired pages, XIDs, event types). Single-number health keys (pcie_replay,
 * ecc_aggregate_*, nvlink_links) are ordinary fields of scenario_parse.c. The format is
 * described in README.md; fake_nvml_health.c serves what is parsed here.
 */
#include "fake_nvml.h"

#include <string.h>

#define MAX_PCIE_GEN 6
#define MAX_PCIE_WIDTH 32
#define PENDING_GIVEN (1u << 31) /* in health_t.retired_given */

static const char *const HEALTH_KEYS[] = {
    "pcie_link", "pcie_throughput", "remapped_rows", "retired_pages", "retired_pages_pending",
    "nvlink", "xid", "event_types",
};

int is_health_key(const char *key, size_t key_length)
{
    for (size_t i = 0; i < sizeof HEALTH_KEYS / sizeof HEALTH_KEYS[0]; i++)
        if (token_is(key, key_length, HEALTH_KEYS[i]))
            return 1;
    return 0;
}

/* The values of `key`, each within its own maximum, and nothing after them. */
static int parse_values(const char *key, const char *p, const char *end, size_t n,
                        const char *const names[], const unsigned long long max[],
                        unsigned long long values[], parse_error_t *error)
{
    for (size_t i = 0; i < n; i++) {
        const char *token;
        size_t length = next_token(&p, end, &token);
        if (parse_number(token, length, max[i], &values[i]) != 0)
            return fail_parse(error, "%s: %s needs an integer from 0 to %llu, got '%s'", key,
                              names[i], max[i], shown(token, length));
    }
    return at_end(p, end) ? 0 : fail_parse(error, "unexpected text after the values of %s", key);
}

static int once(health_t *health, enum health_key bit, const char *key, parse_error_t *error)
{
    if (health->present & (1u << bit))
        return fail_parse(error, "duplicate key '%s' in this [gpu] section", key);
    health->present |= 1u << bit;
    return 0;
}

static int parse_pcie_link(const char *p, const char *end, health_t *health,
                           parse_error_t *error)
{
    static const char *const names[] = {"max_gen", "max_width", "gen", "width"};
    static const unsigned long long max[] = {MAX_PCIE_GEN, MAX_PCIE_WIDTH, MAX_PCIE_GEN,
                                             MAX_PCIE_WIDTH};
    unsigned long long v[4];
    if (parse_values("pcie_link", p, end, 4, names, max, v, error) != 0)
        return -1;
    if (v[0] == 0 || v[1] == 0 || v[2] == 0 || v[3] == 0)
        return fail_parse(error, "pcie_link: generations and widths start at 1");
    if (v[2] > v[0] || v[3] > v[1])
        return fail_parse(error, "pcie_link: gen %llu x%llu exceeds the maximum gen %llu x%llu",
                          v[2], v[3], v[0], v[1]);
    if (once(health, H_PCIE_LINK, "pcie_link", error) != 0)
        return -1;
    health->pcie_max_gen = (unsigned int)v[0];
    health->pcie_max_width = (unsigned int)v[1];
    health->pcie_gen = (unsigned int)v[2];
    health->pcie_width = (unsigned int)v[3];
    return 0;
}

static int parse_pcie_throughput(const char *p, const char *end, health_t *health,
                                 parse_error_t *error)
{
    static const char *const names[] = {"tx_kbps", "rx_kbps"};
    static const unsigned long long max[] = {0xFFFFFFFFull, 0xFFFFFFFFull};
    unsigned long long v[2];
    if (parse_values("pcie_throughput", p, end, 2, names, max, v, error) != 0 ||
        once(health, H_PCIE_THROUGHPUT, "pcie_throughput", error) != 0)
        return -1;
    health->pcie_tx_kbps = (unsigned int)v[0];
    health->pcie_rx_kbps = (unsigned int)v[1];
    return 0;
}

/* Row remapping (Ampere and later) replaced page retirement: a GPU has one or the other. */
static int check_memory_repair(const health_t *health, enum health_key adding,
                               parse_error_t *error)
{
    enum health_key other = adding == H_REMAPPED_ROWS ? H_RETIRED_PAGES : H_REMAPPED_ROWS;
    if (health->present & (1u << other))
        return fail_parse(error, "remapped_rows and retired_pages* exclude each other: a GPU "
                                 "either remaps rows (Ampere and later) or retires pages");
    return 0;
}

static int parse_remapped_rows(const char *p, const char *end, health_t *health,
                               parse_error_t *error)
{
    static const char *const names[] = {"corrected", "uncorrected", "pending", "failure"};
    static const unsigned long long max[] = {0xFFFFFFFFull, 0xFFFFFFFFull, 1, 1};
    unsigned long long v[4];
    if (parse_values("remapped_rows", p, end, 4, names, max, v, error) != 0 ||
        check_memory_repair(health, H_REMAPPED_ROWS, error) != 0 ||
        once(health, H_REMAPPED_ROWS, "remapped_rows", error) != 0)
        return -1;
    health->remapped_corr = (unsigned int)v[0];
    health->remapped_unc = (unsigned int)v[1];
    health->remapped_pending = (unsigned int)v[2];
    health->remapped_failure = (unsigned int)v[3];
    return 0;
}

/* `retired_pages <sbe|dbe> <count>`, once per cause. */
static int parse_retired_pages(const char *p, const char *end, health_t *health,
                               parse_error_t *error)
{
    const char *token;
    size_t length = next_token(&p, end, &token);
    unsigned int cause;
    if (token_is(token, length, "sbe"))
        cause = NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS;
    else if (token_is(token, length, "dbe"))
        cause = NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR;
    else
        return fail_parse(error, "retired_pages: cause must be sbe or dbe, got '%s'",
                          shown(token, length));
    static const char *const names[] = {"count"};
    static const unsigned long long max[] = {MAX_RETIRED_PAGES};
    unsigned long long count;
    if (parse_values("retired_pages", p, end, 1, names, max, &count, error) != 0 ||
        check_memory_repair(health, H_RETIRED_PAGES, error) != 0)
        return -1;
    if (health->retired_given & (1u << cause))
        return fail_parse(error, "a second retired_pages line for cause %s",
                          shown(token, length));
    health->retired_given |= 1u << cause;
    health->retired[cause] = (unsigned int)count;
    health->present |= 1u << H_RETIRED_PAGES;
    return 0;
}

static int parse_retired_pending(const char *p, const char *end, health_t *health,
                                 parse_error_t *error)
{
    static const char *const names[] = {"pending"};
    static const unsigned long long max[] = {1};
    unsigned long long pending;
    if (parse_values("retired_pages_pending", p, end, 1, names, max, &pending, error) != 0 ||
        check_memory_repair(health, H_RETIRED_PAGES, error) != 0)
        return -1;
    if (health->retired_given & PENDING_GIVEN)
        return fail_parse(error, "duplicate key 'retired_pages_pending' in this [gpu] section");
    health->retired_given |= PENDING_GIVEN;
    health->retired_pending = (unsigned int)pending;
    health->present |= 1u << H_RETIRED_PAGES;
    return 0;
}

/* `nvlink <link> <active> <crc_flit> <crc_data> <replay> <recovery>`, after nvlink_links. */
static int parse_nvlink(const char *p, const char *end, const gpu_t *gpu, health_t *health,
                        parse_error_t *error)
{
    if (!has(gpu, F_NVLINK_LINKS))
        return fail_parse(error, "nvlink: give nvlink_links earlier in this [gpu] section");
    unsigned long long links = gpu->num[F_NVLINK_LINKS];
    static const char *const names[] = {"link", "active", "crc_flit", "crc_data", "replay",
                                        "recovery"};
    const unsigned long long max[] = {NVML_NVLINK_MAX_LINKS - 1, 1, ~0ull, ~0ull, ~0ull, ~0ull};
    unsigned long long v[6];
    if (parse_values("nvlink", p, end, 6, names, max, v, error) != 0)
        return -1;
    if (v[0] >= links)
        return fail_parse(error, "nvlink: link %llu is not below nvlink_links %llu", v[0],
                          links);
    unsigned long long bit = 1ull << (v[0] % 64);
    if (health->nvlink_given[v[0] / 64] & bit)
        return fail_parse(error, "a second nvlink line for link %llu", v[0]);
    health->nvlink_given[v[0] / 64] |= bit;
    health->nvlink[v[0]] = (nvlink_t){(unsigned int)v[1], v[2], v[3], v[4], v[5]};
    return 0;
}

/* `xid <code> [<id>]`; the id defaults to the line's position among the section's xid lines. */
static int parse_xid(const char *p, const char *end, health_t *health, parse_error_t *error)
{
    const char *token;
    unsigned long long code, id = health->n_xids;
    size_t length = next_token(&p, end, &token);
    if (parse_number(token, length, 0xFFFFFFFFull, &code) != 0)
        return fail_parse(error, "xid: code needs an integer from 0 to 4294967295, got '%s'",
                          shown(token, length));
    length = next_token(&p, end, &token);
    if (length > 0 && parse_number(token, length, 0xFFFFFFFFull, &id) != 0)
        return fail_parse(error, "xid: id needs an integer from 0 to 4294967295, got '%s'",
                          shown(token, length));
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the values of xid");
    if (health->n_xids == MAX_XIDS)
        return fail_parse(error, "more than %d xid lines in this [gpu] section", MAX_XIDS);
    for (unsigned int i = 0; i < health->n_xids; i++)
        if (health->xids[i].id == id)
            return fail_parse(error, "xid: id %llu is already used in this [gpu] section", id);
    health->xids[health->n_xids++] = (xid_t){code, (unsigned int)id};
    return 0;
}

static int parse_event_types(const char *p, const char *end, health_t *health,
                             parse_error_t *error)
{
    static const char *const names[] = {"mask"};
    static const unsigned long long max[] = {~0ull};
    unsigned long long mask;
    if (parse_values("event_types", p, end, 1, names, max, &mask, error) != 0)
        return -1;
    if (mask & ~(unsigned long long)nvmlEventTypeAll)
        return fail_parse(error, "event_types: 0x%llx holds bits outside nvmlEventTypeAll (0x%llx)",
                          mask, (unsigned long long)nvmlEventTypeAll);
    if (once(health, H_EVENT_TYPES, "event_types", error) != 0)
        return -1;
    health->event_types = mask;
    return 0;
}

int parse_health_line(const char *key, size_t key_length, const char *value, const char *end,
                      gpu_t *gpu, parse_error_t *error)
{
    health_t *health = &gpu->health;
    int rc;
    if (token_is(key, key_length, "pcie_link"))
        rc = parse_pcie_link(value, end, health, error);
    else if (token_is(key, key_length, "pcie_throughput"))
        rc = parse_pcie_throughput(value, end, health, error);
    else if (token_is(key, key_length, "remapped_rows"))
        rc = parse_remapped_rows(value, end, health, error);
    else if (token_is(key, key_length, "retired_pages"))
        rc = parse_retired_pages(value, end, health, error);
    else if (token_is(key, key_length, "retired_pages_pending"))
        rc = parse_retired_pending(value, end, health, error);
    else if (token_is(key, key_length, "nvlink"))
        rc = parse_nvlink(value, end, gpu, health, error);
    else if (token_is(key, key_length, "xid"))
        rc = parse_xid(value, end, health, error);
    else if (token_is(key, key_length, "event_types"))
        rc = parse_event_types(value, end, health, error);
    else
        return 0;
    return rc == 0 ? 1 : -1;
}
