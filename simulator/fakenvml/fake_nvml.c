/*
 * A stand-in for libnvidia-ml.so.1 that serves GPUs described by a scenario file.
 *
 * The file named by FAKE_NVML_SCENARIO is parsed at init and re-parsed whenever its
 * (device, inode, size, mtime, ctime) signature changes, so tests can change the GPUs while a
 * process keeps NVML open. Every entry point runs the same prologue: init check, reload
 * check, `block` (sleep, with no lock held), then `fail` and `lost`. The file format is in
 * README.md, its parser in scenario_parse.c; MIG and utilization sampling are in
 * fake_nvml_mig.c and fake_nvml_utilization.c, the GPU-health entry points (events, memory
 * repair, PCIe, NVLink, field values) in fake_nvml_health.c, GPU Performance Monitoring in
 * fake_nvml_gpm.c.
 *
 * Locking: `source_lock` guards the init refcount and the file signature (held briefly,
 * never while sleeping); `state_lock` guards the parsed state, read-locked while an entry
 * point copies its answer out. A reload parses outside `state_lock` and swaps the pointer.
 */
#define _GNU_SOURCE
#include "fake_nvml.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define MAX_FILE_BYTES (16u << 20)
/* Kernel file timestamps are coarse (one tick, at most 10 ms); a file modified this recently
 * may be rewritten within the same timestamp, so its content is compared on each call. */
#define RACY_WINDOW_NS 100000000LL

/* ---------------------------------------------------------------- state */

/* GPU handles are addresses in this array, so they outlive any reload. */
static struct nvmlDevice_st slots[MAX_GPUS];

static pthread_mutex_t source_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_rwlock_t state_lock = PTHREAD_RWLOCK_INITIALIZER;
static state_t *current;          /* state_lock */
static unsigned int refcount;     /* source_lock */
static struct {                   /* source_lock */
    char *path;
    struct stat st;               /* signature of the version in `raw` */
    int known, racy, unreadable;
    char *raw;
    size_t raw_len;
} source;

/* ---------------------------------------------------------------- utilities */

static void log_line(const char *format, ...) __attribute__((format(printf, 1, 2)));
static void log_line(const char *format, ...)
{
    char line[512];
    va_list args;
    va_start(args, format);
    vsnprintf(line, sizeof line, format, args);
    va_end(args);
    fprintf(stderr, "fake-nvml: %s\n", line);
    fflush(stderr);
}

static long long timespec_ns(struct timespec t)
{
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static void sleep_seconds(double seconds)
{
    struct timespec left = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    while (nanosleep(&left, &left) != 0 && errno == EINTR)
        ;
}

/* ---------------------------------------------------------------- the scenario file */

/* ctime as well as mtime: copies that preserve mtime (cp -p, rsync -t) still change ctime. */
static int same_signature(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
           a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

/* The whole file and the signature of what was read; -1 with errno on failure. */
static int read_file(const char *path, char **data, size_t *length, struct stat *st)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    errno = 0;
    if (fstat(fd, st) != 0 || !S_ISREG(st->st_mode)) {
        int saved = errno ? errno : EINVAL;
        close(fd);
        errno = saved;
        return -1;
    }
    size_t capacity = (size_t)st->st_size + 1, used = 0;
    char *buffer = malloc(capacity);
    while (buffer) {
        if (used == capacity) { /* grew while we read */
            char *grown = capacity < MAX_FILE_BYTES ? realloc(buffer, capacity * 2) : NULL;
            if (!grown) {
                free(buffer);
                buffer = NULL;
                errno = EFBIG;
                break;
            }
            buffer = grown;
            capacity *= 2;
        }
        ssize_t n = read(fd, buffer + used, capacity - used);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            int saved = errno;
            free(buffer);
            buffer = NULL;
            errno = saved;
            break;
        }
        if (n == 0)
            break;
        used += (size_t)n;
    }
    close(fd);
    if (!buffer)
        return -1;
    if (used > MAX_FILE_BYTES) {
        free(buffer);
        errno = EFBIG;
        return -1;
    }
    *data = buffer;
    *length = used;
    return 0;
}

static void publish(state_t *state)
{
    pthread_rwlock_wrlock(&state_lock);
    state_t *old = current;
    current = state;
    pthread_rwlock_unlock(&state_lock);
    free_state(old);
}

static void forget_source(void)
{
    free(source.raw);
    free(source.path);
    memset(&source, 0, sizeof source);
}

enum load_result { LOADED, UNCHANGED, UNREADABLE, INVALID };

/* Re-read the file if it may have changed; parse and publish it if its bytes did. A file
 * that cannot be read or parsed leaves the last good state in place. source_lock held. */
static enum load_result load_locked(void)
{
    struct stat st;
    if (source.known && !source.racy && stat(source.path, &st) == 0 &&
        same_signature(&st, &source.st))
        return UNCHANGED;
    struct timespec before;
    clock_gettime(CLOCK_REALTIME, &before);
    char *data;
    size_t length;
    if (read_file(source.path, &data, &length, &st) != 0) {
        if (!source.unreadable)
            log_line("cannot read scenario %s: %s", source.path, strerror(errno));
        source.unreadable = 1;
        return UNREADABLE;
    }
    source.unreadable = 0;
    source.st = st;
    source.known = 1;
    source.racy = timespec_ns(st.st_mtim) + RACY_WINDOW_NS > timespec_ns(before);
    if (source.raw && source.raw_len == length && memcmp(source.raw, data, length) == 0) {
        free(data);
        return UNCHANGED;
    }
    free(source.raw);
    source.raw = data;
    source.raw_len = length;
    parse_error_t error = {.path = source.path};
    state_t *state = parse_scenario(data, length, &error);
    if (!state) {
        log_line("%s:%u: %s; keeping the last good scenario", source.path, error.line,
                 error.message);
        return INVALID;
    }
    publish(state);
    return LOADED;
}

static void refresh(void)
{
    pthread_mutex_lock(&source_lock);
    if (refcount > 0)
        load_locked();
    pthread_mutex_unlock(&source_lock);
}

/* ---------------------------------------------------------------- the common prologue */

long handle_index(nvmlDevice_t device)
{
    uintptr_t offset = (uintptr_t)device - (uintptr_t)slots; /* wraps for addresses below */
    if (offset >= sizeof slots)
        return -2; /* not a handle of ours */
    return (long)(offset / sizeof slots[0]);
}

static double block_seconds(enum entry_point ep, long index)
{
    double seconds = 0;
    pthread_rwlock_rdlock(&state_lock);
    if (current) {
        seconds = current->faults.block[ep];
        if (index >= 0 && (unsigned long)index < current->n_gpus)
            seconds += current->gpus[index].faults.block[ep];
    }
    pthread_rwlock_unlock(&state_lock);
    return seconds;
}

/*
 * Every entry point starts here and ends with leave(). On return the state is read-locked
 * (whatever the result), `*gpu` is the GPU at `index` when one was asked for, and the
 * result is the first of: not initialised, global fail, bad handle, GPU gone (`missing`),
 * lost, per-GPU fail.
 */
nvmlReturn_t enter(enum entry_point ep, long index, nvmlReturn_t missing, const gpu_t **gpu)
{
    pthread_mutex_lock(&source_lock);
    int initialised = refcount > 0;
    if (initialised)
        load_locked();
    pthread_mutex_unlock(&source_lock);
    if (initialised) {
        double seconds = block_seconds(ep, index);
        if (seconds > 0) {
            sleep_seconds(seconds);
            refresh(); /* answer with what the file says after the wait */
        }
    }
    pthread_rwlock_rdlock(&state_lock);
    if (!initialised || !current)
        return NVML_ERROR_UNINITIALIZED;
    if (current->faults.fail[ep])
        return (nvmlReturn_t)current->faults.fail[ep];
    if (index == NO_GPU)
        return NVML_SUCCESS;
    if (index < 0)
        return NVML_ERROR_INVALID_ARGUMENT;
    if ((unsigned long)index >= current->n_gpus)
        return missing;
    const gpu_t *found = &current->gpus[index];
    if (found->lost)
        return NVML_ERROR_GPU_IS_LOST;
    if (found->faults.fail[ep])
        return (nvmlReturn_t)found->faults.fail[ep];
    *gpu = found;
    return NVML_SUCCESS;
}

nvmlReturn_t leave(nvmlReturn_t result)
{
    pthread_rwlock_unlock(&state_lock);
    return result;
}

/*
 * The prologue for a device handle. A MIG handle goes through its parent GPU's checks (block,
 * fail, lost); then a MIG device that is gone answers INVALID_ARGUMENT, as a stale handle does
 * on a real GPU, and an entry point that takes no MIG handles (`mig` NULL) NOT_SUPPORTED.
 */
nvmlReturn_t enter_device(enum entry_point ep, nvmlDevice_t device, const gpu_t **gpu,
                          const mig_t **mig)
{
    long index = handle_index(device), mig_index = -1;
    if (index < 0)
        mig_handle_slot(device, &index, &mig_index);
    nvmlReturn_t rc = enter(ep, index, NVML_ERROR_GPU_IS_LOST, gpu);
    if (rc != NVML_SUCCESS || mig_index < 0)
        return rc;
    if (!mig_enabled(*gpu) || (unsigned long)mig_index >= (*gpu)->n_migs)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!mig)
        return NVML_ERROR_NOT_SUPPORTED;
    *mig = &(*gpu)->migs[mig_index];
    return NVML_SUCCESS;
}

nvmlDevice_t gpu_handle(unsigned int index)
{
    return &slots[index];
}

const state_t *read_state(void)
{
    refresh();
    pthread_rwlock_rdlock(&state_lock);
    return current;
}

int has(const gpu_t *gpu, enum field field)
{
    return (gpu->present & FIELD_BIT(field)) != 0;
}

nvmlReturn_t put_text(const char *text, char *out, unsigned int length)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (strlen(text) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    memcpy(out, text, strlen(text) + 1);
    return NVML_SUCCESS;
}

static nvmlReturn_t put_field_text(const gpu_t *gpu, enum field field, char *out,
                                   unsigned int length)
{
    return has(gpu, field) ? put_text(gpu->text[field], out, length)
                           : NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t put_uint(const gpu_t *gpu, enum field field, unsigned int *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!has(gpu, field))
        return NVML_ERROR_NOT_SUPPORTED;
    *out = (unsigned int)gpu->num[field];
    return NVML_SUCCESS;
}

nvmlReturn_t put_ull(const gpu_t *gpu, enum field field, unsigned long long *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!has(gpu, field))
        return NVML_ERROR_NOT_SUPPORTED;
    *out = gpu->num[field];
    return NVML_SUCCESS;
}

/* ---------------------------------------------------------------- init and shutdown */

static nvmlReturn_t open_source_locked(void)
{
    const char *path = getenv("FAKE_NVML_SCENARIO");
    forget_source();
    if (!path || !*path) {
        log_line("FAKE_NVML_SCENARIO is not set: no driver");
        return NVML_ERROR_DRIVER_NOT_LOADED;
    }
    source.path = strdup(path);
    if (!source.path)
        return NVML_ERROR_MEMORY;
    switch (load_locked()) {
    case UNREADABLE:
        return NVML_ERROR_DRIVER_NOT_LOADED;
    case INVALID:
        return NVML_ERROR_UNKNOWN;
    default:
        return NVML_SUCCESS;
    }
}

static void drop_state_locked(void)
{
    publish(NULL);
    forget_source();
}

static nvmlReturn_t init_common(enum entry_point ep)
{
    pthread_mutex_lock(&source_lock);
    nvmlReturn_t rc = refcount == 0 ? open_source_locked() : NVML_SUCCESS;
    if (rc == NVML_SUCCESS && refcount > 0)
        load_locked();
    if (rc != NVML_SUCCESS && refcount == 0)
        drop_state_locked();
    pthread_mutex_unlock(&source_lock);
    if (rc != NVML_SUCCESS)
        return rc;
    double seconds = block_seconds(ep, NO_GPU);
    if (seconds > 0)
        sleep_seconds(seconds);
    pthread_rwlock_rdlock(&state_lock);
    rc = current ? (nvmlReturn_t)current->faults.fail[ep] : NVML_ERROR_UNINITIALIZED;
    pthread_rwlock_unlock(&state_lock);
    pthread_mutex_lock(&source_lock);
    if (rc == NVML_SUCCESS)
        refcount++;
    else if (refcount == 0)
        drop_state_locked();
    pthread_mutex_unlock(&source_lock);
    return rc;
}

nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return init_common(EP_nvmlInitWithFlags);
}

nvmlReturn_t nvmlInit_v2(void)
{
    return init_common(EP_nvmlInit_v2);
}

nvmlReturn_t nvmlInit(void)
{
    return init_common(EP_nvmlInit);
}

nvmlReturn_t nvmlShutdown(void)
{
    const gpu_t *gpu = NULL;
    nvmlReturn_t rc = leave(enter(EP_nvmlShutdown, NO_GPU, NVML_SUCCESS, &gpu));
    if (rc != NVML_SUCCESS)
        return rc;
    pthread_mutex_lock(&source_lock);
    if (refcount == 0)
        rc = NVML_ERROR_UNINITIALIZED;
    else if (--refcount == 0) {
        drop_state_locked();
        /* A real library leaks them; here a program that forgot to free is told so. */
        unsigned int leaked = gpm_release_samples();
        if (leaked > 0)
            log_line("nvmlShutdown: %u GPM samples were never freed (nvmlGpmSampleFree)", leaked);
    }
    pthread_mutex_unlock(&source_lock);
    return rc;
}

const char *nvmlErrorString(nvmlReturn_t result)
{
    static const struct {
        nvmlReturn_t code;
        const char *text;
    } strings[] = {
        {NVML_SUCCESS, "Success"},
        {NVML_ERROR_UNINITIALIZED, "Uninitialized"},
        {NVML_ERROR_INVALID_ARGUMENT, "Invalid Argument"},
        {NVML_ERROR_NOT_SUPPORTED, "Not Supported"},
        {NVML_ERROR_NO_PERMISSION, "Insufficient Permissions"},
        {NVML_ERROR_ALREADY_INITIALIZED, "Already Initialized"},
        {NVML_ERROR_NOT_FOUND, "Not Found"},
        {NVML_ERROR_INSUFFICIENT_SIZE, "Insufficient Size"},
        {NVML_ERROR_INSUFFICIENT_POWER, "Insufficient External Power"},
        {NVML_ERROR_DRIVER_NOT_LOADED, "Driver Not Loaded"},
        {NVML_ERROR_TIMEOUT, "Timeout"},
        {NVML_ERROR_IRQ_ISSUE, "Interrupt request issue"},
        {NVML_ERROR_LIBRARY_NOT_FOUND, "NVML Shared Library Not Found"},
        {NVML_ERROR_FUNCTION_NOT_FOUND, "Function Not Found"},
        {NVML_ERROR_CORRUPTED_INFOROM, "Corrupted infoROM"},
        {NVML_ERROR_GPU_IS_LOST, "GPU is lost"},
        {NVML_ERROR_RESET_REQUIRED, "GPU requires restart"},
        {NVML_ERROR_OPERATING_SYSTEM, "The operating system has blocked the request."},
        {NVML_ERROR_LIB_RM_VERSION_MISMATCH, "RM has detected an NVML/RM version mismatch."},
        {NVML_ERROR_IN_USE, "In use by another client"},
        {NVML_ERROR_MEMORY, "Insufficient Memory"},
        {NVML_ERROR_NO_DATA, "No data"},
        {NVML_ERROR_VGPU_ECC_NOT_SUPPORTED,
         "The requested vgpu operation is not available on target device, because ECC is "
         "enabled"},
        {NVML_ERROR_INSUFFICIENT_RESOURCES, "Insufficient resources"},
        {NVML_ERROR_FREQ_NOT_SUPPORTED, "Frequency not supported"},
        {NVML_ERROR_ARGUMENT_VERSION_MISMATCH, "Argument version mismatch"},
        {NVML_ERROR_DEPRECATED, "Deprecated"},
        {NVML_ERROR_NOT_READY, "Not ready"},
        {NVML_ERROR_GPU_NOT_FOUND, "GPU not found"},
        {NVML_ERROR_INVALID_STATE, "Invalid state"},
        {NVML_ERROR_UNKNOWN, "Unknown Error"},
    };
    for (size_t i = 0; i < sizeof strings / sizeof strings[0]; i++)
        if (strings[i].code == result)
            return strings[i].text;
    return "Unknown Error";
}

/* ---------------------------------------------------------------- system */

static nvmlReturn_t put_global_text(const char *text, unsigned int bit, char *out,
                                    unsigned int length)
{
    return (current->present >> bit) & 1u ? put_text(text, out, length)
                                          : NVML_ERROR_NOT_SUPPORTED;
}

nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    GLOBAL_CALL(nvmlSystemGetDriverVersion,
                rc = put_global_text(current->driver_version, G_DRIVER_VERSION, version,
                                     length));
}

nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    GLOBAL_CALL(nvmlSystemGetNVMLVersion,
                rc = put_global_text(current->nvml_version, G_NVML_VERSION, version, length));
}

static nvmlReturn_t put_cuda_version(int *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!((current->present >> G_CUDA_DRIVER_VERSION) & 1u))
        return NVML_ERROR_NOT_SUPPORTED;
    *out = current->cuda_driver_version;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    GLOBAL_CALL(nvmlSystemGetCudaDriverVersion, rc = put_cuda_version(version));
}

nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    GLOBAL_CALL(nvmlSystemGetCudaDriverVersion_v2, rc = put_cuda_version(version));
}

static nvmlReturn_t put_count(unsigned int *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    *out = current->n_gpus;
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetCount(unsigned int *count)
{
    GLOBAL_CALL(nvmlDeviceGetCount, rc = put_count(count));
}

nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    GLOBAL_CALL(nvmlDeviceGetCount_v2, rc = put_count(count));
}

/* ---------------------------------------------------------------- handles */

static nvmlReturn_t handle_by_index(enum entry_point ep, unsigned int index, nvmlDevice_t *out)
{
    const gpu_t *gpu = NULL;
    long slot = index < MAX_GPUS ? (long)index : -2;
    nvmlReturn_t rc = enter(ep, slot, NVML_ERROR_INVALID_ARGUMENT, &gpu);
    if (rc == NVML_SUCCESS && !out)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *out = &slots[index];
    return leave(rc);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex(unsigned int index, nvmlDevice_t *device)
{
    return handle_by_index(EP_nvmlDeviceGetHandleByIndex, index, device);
}

nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    return handle_by_index(EP_nvmlDeviceGetHandleByIndex_v2, index, device);
}

static nvmlReturn_t handle_by_text(enum field field, const char *wanted, nvmlDevice_t *out)
{
    if (!wanted || !out)
        return NVML_ERROR_INVALID_ARGUMENT;
    for (unsigned int i = 0; i < current->n_gpus; i++) {
        const gpu_t *gpu = &current->gpus[i];
        if (has(gpu, field) && strcasecmp(gpu->text[field], wanted) == 0) {
            if (gpu->lost)
                return NVML_ERROR_GPU_IS_LOST;
            *out = &slots[i];
            return NVML_SUCCESS;
        }
    }
    return field == F_UUID ? mig_handle_by_uuid(current, wanted, out) : NVML_ERROR_NOT_FOUND;
}

nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    GLOBAL_CALL(nvmlDeviceGetHandleByUUID, rc = handle_by_text(F_UUID, uuid, device));
}

nvmlReturn_t nvmlDeviceGetHandleByPciBusId_v2(const char *bus_id, nvmlDevice_t *device)
{
    GLOBAL_CALL(nvmlDeviceGetHandleByPciBusId_v2,
                rc = handle_by_text(F_PCI_BUS_ID, bus_id, device));
}

/* ---------------------------------------------------------------- identity */

nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    ANY_DEVICE_CALL(nvmlDeviceGetName, device,
                    rc = mig ? put_mig_name(gpu, mig, name, length)
                             : put_field_text(gpu, F_NAME, name, length));
}

nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    ANY_DEVICE_CALL(nvmlDeviceGetUUID, device,
                    rc = mig ? put_text(mig->uuid, uuid, length)
                             : put_field_text(gpu, F_UUID, uuid, length));
}

nvmlReturn_t nvmlDeviceGetSerial(nvmlDevice_t device, char *serial, unsigned int length)
{
    DEVICE_CALL(nvmlDeviceGetSerial, device,
                rc = put_field_text(gpu, F_SERIAL, serial, length));
}

nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    ANY_DEVICE_CALL(nvmlDeviceGetIndex, device, {
        if (!index)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else /* a MIG device's index is the one nvmlDeviceGetMigDeviceHandleByIndex takes */
            *index = mig ? (unsigned int)(mig - gpu->migs) : (unsigned int)(device - slots);
    });
}

nvmlReturn_t nvmlDeviceGetMinorNumber(nvmlDevice_t device, unsigned int *minor)
{
    DEVICE_CALL(nvmlDeviceGetMinorNumber, device, rc = put_uint(gpu, F_MINOR_NUMBER, minor));
}

/* domain:bus:device from "00000000:18:00.0"; zeros when the id is not in that form. */
static void pci_numbers(const char *bus_id, unsigned int *domain, unsigned int *bus,
                        unsigned int *dev)
{
    *domain = *bus = *dev = 0;
    if (sscanf(bus_id, "%x:%x:%x", domain, bus, dev) != 3)
        *domain = *bus = *dev = 0;
}

#define PCI_DEVICE_ID 0x233010DEu /* H100 SXM5, vendor NVIDIA */

nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    DEVICE_CALL(nvmlDeviceGetPciInfo_v3, device, {
        if (!pci)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!has(gpu, F_PCI_BUS_ID))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            memset(pci, 0, sizeof *pci);
            pci_numbers(gpu->text[F_PCI_BUS_ID], &pci->domain, &pci->bus, &pci->device);
            put_text(gpu->text[F_PCI_BUS_ID], pci->busId, sizeof pci->busId); /* fits: <= 31 bytes */
            snprintf(pci->busIdLegacy, sizeof pci->busIdLegacy, "%04X:%02X:%02X.0",
                     pci->domain & 0xFFFFu, pci->bus & 0xFFu, pci->device & 0xFFu);
            pci->pciDeviceId = PCI_DEVICE_ID;
            pci->pciSubSystemId = 0x16C110DEu;
        }
    });
}

nvmlReturn_t nvmlDeviceGetPciInfoExt(nvmlDevice_t device, nvmlPciInfoExt_t *pci)
{
    DEVICE_CALL(nvmlDeviceGetPciInfoExt, device, {
        if (!pci)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (pci->version != nvmlPciInfoExt_v1)
            rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        else if (!has(gpu, F_PCI_BUS_ID))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            pci_numbers(gpu->text[F_PCI_BUS_ID], &pci->domain, &pci->bus, &pci->device);
            put_text(gpu->text[F_PCI_BUS_ID], pci->busId, sizeof pci->busId); /* fits: <= 31 bytes */
            pci->pciDeviceId = PCI_DEVICE_ID;
            pci->pciSubSystemId = 0x16C110DEu;
            pci->baseClass = 0x03; /* display controller */
            pci->subClass = 0x02;  /* 3D controller */
        }
    });
}

/* ---------------------------------------------------------------- memory and load */

/* The memory of a GPU, or of one MIG device (which has no reserved memory); 0 if absent. */
static int memory_of(const gpu_t *gpu, const mig_t *mig, unsigned long long *total,
                     unsigned long long *used, unsigned long long *reserved)
{
    if (mig) {
        *total = mig->memory_total, *used = mig->memory_used, *reserved = 0;
        return 1;
    }
    *total = gpu->num[F_MEMORY_TOTAL], *used = gpu->num[F_MEMORY_USED];
    *reserved = gpu->num[F_MEMORY_RESERVED];
    return has(gpu, F_MEMORY_TOTAL) && has(gpu, F_MEMORY_USED);
}

/* v1 counts reserved memory as used, like the real library; v2 reports it apart. */
nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    ANY_DEVICE_CALL(nvmlDeviceGetMemoryInfo, device, {
        unsigned long long total, used, reserved;
        if (!memory)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!memory_of(gpu, mig, &total, &used, &reserved))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            memory->total = total;
            memory->used = used + reserved;
            memory->free = memory->total - memory->used;
        }
    });
}

nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    ANY_DEVICE_CALL(nvmlDeviceGetMemoryInfo_v2, device, {
        unsigned long long total, used, reserved;
        if (!memory)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (memory->version != nvmlMemory_v2)
            rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        else if (!memory_of(gpu, mig, &total, &used, &reserved))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            memory->total = total;
            memory->reserved = reserved;
            memory->used = used;
            memory->free = total - used - reserved;
        }
    });
}

nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates)
{
    DEVICE_CALL(nvmlDeviceGetUtilizationRates, device, {
        if (!rates)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!has(gpu, F_UTILIZATION_GPU) || !has(gpu, F_UTILIZATION_MEMORY) ||
                 mig_enabled(gpu)) /* a real GPU in MIG mode cannot tell either */
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            rates->gpu = (unsigned int)gpu->num[F_UTILIZATION_GPU];
            rates->memory = (unsigned int)gpu->num[F_UTILIZATION_MEMORY];
        }
    });
}

/* ---------------------------------------------------------------- thermals, power, clocks */

nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, nvmlTemperatureSensors_t sensor,
                                      unsigned int *temperature)
{
    DEVICE_CALL(nvmlDeviceGetTemperature, device, {
        if (sensor != NVML_TEMPERATURE_GPU)
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            rc = put_uint(gpu, F_TEMPERATURE, temperature);
    });
}

nvmlReturn_t nvmlDeviceGetTemperatureV(nvmlDevice_t device, nvmlTemperature_t *temperature)
{
    DEVICE_CALL(nvmlDeviceGetTemperatureV, device, {
        if (!temperature)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (temperature->version != nvmlTemperature_v1)
            rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
        else if (temperature->sensorType != NVML_TEMPERATURE_GPU || !has(gpu, F_TEMPERATURE))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            temperature->temperature = (int)gpu->num[F_TEMPERATURE];
    });
}

/* Getters that hand out one field as is. */
#define UINT_GETTERS(X)                                        \
    X(nvmlDeviceGetPowerUsage, F_POWER_USAGE)                  \
    X(nvmlDeviceGetEnforcedPowerLimit, F_POWER_LIMIT)          \
    X(nvmlDeviceGetPowerManagementLimit, F_POWER_LIMIT)        \
    X(nvmlDeviceGetFanSpeed, F_FAN_SPEED)
#define ULL_GETTERS(X)                                         \
    X(nvmlDeviceGetTotalEnergyConsumption, F_ENERGY)           \
    X(nvmlDeviceGetCurrentClocksEventReasons, F_THROTTLE_REASONS) \
    X(nvmlDeviceGetCurrentClocksThrottleReasons, F_THROTTLE_REASONS)

#define DEFINE_UINT_GETTER(name, field)                                \
    nvmlReturn_t name(nvmlDevice_t device, unsigned int *value)        \
    {                                                                  \
        DEVICE_CALL(name, device, rc = put_uint(gpu, field, value));   \
    }
#define DEFINE_ULL_GETTER(name, field)                                 \
    nvmlReturn_t name(nvmlDevice_t device, unsigned long long *value)  \
    {                                                                  \
        DEVICE_CALL(name, device, rc = put_ull(gpu, field, value));    \
    }
UINT_GETTERS(DEFINE_UINT_GETTER)
ULL_GETTERS(DEFINE_ULL_GETTER)

/* One fan per GPU when fan_speed is given. */
nvmlReturn_t nvmlDeviceGetNumFans(nvmlDevice_t device, unsigned int *count)
{
    DEVICE_CALL(nvmlDeviceGetNumFans, device, {
        if (!count)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            *count = has(gpu, F_FAN_SPEED) ? 1 : 0;
    });
}

nvmlReturn_t nvmlDeviceGetFanSpeed_v2(nvmlDevice_t device, unsigned int fan, unsigned int *speed)
{
    DEVICE_CALL(nvmlDeviceGetFanSpeed_v2, device, {
        if (fan != 0 && has(gpu, F_FAN_SPEED))
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            rc = put_uint(gpu, F_FAN_SPEED, speed);
    });
}

nvmlReturn_t nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type,
                                    unsigned int *clock)
{
    DEVICE_CALL(nvmlDeviceGetClockInfo, device, {
        if (type == NVML_CLOCK_SM)
            rc = put_uint(gpu, F_CLOCK_SM, clock);
        else if (type == NVML_CLOCK_MEM)
            rc = put_uint(gpu, F_CLOCK_MEM, clock);
        else
            rc = NVML_ERROR_NOT_SUPPORTED;
    });
}

static nvmlReturn_t put_pstate(const gpu_t *gpu, nvmlPstates_t *out)
{
    if (!out)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!has(gpu, F_PSTATE))
        return NVML_ERROR_NOT_SUPPORTED;
    *out = (nvmlPstates_t)gpu->num[F_PSTATE];
    return NVML_SUCCESS;
}

nvmlReturn_t nvmlDeviceGetPerformanceState(nvmlDevice_t device, nvmlPstates_t *state)
{
    DEVICE_CALL(nvmlDeviceGetPerformanceState, device, rc = put_pstate(gpu, state));
}

nvmlReturn_t nvmlDeviceGetPowerState(nvmlDevice_t device, nvmlPstates_t *state)
{
    DEVICE_CALL(nvmlDeviceGetPowerState, device, rc = put_pstate(gpu, state));
}

/* The aggregate (lifetime) counter is ecc_aggregate_* when given, else the volatile one, so
 * scenarios written before the aggregate keys existed answer as they did. */
static enum field ecc_field(const gpu_t *gpu, nvmlMemoryErrorType_t type,
                            nvmlEccCounterType_t counter)
{
    int corrected = type == NVML_MEMORY_ERROR_TYPE_CORRECTED;
    enum field aggregate = corrected ? F_ECC_AGGREGATE_CORRECTED : F_ECC_AGGREGATE_UNCORRECTED;
    if (counter == NVML_AGGREGATE_ECC && has(gpu, aggregate))
        return aggregate;
    return corrected ? F_ECC_CORRECTED : F_ECC_UNCORRECTED;
}

nvmlReturn_t nvmlDeviceGetTotalEccErrors(nvmlDevice_t device, nvmlMemoryErrorType_t type,
                                         nvmlEccCounterType_t counter,
                                         unsigned long long *count)
{
    DEVICE_CALL(nvmlDeviceGetTotalEccErrors, device, {
        if (counter != NVML_VOLATILE_ECC && counter != NVML_AGGREGATE_ECC)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (type != NVML_MEMORY_ERROR_TYPE_CORRECTED &&
                 type != NVML_MEMORY_ERROR_TYPE_UNCORRECTED)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            rc = put_ull(gpu, ecc_field(gpu, type, counter), count);
    });
}

/* ---------------------------------------------------------------- processes */

static int listed(const process_t *process, enum process_kind kind, const mig_t *mig)
{
    return process->kind == kind &&
           (!mig || (process->gpu_instance == mig->gpu_instance &&
                     process->compute_instance == mig->compute_instance));
}

/* The count=0 probe gets INSUFFICIENT_SIZE and the count, as from the real library. On a MIG
 * handle, the processes of that MIG device; on its parent, all of them. */
static nvmlReturn_t list_processes(const gpu_t *gpu, const mig_t *mig, enum process_kind kind,
                                   unsigned int *count, void *infos, int with_instances)
{
    if (!count)
        return NVML_ERROR_INVALID_ARGUMENT;
    unsigned int n = 0;
    for (size_t i = 0; i < gpu->n_procs; i++)
        n += listed(&gpu->procs[i], kind, mig);
    if (n > *count || (n > 0 && !infos)) {
        *count = n;
        return NVML_ERROR_INSUFFICIENT_SIZE;
    }
    unsigned int out = 0;
    for (size_t i = 0; i < gpu->n_procs; i++) {
        const process_t *process = &gpu->procs[i];
        if (!listed(process, kind, mig))
            continue;
        if (with_instances) {
            nvmlProcessInfo_v2_t *info = (nvmlProcessInfo_v2_t *)infos + out;
            info->pid = process->pid;
            info->usedGpuMemory = process->used_bytes;
            info->gpuInstanceId = process->gpu_instance;
            info->computeInstanceId = process->compute_instance;
        } else {
            nvmlProcessInfo_v1_t *info = (nvmlProcessInfo_v1_t *)infos + out;
            info->pid = process->pid;
            info->usedGpuMemory = process->used_bytes;
        }
        out++;
    }
    *count = n;
    return NVML_SUCCESS;
}

#define PROCESS_LISTS(X)                                                                    \
    X(nvmlDeviceGetComputeRunningProcesses, COMPUTE, nvmlProcessInfo_v1_t, 0)              \
    X(nvmlDeviceGetComputeRunningProcesses_v2, COMPUTE, nvmlProcessInfo_v2_t, 1)           \
    X(nvmlDeviceGetComputeRunningProcesses_v3, COMPUTE, nvmlProcessInfo_t, 1)              \
    X(nvmlDeviceGetGraphicsRunningProcesses, GRAPHICS, nvmlProcessInfo_v1_t, 0)            \
    X(nvmlDeviceGetGraphicsRunningProcesses_v2, GRAPHICS, nvmlProcessInfo_v2_t, 1)         \
    X(nvmlDeviceGetGraphicsRunningProcesses_v3, GRAPHICS, nvmlProcessInfo_t, 1)

#define DEFINE_PROCESS_LIST(name, kind, info_type, with_instances)                          \
    nvmlReturn_t name(nvmlDevice_t device, unsigned int *count, info_type *infos)           \
    {                                                                                       \
        ANY_DEVICE_CALL(name, device,                                                       \
                        rc = list_processes(gpu, mig, kind, count, infos, with_instances)); \
    }
PROCESS_LISTS(DEFINE_PROCESS_LIST)
