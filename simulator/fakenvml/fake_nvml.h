/*
 * The parsed form of a fake NVML scenario file, shared by the parser and the entry points.
 */
#ifndef FAKE_NVML_H
#define FAKE_NVML_H

#define NVML_NO_UNVERSIONED_FUNC_DEFS /* so both nvmlInit and nvmlInit_v2 can be defined */
#include <nvml.h>

#include <stddef.h>

/* Shared between this library's files but not exported: only nvml* symbols are. */
#define INTERNAL __attribute__((visibility("hidden")))

#define MAX_GPUS 64
#define TEXT_SIZE 96 /* NVML_DEVICE_NAME_V2_BUFFER_SIZE, the largest text buffer */
#define MAX_BLOCK_SECONDS 86400.0

/* Every exported entry point, by the symbol name pynvml resolves; `fail` and `block`
 * lines name one of these. */
#define ENTRY_POINTS(X)                                                                    \
    X(nvmlInit) X(nvmlInit_v2) X(nvmlInitWithFlags) X(nvmlShutdown)                        \
    X(nvmlSystemGetDriverVersion) X(nvmlSystemGetNVMLVersion)                              \
    X(nvmlSystemGetCudaDriverVersion) X(nvmlSystemGetCudaDriverVersion_v2)                 \
    X(nvmlDeviceGetCount) X(nvmlDeviceGetCount_v2)                                         \
    X(nvmlDeviceGetHandleByIndex) X(nvmlDeviceGetHandleByIndex_v2)                         \
    X(nvmlDeviceGetHandleByUUID) X(nvmlDeviceGetHandleByPciBusId_v2)                       \
    X(nvmlDeviceGetName) X(nvmlDeviceGetUUID) X(nvmlDeviceGetSerial)                       \
    X(nvmlDeviceGetPciInfo_v3) X(nvmlDeviceGetPciInfoExt)                                  \
    X(nvmlDeviceGetMinorNumber) X(nvmlDeviceGetIndex)                                      \
    X(nvmlDeviceGetMemoryInfo) X(nvmlDeviceGetMemoryInfo_v2)                               \
    X(nvmlDeviceGetUtilizationRates)                                                       \
    X(nvmlDeviceGetTemperature) X(nvmlDeviceGetTemperatureV)                               \
    X(nvmlDeviceGetPowerUsage) X(nvmlDeviceGetEnforcedPowerLimit)                          \
    X(nvmlDeviceGetPowerManagementLimit) X(nvmlDeviceGetTotalEnergyConsumption)            \
    X(nvmlDeviceGetFanSpeed) X(nvmlDeviceGetFanSpeed_v2) X(nvmlDeviceGetNumFans)           \
    X(nvmlDeviceGetClockInfo) X(nvmlDeviceGetPerformanceState) X(nvmlDeviceGetPowerState)  \
    X(nvmlDeviceGetTotalEccErrors)                                                         \
    X(nvmlDeviceGetCurrentClocksEventReasons) X(nvmlDeviceGetCurrentClocksThrottleReasons) \
    X(nvmlDeviceGetComputeRunningProcesses) X(nvmlDeviceGetComputeRunningProcesses_v2)     \
    X(nvmlDeviceGetComputeRunningProcesses_v3)                                             \
    X(nvmlDeviceGetGraphicsRunningProcesses) X(nvmlDeviceGetGraphicsRunningProcesses_v2)   \
    X(nvmlDeviceGetGraphicsRunningProcesses_v3)                                            \
    X(nvmlDeviceGetEncoderUtilization) X(nvmlDeviceGetDecoderUtilization)                  \
    X(nvmlDeviceGetPcieThroughput) X(nvmlDeviceGetProcessUtilization)                      \
    X(nvmlDeviceGetFieldValues)                                                            \
    X(nvmlDeviceGetMigMode) X(nvmlDeviceGetMaxMigDeviceCount)                              \
    X(nvmlDeviceGetMigDeviceHandleByIndex) X(nvmlDeviceIsMigDeviceHandle)                  \
    X(nvmlDeviceGetDeviceHandleFromMigDeviceHandle)                                        \
    X(nvmlDeviceGetGpuInstanceId) X(nvmlDeviceGetComputeInstanceId)                        \
    X(nvmlDeviceGetAttributes_v2)                                                          \
    X(nvmlEventSetCreate) X(nvmlEventSetFree) X(nvmlDeviceGetSupportedEventTypes)          \
    X(nvmlDeviceRegisterEvents) X(nvmlEventSetWait_v2) X(nvmlEventSetWait)                 \
    X(nvmlDeviceGetRemappedRows) X(nvmlDeviceGetRetiredPages)                              \
    X(nvmlDeviceGetRetiredPages_v2) X(nvmlDeviceGetRetiredPagesPendingStatus)              \
    X(nvmlDeviceGetPcieReplayCounter)                                                      \
    X(nvmlDeviceGetCurrPcieLinkGeneration) X(nvmlDeviceGetMaxPcieLinkGeneration)           \
    X(nvmlDeviceGetCurrPcieLinkWidth) X(nvmlDeviceGetMaxPcieLinkWidth)                     \
    X(nvmlDeviceGetNvLinkState)                                                            \
    X(nvmlGpmQueryDeviceSupport) X(nvmlGpmSampleAlloc) X(nvmlGpmSampleFree)                \
    X(nvmlGpmSampleGet) X(nvmlGpmMigSampleGet) X(nvmlGpmMetricsGet)

#define AS_ENUM(name) EP_##name,
enum entry_point { ENTRY_POINTS(AS_ENUM) EP_COUNT };
#undef AS_ENUM
INTERNAL extern const char *const ENTRY_NAMES[EP_COUNT];

enum field {
    F_NAME, F_UUID, F_SERIAL, F_PCI_BUS_ID, /* text fields first */
    F_MINOR_NUMBER, F_MEMORY_TOTAL, F_MEMORY_USED, F_MEMORY_RESERVED,
    F_UTILIZATION_GPU, F_UTILIZATION_MEMORY, F_TEMPERATURE, F_POWER_USAGE, F_POWER_LIMIT,
    F_ENERGY, F_FAN_SPEED, F_CLOCK_SM, F_CLOCK_MEM, F_PSTATE, F_ECC_CORRECTED,
    F_ECC_UNCORRECTED, F_THROTTLE_REASONS,
    F_ENCODER_UTILIZATION, F_DECODER_UTILIZATION,
    F_PCIE_REPLAY, F_ECC_AGGREGATE_CORRECTED, F_ECC_AGGREGATE_UNCORRECTED, F_NVLINK_LINKS,
    F_COUNT
};
_Static_assert(F_COUNT <= 64, "gpu_t.present has one bit per field");
#define FIELD_BIT(field) (1ull << (field))
#define TEXT_FIELDS 4

enum process_kind { COMPUTE, GRAPHICS };

typedef struct {
    enum process_kind kind;
    unsigned int pid;
    unsigned long long used_bytes;
    unsigned int gpu_instance, compute_instance; /* NO_INSTANCE outside MIG */
} process_t;

#define NO_INSTANCE 0xFFFFFFFFu /* gpuInstanceId / computeInstanceId outside MIG */
#define MAX_MIG_DEVICES 7       /* what nvmlDeviceGetMaxMigDeviceCount answers on A100/H100 */
#define MIG_PROFILE_SIZE 32

/* One MIG device (a compute instance inside a GPU instance). */
typedef struct {
    unsigned int gpu_instance, compute_instance;
    unsigned int gpu_slices, compute_slices; /* from the profile: [<c>c.]<g>g.<memory> */
    char profile[MIG_PROFILE_SIZE];
    char uuid[TEXT_SIZE];
    unsigned long long memory_total, memory_used;
} mig_t;

/* One process utilization sample, in percent. */
typedef struct {
    unsigned int pid, sm, memory, encoder, decoder;
} sample_t;

/* Faults keyed by entry point; fail 0 means "answer normally". */
typedef struct {
    int fail[EP_COUNT];
    double block[EP_COUNT];
} faults_t;

/* GPU health (health_parse.c, fake_nvml_health.c): the keys that take several values. */
#define MAX_XIDS 64
#define MAX_RETIRED_PAGES 1024 /* per cause */

typedef struct {
    unsigned long long code;
    unsigned int id; /* with the GPU and the code, what makes an injected XID distinct */
} xid_t;

typedef struct {
    unsigned int active;
    unsigned long long crc_flit, crc_data, replay, recovery;
} nvlink_t;

enum health_key {
    H_PCIE_LINK, H_PCIE_THROUGHPUT, H_REMAPPED_ROWS, H_RETIRED_PAGES, H_EVENT_TYPES,
    H_COUNT
};

typedef struct {
    unsigned int present; /* bit per enum health_key; H_RETIRED_PAGES: any retired_pages* key */
    unsigned int pcie_max_gen, pcie_max_width, pcie_gen, pcie_width;
    unsigned int pcie_tx_kbps, pcie_rx_kbps;
    unsigned int remapped_corr, remapped_unc, remapped_pending, remapped_failure;
    unsigned int retired[NVML_PAGE_RETIREMENT_CAUSE_COUNT], retired_pending;
    unsigned int retired_given; /* bit per cause, and bit 31 for retired_pages_pending */
    unsigned long long event_types;
    nvlink_t nvlink[NVML_NVLINK_MAX_LINKS];
    unsigned long long nvlink_given[(NVML_NVLINK_MAX_LINKS + 63) / 64];
    xid_t xids[MAX_XIDS];
    unsigned int n_xids;
} health_t;

/* GPM (gpm_parse.c, fake_nvml_gpm.c): whether the GPU has it, and the figures a pair of samples
 * yields per scope (the whole GPU, or one GPU instance of a GPU in MIG mode). */
enum gpm_mode { GPM_ABSENT, GPM_SUPPORTED, GPM_UNSUPPORTED, GPM_REFUSED };
#define GPM_METRICS 13                 /* the metrics the scenario can give (gpm_parse.c) */
#define MAX_GPM_SCOPES (1 + MAX_MIG_DEVICES)
#define GPM_WHOLE_GPU NO_INSTANCE      /* the scope of the GPU itself */

typedef struct {
    unsigned int gpu_instance;         /* GPM_WHOLE_GPU, or a GPU instance id of a mig line */
    unsigned int given;                /* bit per metric (index into GPM_METRIC_TABLE) */
    unsigned long long rate[GPM_METRICS]; /* milli-percent, or bytes per second */
} gpm_scope_t;

typedef struct {
    enum gpm_mode mode;
    unsigned int n_scopes;
    gpm_scope_t scopes[MAX_GPM_SCOPES];
} gpm_t;

/* One metric the scenario can give: its scenario name, NVML id, and whether it is a percentage
 * (milli-percent in the file's fixed point) or bytes per second. */
typedef struct {
    const char *key;
    unsigned int id;
    int is_percent;
    const char *short_name, *long_name, *unit;
} gpm_metric_t;
INTERNAL extern const gpm_metric_t GPM_METRIC_TABLE[GPM_METRICS];

typedef struct {
    unsigned long long present; /* FIELD_BIT per enum field */
    char text[TEXT_FIELDS][TEXT_SIZE];
    unsigned long long num[F_COUNT];
    int lost;
    unsigned int first_line;
    faults_t faults;
    process_t *procs;
    size_t n_procs, cap_procs;
    /* MIG (fake_nvml_mig.c): mig_mode given, its two values, the MIG devices by index. */
    int has_mig_mode;
    unsigned int mig_current, mig_pending;
    unsigned int n_migs;
    mig_t migs[MAX_MIG_DEVICES];
    /* Process utilization (fake_nvml_utilization.c): supported, when loaded, how often
     * samples are re-stamped (0: only on load), the samples. */
    int has_samples, has_sample_period;
    unsigned long long samples_loaded_us, sample_period_us;
    sample_t *samples;
    size_t n_samples, cap_samples;
    /* GPU health (health_parse.c, fake_nvml_health.c). */
    health_t health;
    /* GPU Performance Monitoring (gpm_parse.c, fake_nvml_gpm.c). */
    gpm_t gpm;
} gpu_t;

enum global_field { G_DRIVER_VERSION, G_NVML_VERSION, G_CUDA_DRIVER_VERSION, G_COUNT };

typedef struct {
    unsigned int present; /* bit per enum global_field */
    char driver_version[80], nvml_version[80];
    int cuda_driver_version;
    faults_t faults;
    unsigned int n_gpus;
    gpu_t gpus[MAX_GPUS];
} state_t;

typedef struct {
    const char *path;
    unsigned int line;
    char message[200];
} parse_error_t;

/* A new state from the file's bytes, or NULL with `error` filled in. */
INTERNAL state_t *parse_scenario(const char *data, size_t length, parse_error_t *error);
INTERNAL void free_state(state_t *state);

/* ---------------------------------------------------------------- shared by the entry points */

/* Handles are addresses in fixed arrays (fake_nvml.c for GPUs, fake_nvml_mig.c for MIG
 * devices), so they outlive any reload. */
struct nvmlDevice_st {
    char unused;
};

/* The common prologue and epilogue of every entry point (fake_nvml.c); see enter() there. */
#define NO_GPU (-1L) /* the index for entry points that take no device */
INTERNAL nvmlReturn_t enter(enum entry_point ep, long index, nvmlReturn_t missing,
                            const gpu_t **gpu);
INTERNAL nvmlReturn_t enter_device(enum entry_point ep, nvmlDevice_t device, const gpu_t **gpu,
                                   const mig_t **mig);
INTERNAL nvmlReturn_t leave(nvmlReturn_t result);
/* The state after a reload check, read-locked (NULL when not initialised); leave() unlocks. */
INTERNAL const state_t *read_state(void);
INTERNAL nvmlDevice_t gpu_handle(unsigned int index);
INTERNAL long handle_index(nvmlDevice_t device); /* of a GPU handle; negative for others */
INTERNAL int has(const gpu_t *gpu, enum field field);
INTERNAL nvmlReturn_t put_text(const char *text, char *out, unsigned int length);
INTERNAL nvmlReturn_t put_uint(const gpu_t *gpu, enum field field, unsigned int *out);
INTERNAL nvmlReturn_t put_ull(const gpu_t *gpu, enum field field, unsigned long long *out);

/* Device entry points that take GPU handles only (a MIG handle gets NOT_SUPPORTED): `gpu` is
 * in scope in the body, which sets `rc`. */
#define DEVICE_CALL(name, device, ...)                                             \
    do {                                                                           \
        const gpu_t *gpu = NULL;                                                   \
        nvmlReturn_t rc = enter_device(EP_##name, device, &gpu, NULL);             \
        if (rc == NVML_SUCCESS) {                                                  \
            __VA_ARGS__;                                                           \
        }                                                                          \
        return leave(rc);                                                          \
    } while (0)

/* Entry points that take GPU and MIG handles alike: `gpu` (the parent of a MIG handle) and
 * `mig` (NULL for a GPU handle) are in scope in the body, which sets `rc`. */
#define ANY_DEVICE_CALL(name, device, ...)                                         \
    do {                                                                           \
        const gpu_t *gpu = NULL;                                                   \
        const mig_t *mig = NULL;                                                   \
        nvmlReturn_t rc = enter_device(EP_##name, device, &gpu, &mig);             \
        if (rc == NVML_SUCCESS) {                                                  \
            __VA_ARGS__;                                                           \
        }                                                                          \
        return leave(rc);                                                          \
    } while (0)

/* Entry points that take no device: the prologue alone, then the body, which sets `rc`. */
#define GLOBAL_CALL(name, ...)                                                   \
    do {                                                                         \
        const gpu_t *gpu = NULL;                                                 \
        nvmlReturn_t rc = enter(EP_##name, NO_GPU, NVML_SUCCESS, &gpu);          \
        (void)gpu;                                                               \
        if (rc == NVML_SUCCESS) {                                                \
            __VA_ARGS__;                                                         \
        }                                                                        \
        return leave(rc);                                                        \
    } while (0)

/* MIG (fake_nvml_mig.c). */
INTERNAL int mig_enabled(const gpu_t *gpu);
INTERNAL int mig_handle_slot(nvmlDevice_t device, long *gpu_index, long *mig_index);
INTERNAL const mig_t *find_mig(const gpu_t *gpu, unsigned int gpu_instance,
                               unsigned int compute_instance);
INTERNAL nvmlReturn_t mig_handle_by_uuid(const state_t *state, const char *uuid,
                                         nvmlDevice_t *out);
INTERNAL nvmlReturn_t put_mig_name(const gpu_t *gpu, const mig_t *mig, char *out,
                                   unsigned int length);

/* Scenario keys parsed outside scenario_parse.c: 1 parsed, 0 not theirs, -1 error. */
INTERNAL int parse_mig_line(const char *key, size_t key_length, const char *value,
                            const char *end, gpu_t *gpu, parse_error_t *error);
INTERNAL int parse_utilization_line(const char *key, size_t key_length, const char *value,
                                    const char *end, gpu_t *gpu, parse_error_t *error);
INTERNAL int parse_health_line(const char *key, size_t key_length, const char *value,
                               const char *end, gpu_t *gpu, parse_error_t *error);
INTERNAL int is_health_key(const char *key, size_t key_length); /* a parse_health_line key */
INTERNAL int parse_gpm_line(const char *key, size_t key_length, const char *value,
                            const char *end, gpu_t *gpu, parse_error_t *error);
INTERNAL int is_gpm_key(const char *key, size_t key_length); /* a parse_gpm_line key */
/* GPM samples still allocated when the last nvmlShutdown comes: freed, and their number. */
INTERNAL unsigned int gpm_release_samples(void);
/* Checks once a [gpu] section is complete; 0, or -1 with `error` filled in. */
INTERNAL int check_mig(const gpu_t *gpu, unsigned int index, parse_error_t *error);

/* Parser helpers from scenario_parse.c. */
INTERNAL int fail_parse(parse_error_t *error, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
INTERNAL size_t next_token(const char **cursor, const char *end, const char **token);
INTERNAL int at_end(const char *p, const char *end);
INTERNAL int token_is(const char *token, size_t length, const char *word);
INTERNAL int parse_number(const char *token, size_t length, unsigned long long max,
                          unsigned long long *value);
INTERNAL const char *shown(const char *token, size_t length);

#endif
