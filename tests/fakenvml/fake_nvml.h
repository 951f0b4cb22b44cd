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
    X(nvmlEventSetCreate) X(nvmlEventSetFree) X(nvmlDeviceGetSupportedEventTypes)          \
    X(nvmlDeviceRegisterEvents) X(nvmlEventSetWait_v2) X(nvmlEventSetWait)                 \
    X(nvmlDeviceGetRemappedRows) X(nvmlDeviceGetRetiredPages)                              \
    X(nvmlDeviceGetRetiredPages_v2) X(nvmlDeviceGetRetiredPagesPendingStatus)              \
    X(nvmlDeviceGetPcieReplayCounter)                                                      \
    X(nvmlDeviceGetCurrPcieLinkGeneration) X(nvmlDeviceGetMaxPcieLinkGeneration)           \
    X(nvmlDeviceGetCurrPcieLinkWidth) X(nvmlDeviceGetMaxPcieLinkWidth)                     \
    X(nvmlDeviceGetNvLinkState)

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
    F_PCIE_REPLAY, F_ECC_AGGREGATE_CORRECTED, F_ECC_AGGREGATE_UNCORRECTED, F_NVLINK_LINKS,
    F_COUNT
};
_Static_assert(F_COUNT <= 32, "gpu_t.present has one bit per field");
#define TEXT_FIELDS 4

enum process_kind { COMPUTE, GRAPHICS };

typedef struct {
    enum process_kind kind;
    unsigned int pid;
    unsigned long long used_bytes;
} process_t;

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

typedef struct {
    unsigned int present; /* bit per enum field */
    char text[TEXT_FIELDS][TEXT_SIZE];
    unsigned long long num[F_COUNT];
    int lost;
    unsigned int first_line;
    faults_t faults;
    process_t *procs;
    size_t n_procs, cap_procs;
    health_t health;
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

/* ---------------------------------------------------------------- shared between the files */

/* The scanner of scenario_parse.c, for the keys parsed elsewhere. */
INTERNAL int fail_parse(parse_error_t *error, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
INTERNAL const char *shown(const char *token, size_t length);
INTERNAL size_t next_token(const char **cursor, const char *end, const char **token);
INTERNAL int at_end(const char *p, const char *end);
INTERNAL int token_is(const char *token, size_t length, const char *word);
INTERNAL int parse_number(const char *token, size_t length, unsigned long long max,
                          unsigned long long *value);

/* health_parse.c: 0 or -1 for a health key, NOT_HEALTH_KEY for any other key. */
#define NOT_HEALTH_KEY 1
INTERNAL int parse_health_line(const char *key, size_t key_length, const char *value,
                               const char *end, gpu_t *gpu, parse_error_t *error);
INTERNAL int is_health_key(const char *key, size_t key_length);

/* The entry point prologue of fake_nvml.c; see enter() there. */
#define NO_GPU (-1L)
INTERNAL long handle_index(nvmlDevice_t device);
INTERNAL nvmlDevice_t device_handle(unsigned int index);
INTERNAL nvmlReturn_t enter(enum entry_point ep, long index, nvmlReturn_t missing,
                            const gpu_t **gpu);
INTERNAL nvmlReturn_t leave(nvmlReturn_t result);
/* The state after a reload check, read-locked (NULL when not initialised); leave() unlocks. */
INTERNAL const state_t *read_state(void);
INTERNAL int has(const gpu_t *gpu, enum field field);
INTERNAL nvmlReturn_t put_uint(const gpu_t *gpu, enum field field, unsigned int *out);
INTERNAL nvmlReturn_t put_ull(const gpu_t *gpu, enum field field, unsigned long long *out);

/* Device entry points: `gpu` is in scope in the body, which sets `rc`. */
#define DEVICE_CALL(name, device, ...)                                                  \
    do {                                                                                \
        const gpu_t *gpu = NULL;                                                        \
        nvmlReturn_t rc = enter(EP_##name, handle_index(device), NVML_ERROR_GPU_IS_LOST, \
                                &gpu);                                                  \
        if (rc == NVML_SUCCESS) {                                                       \
            __VA_ARGS__;                                                                \
        }                                                                               \
        return leave(rc);                                                               \
    } while (0)

#endif
