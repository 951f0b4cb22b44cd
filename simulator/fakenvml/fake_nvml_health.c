/*
 * GPU-health entry points: XID events, memory repair (remapped rows, retired pages), PCIe and
 * NVLink state and counters, and field values. They run the prologue of fake_nvml.c
 * (DEVICE_CALL / GLOBAL_CALL) like every other entry point, so `fail`, `block`, `lost` and hot
 * reload apply to them unchanged; the keys they serve are parsed in health_parse.c.
 *
 * Events: an event set records, per GPU slot, the event types registered. The XIDs a GPU's
 * `xid` lines list are delivered once per process each, identified by (GPU index, id, code),
 * so a reload that appends a line delivers only that line. `events_lock` guards the live sets
 * and the delivered record; it is taken after the state lock, never before.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* How often a waiting caller looks for a reloaded file: a real driver waits in the kernel at no
 * cost, so a benchmark must not charge the exporter for a fast poll here. */
#define WAIT_POLL_NS 100000000LL
/* What a GPU without an `event_types` key says it supports. */
#define DEFAULT_EVENT_TYPES                                                            \
    (nvmlEventTypeSingleBitEccError | nvmlEventTypeDoubleBitEccError | nvmlEventTypePState | \
     nvmlEventTypeXidCriticalError)

/* ---------------------------------------------------------------- events */

struct nvmlEventSet_st {
    struct nvmlEventSet_st *next;
    unsigned long long registered[MAX_GPUS]; /* event types, by GPU slot */
};

typedef struct {
    unsigned int gpu, id;
    unsigned long long code;
} delivered_t;

static pthread_mutex_t events_lock = PTHREAD_MUTEX_INITIALIZER;
static struct nvmlEventSet_st *live_sets; /* events_lock */
static delivered_t *delivered;            /* events_lock; kept for the life of the process */
static size_t n_delivered, cap_delivered;

static int is_live_locked(nvmlEventSet_t set)
{
    for (struct nvmlEventSet_st *s = live_sets; s; s = s->next)
        if (s == set)
            return 1;
    return 0;
}

static long long monotonic_ns(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void sleep_ns(long long ns)
{
    struct timespec left = {(time_t)(ns / 1000000000LL), (long)(ns % 1000000000LL)};
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
}

static nvmlReturn_t create_set(nvmlEventSet_t *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    struct nvmlEventSet_st *set = calloc(1, sizeof *set);
    if (!set)
        return NVML_ERROR_MEMORY;
    pthread_mutex_lock(&events_lock);
    set->next = live_sets;
    live_sets = set;
    pthread_mutex_unlock(&events_lock);
    *out = set;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetCreate(nvmlEventSet_t *set)
{
    GLOBAL_CALL(nvmlEventSetCreate, rc = create_set(set));
}

/* nvml.h lists no INVALID_ARGUMENT here: a set that is not live is an unexpected error. */
static nvmlReturn_t free_set(nvmlEventSet_t set)
{
    pthread_mutex_lock(&events_lock);
    struct nvmlEventSet_st **link = &live_sets;
    while (*link && *link != set)
        link = &(*link)->next;
    int found = *link != NULL;
    if (found)
        *link = set->next;
    pthread_mutex_unlock(&events_lock);
    if (!found)
        return NVML_ERROR_UNKNOWN;
    free(set);
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlEventSetFree(nvmlEventSet_t set)
{
    GLOBAL_CALL(nvmlEventSetFree, rc = free_set(set));
}

static unsigned long long supported_events(const gpu_t *gpu)
{
    const health_t *health = &gpu->health;
    return health->present & (1u << H_EVENT_TYPES) ? health->event_types : DEFAULT_EVENT_TYPES;
}

nvmlReturn_t nvmlDeviceGetSupportedEventTypes(nvmlDevice_t device,
                                              unsigned long long *event_types)
{
    DEVICE_CALL(nvmlDeviceGetSupportedEventTypes, device, {
        if (!event_types)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            *event_types = supported_events(gpu);
    });
}

/* As nvml.h says: an unsupported type registers none of the requested types. */
static nvmlReturn_t register_events(long index, const gpu_t *gpu, unsigned long long types,
                                    nvmlEventSet_t set)
{
    if (!set || (types & ~(unsigned long long)nvmlEventTypeAll))
        return NVML_ERROR_INVALID_ARGUMENT;
    if (types & ~supported_events(gpu))
        return NVML_ERROR_NOT_SUPPORTED;
    pthread_mutex_lock(&events_lock);
    int live = is_live_locked(set);
    if (live)
        set->registered[index] |= types;
    pthread_mutex_unlock(&events_lock);
    return live ? NVML_SUCCESS : NVML_ERROR_INVALID_ARGUMENT;
}

nvmlReturn_t nvmlDeviceRegisterEvents(nvmlDevice_t device, unsigned long long event_types,
                                      nvmlEventSet_t set)
{
    DEVICE_CALL(nvmlDeviceRegisterEvents, device,
                rc = register_events(handle_index(device), gpu, event_types, set));
}

static int was_delivered_locked(unsigned int gpu, const xid_t *xid)
{
    for (size_t i = 0; i < n_delivered; i++)
        if (delivered[i].gpu == gpu && delivered[i].id == xid->id &&
            delivered[i].code == xid->code)
            return 1;
    return 0;
}

static int record_delivery_locked(unsigned int gpu, const xid_t *xid)
{
    if (n_delivered == cap_delivered) {
        size_t capacity = cap_delivered ? cap_delivered * 2 : 64;
        delivered_t *grown = realloc(delivered, capacity * sizeof *grown);
        if (!grown)
            return -1;
        delivered = grown;
        cap_delivered = capacity;
    }
    delivered[n_delivered++] = (delivered_t){gpu, xid->id, xid->code};
    return 0;
}

/*
 * The first XID not yet delivered, in GPU then file order, on a GPU the set is registered on
 * for XIDs; NVML_ERROR_TIMEOUT when there is none. A lost GPU's XIDs are delivered too: the
 * driver records an XID (79, fallen off the bus, is the usual one) as the GPU goes.
 */
static nvmlReturn_t take_xid(const state_t *state, nvmlEventSet_t set, nvmlEventData_t *data)
{
    nvmlReturn_t rc = NVML_ERROR_TIMEOUT;
    pthread_mutex_lock(&events_lock);
    if (!is_live_locked(set))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; rc == NVML_ERROR_TIMEOUT && i < state->n_gpus; i++) {
        if (!(set->registered[i] & nvmlEventTypeXidCriticalError))
            continue;
        const health_t *health = &state->gpus[i].health;
        for (unsigned int k = 0; k < health->n_xids; k++) {
            const xid_t *xid = &health->xids[k];
            if (was_delivered_locked(i, xid))
                continue;
            if (record_delivery_locked(i, xid) != 0) {
                rc = NVML_ERROR_MEMORY;
                break;
            }
            data->device = gpu_handle(i);
            data->eventType = nvmlEventTypeXidCriticalError;
            data->eventData = xid->code;
            data->gpuInstanceId = NO_INSTANCE;
            data->computeInstanceId = NO_INSTANCE;
            rc = NVML_SUCCESS;
            break;
        }
    }
    pthread_mutex_unlock(&events_lock);
    return rc;
}

/*
 * Polls for the file every WAIT_POLL_NS without holding any lock between looks, so an XID a
 * reload adds mid-wait is seen within a poll, and other threads' calls are never held up.
 */
static nvmlReturn_t event_wait(enum entry_point ep, nvmlEventSet_t set, nvmlEventData_t *data,
                               unsigned int timeout_ms)
{
    const gpu_t *gpu = NULL;
    nvmlReturn_t rc = leave(enter(ep, NO_GPU, NVML_SUCCESS, &gpu));
    if (rc != NVML_SUCCESS)
        return rc;
    if (!set || !data)
        return NVML_ERROR_INVALID_ARGUMENT;
    long long deadline = monotonic_ns() + (long long)timeout_ms * 1000000LL;
    for (;;) {
        const state_t *state = read_state();
        rc = state ? take_xid(state, set, data) : NVML_ERROR_UNINITIALIZED;
        leave(rc);
        if (rc != NVML_ERROR_TIMEOUT)
            return rc;
        long long left = deadline - monotonic_ns();
        if (left <= 0)
            return NVML_ERROR_TIMEOUT;
        sleep_ns(left < WAIT_POLL_NS ? left : WAIT_POLL_NS);
    }
}

nvmlReturn_t nvmlEventSetWait_v2(nvmlEventSet_t set, nvmlEventData_t *data,
                                 unsigned int timeout_ms)
{
    return event_wait(EP_nvmlEventSetWait_v2, set, data, timeout_ms);
}

/* The unversioned symbol the real library still exports; same behaviour. */
nvmlReturn_t nvmlEventSetWait(nvmlEventSet_t set, nvmlEventData_t *data, unsigned int timeout_ms)
{
    return event_wait(EP_nvmlEventSetWait, set, data, timeout_ms);
}

/* ---------------------------------------------------------------- memory repair */

static int has_health(const gpu_t *gpu, enum health_key key)
{
    return (gpu->health.present >> key) & 1u;
}

nvmlReturn_t nvmlDeviceGetRemappedRows(nvmlDevice_t device, unsigned int *corr_rows,
                                       unsigned int *unc_rows, unsigned int *is_pending,
                                       unsigned int *failure_occurred)
{
    DEVICE_CALL(nvmlDeviceGetRemappedRows, device, {
        const health_t *health = &gpu->health;
        if (!corr_rows || !unc_rows || !is_pending || !failure_occurred)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!has_health(gpu, H_REMAPPED_ROWS))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            *corr_rows = health->remapped_corr;
            *unc_rows = health->remapped_unc;
            *is_pending = health->remapped_pending;
            *failure_occurred = health->remapped_failure;
        }
    });
}

/* Page i of a cause: a distinct, page-aligned hardware address, retired at a fixed time. */
static unsigned long long page_address(unsigned int cause, unsigned int i)
{
    return ((unsigned long long)(cause + 1) << 32) + (unsigned long long)i * 0x1000ull;
}

#define RETIRED_AT 1700000000ull /* seconds since 1970 */

/* The count=0 probe gets INSUFFICIENT_SIZE and the count, as nvml.h documents. */
static nvmlReturn_t list_retired(const gpu_t *gpu, nvmlPageRetirementCause_t cause,
                                 unsigned int *count, unsigned long long *addresses,
                                 unsigned long long *timestamps, int with_times)
{
    if (!count || (unsigned int)cause >= NVML_PAGE_RETIREMENT_CAUSE_COUNT)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!has_health(gpu, H_RETIRED_PAGES))
        return NVML_ERROR_NOT_SUPPORTED;
    unsigned int n = gpu->health.retired[cause];
    if (n > *count) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    if (*count > 0 && (!addresses || (with_times && !timestamps)))
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < n; i++) {
        addresses[i] = page_address(cause, i);
        if (with_times)
            timestamps[i] = RETIRED_AT + i;
    }
    *count = n;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetRetiredPages(nvmlDevice_t device, nvmlPageRetirementCause_t cause,
                                       unsigned int *page_count, unsigned long long *addresses)
{
    DEVICE_CALL(nvmlDeviceGetRetiredPages, device,
                rc = list_retired(gpu, cause, page_count, addresses, NULL, 0));
}

nvmlReturn_t nvmlDeviceGetRetiredPages_v2(nvmlDevice_t device, nvmlPageRetirementCause_t cause,
                                          unsigned int *page_count,
                                          unsigned long long *addresses,
                                          unsigned long long *timestamps)
{
    DEVICE_CALL(nvmlDeviceGetRetiredPages_v2, device,
                rc = list_retired(gpu, cause, page_count, addresses, timestamps, 1));
}

nvmlReturn_t nvmlDeviceGetRetiredPagesPendingStatus(nvmlDevice_t device,
                                                    nvmlEnableState_t *is_pending)
{
    DEVICE_CALL(nvmlDeviceGetRetiredPagesPendingStatus, device, {
        if (!is_pending)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!has_health(gpu, H_RETIRED_PAGES))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            *is_pending = gpu->health.retired_pending ? NVML_FEATURE_ENABLED
                                                      : NVML_FEATURE_DISABLED;
    });
}

/* ---------------------------------------------------------------- PCIe */

nvmlReturn_t nvmlDeviceGetPcieReplayCounter(nvmlDevice_t device, unsigned int *value)
{
    DEVICE_CALL(nvmlDeviceGetPcieReplayCounter, device,
                rc = put_uint(gpu, F_PCIE_REPLAY, value));
}

static nvmlReturn_t put_link(const gpu_t *gpu, const unsigned int *field, unsigned int *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!has_health(gpu, H_PCIE_LINK))
        return NVML_ERROR_NOT_SUPPORTED;
    *out = *field;
    return NVML_SUCCESS;
}

#define PCIE_LINK_GETTERS(X)                                     \
    X(nvmlDeviceGetCurrPcieLinkGeneration, pcie_gen)             \
    X(nvmlDeviceGetMaxPcieLinkGeneration, pcie_max_gen)          \
    X(nvmlDeviceGetCurrPcieLinkWidth, pcie_width)                \
    X(nvmlDeviceGetMaxPcieLinkWidth, pcie_max_width)

#define DEFINE_PCIE_LINK_GETTER(name, member)                                      \
    nvmlReturn_t name(nvmlDevice_t device, unsigned int *value)                    \
    {                                                                              \
        DEVICE_CALL(name, device, rc = put_link(gpu, &gpu->health.member, value)); \
    }
PCIE_LINK_GETTERS(DEFINE_PCIE_LINK_GETTER)

nvmlReturn_t nvmlDeviceGetPcieThroughput(nvmlDevice_t device, nvmlPcieUtilCounter_t counter,
                                         unsigned int *value)
{
    DEVICE_CALL(nvmlDeviceGetPcieThroughput, device, {
        const health_t *health = &gpu->health;
        if (!value || (counter != NVML_PCIE_UTIL_TX_BYTES && counter != NVML_PCIE_UTIL_RX_BYTES))
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!has_health(gpu, H_PCIE_THROUGHPUT))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            *value = counter == NVML_PCIE_UTIL_TX_BYTES ? health->pcie_tx_kbps
                                                        : health->pcie_rx_kbps;
    });
}

/* ---------------------------------------------------------------- NVLink */

nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                      nvmlEnableState_t *is_active)
{
    DEVICE_CALL(nvmlDeviceGetNvLinkState, device, {
        if (!is_active)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!has(gpu, F_NVLINK_LINKS))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else if (link >= gpu->num[F_NVLINK_LINKS])
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            *is_active = gpu->health.nvlink[link].active ? NVML_FEATURE_ENABLED
                                                         : NVML_FEATURE_DISABLED;
    });
}

/* ---------------------------------------------------------------- field values */

enum nvlink_counter { CRC_FLIT, CRC_DATA, REPLAY, RECOVERY, CRC_ANY };

static unsigned long long nvlink_count(const nvlink_t *link, enum nvlink_counter counter)
{
    switch (counter) {
    case CRC_FLIT:
        return link->crc_flit;
    case CRC_DATA:
        return link->crc_data;
    case REPLAY:
        return link->replay;
    case RECOVERY:
        return link->recovery;
    default:
        return link->crc_flit + link->crc_data;
    }
}

/* The per-link field ids: _L0.._L5, then _L6.._L11 further on, and _TOTAL after _L5. */
static const struct {
    enum nvlink_counter counter;
    unsigned int l0, l6, total;
} NVLINK_FIELDS[] = {
#define NVLINK_FIELD(counter, name)                                                \
    {counter, NVML_FI_DEV_NVLINK_##name##_ERROR_COUNT_L0,                          \
     NVML_FI_DEV_NVLINK_##name##_ERROR_COUNT_L6, NVML_FI_DEV_NVLINK_##name##_ERROR_COUNT_TOTAL}
    NVLINK_FIELD(CRC_FLIT, CRC_FLIT),
    NVLINK_FIELD(CRC_DATA, CRC_DATA),
    NVLINK_FIELD(REPLAY, REPLAY),
    NVLINK_FIELD(RECOVERY, RECOVERY),
#undef NVLINK_FIELD
};

#define ALL_LINKS (-1)

/* Which NVLink counter and link a field id asks for; 0 when it is not an NVLink counter. */
static int nvlink_field(unsigned int id, unsigned int scope, enum nvlink_counter *counter,
                        long *link)
{
    for (size_t i = 0; i < sizeof NVLINK_FIELDS / sizeof NVLINK_FIELDS[0]; i++) {
        *counter = NVLINK_FIELDS[i].counter;
        if (id >= NVLINK_FIELDS[i].l0 && id < NVLINK_FIELDS[i].l0 + 6)
            *link = id - NVLINK_FIELDS[i].l0;
        else if (id >= NVLINK_FIELDS[i].l6 && id < NVLINK_FIELDS[i].l6 + 6)
            *link = 6 + (id - NVLINK_FIELDS[i].l6);
        else if (id == NVLINK_FIELDS[i].total)
            *link = ALL_LINKS;
        else
            continue;
        return 1;
    }
    /* The scopeId form: the link is the field's scopeId. */
    *link = scope;
    switch (id) {
    case NVML_FI_DEV_NVLINK_ERROR_DL_REPLAY:
        *counter = REPLAY;
        return 1;
    case NVML_FI_DEV_NVLINK_ERROR_DL_RECOVERY:
        *counter = RECOVERY;
        return 1;
    case NVML_FI_DEV_NVLINK_ERROR_DL_CRC:
        *counter = CRC_ANY;
        return 1;
    default:
        return 0;
    }
}

static nvmlReturn_t nvlink_value(const gpu_t *gpu, enum nvlink_counter counter, long link,
                                 unsigned long long *out)
{
    if (!has(gpu, F_NVLINK_LINKS))
        return NVML_ERROR_NOT_SUPPORTED;
    unsigned long long links = gpu->num[F_NVLINK_LINKS];
    if (link != ALL_LINKS && (unsigned long long)link >= links)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = 0;
    for (unsigned long long i = 0; i < links; i++)
        if (link == ALL_LINKS || (unsigned long long)link == i)
            *out += nvlink_count(&gpu->health.nvlink[i], counter);
    return NVML_SUCCESS;
}

static void field_uint(nvmlFieldValue_t *value, int supported, unsigned int number)
{
    value->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
    value->nvmlReturn = supported ? NVML_SUCCESS : NVML_ERROR_NOT_SUPPORTED;
    value->value.uiVal = supported ? number : 0;
}

/* One field: its own nvmlReturn, so an unsupported field leaves the others alone. */
static void field_value(const gpu_t *gpu, nvmlFieldValue_t *value)
{
    const health_t *health = &gpu->health;
    int retired = has_health(gpu, H_RETIRED_PAGES);
    enum nvlink_counter counter;
    long link;
    memset(&value->value, 0, sizeof value->value);
    switch (value->fieldId) {
    case NVML_FI_DEV_NVLINK_LINK_COUNT:
        field_uint(value, has(gpu, F_NVLINK_LINKS), (unsigned int)gpu->num[F_NVLINK_LINKS]);
        return;
    case NVML_FI_DEV_PCIE_REPLAY_COUNTER:
        field_uint(value, has(gpu, F_PCIE_REPLAY), (unsigned int)gpu->num[F_PCIE_REPLAY]);
        return;
    case NVML_FI_DEV_RETIRED_SBE:
        field_uint(value, retired,
                   health->retired[NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS]);
        return;
    case NVML_FI_DEV_RETIRED_DBE:
        field_uint(value, retired,
                   health->retired[NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR]);
        return;
    case NVML_FI_DEV_RETIRED_PENDING:
        field_uint(value, retired, health->retired_pending);
        return;
    default:
        break;
    }
    if (nvlink_field(value->fieldId, value->scopeId, &counter, &link)) {
        value->valueType = NVML_VALUE_TYPE_UNSIGNED_LONG_LONG;
        value->nvmlReturn = nvlink_value(gpu, counter, link, &value->value.ullVal);
        return;
    }
    value->valueType = NVML_VALUE_TYPE_UNSIGNED_INT;
    value->nvmlReturn =
        value->fieldId >= NVML_FI_MAX ? NVML_ERROR_INVALID_ARGUMENT : NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t nvmlDeviceGetFieldValues(nvmlDevice_t device, int count, nvmlFieldValue_t *values)
{
    DEVICE_CALL(nvmlDeviceGetFieldValues, device, {
        if (!values || count < 0)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else {
            struct timespec now;
            clock_gettime(CLOCK_REALTIME, &now);
            long long micros = (long long)now.tv_sec * 1000000LL + now.tv_nsec / 1000;
            for (int i = 0; i < count; i++) {
                values[i].timestamp = micros;
                values[i].latencyUsec = 0; /* served from memory */
                field_value(gpu, &values[i]);
            }
        }
    });
}
