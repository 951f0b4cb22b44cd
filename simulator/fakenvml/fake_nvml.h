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
    X(nvmlDeviceGetFieldValues)

#define AS_ENUM(name) EP_##name,
enum entry_point { ENTRY_POINTS(AS_ENUM) EP_COUNT };
#undef AS_ENUM
INTERNAL extern const char *const ENTRY_NAMES[EP_COUNT];

enum field {
    F_NAME, F_UUID, F_SERIAL, F_PCI_BUS_ID, /* text fields first */
    F_MINOR_NUMBER, F_MEMORY_TOTAL, F_MEMORY_USED, F_MEMORY_RESERVED,
    F_UTILIZATION_GPU, F_UTILIZATION_MEMORY, F_TEMPERATURE, F_POWER_USAGE, F_POWER_LIMIT,
    F_ENERGY, F_FAN_SPEED, F_CLOCK_SM, F_CLOCK_MEM, F_PSTATE, F_ECC_CORRECTED,
    F_ECC_UNCORRECTED, F_THROTTLE_REASONS, F_COUNT
};
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

typedef struct {
    unsigned int present; /* bit per enum field */
    char text[TEXT_FIELDS][TEXT_SIZE];
    unsigned long long num[F_COUNT];
    int lost;
    unsigned int first_line;
    faults_t faults;
    process_t *procs;
    size_t n_procs, cap_procs;
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

#endif
