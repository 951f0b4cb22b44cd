/*
 * MIG: the `mig_mode` and `mig` scenario keys and the entry points that enumerate MIG devices
 * and answer on their handles. Name, UUID, index, memory and process lists on a MIG handle are
 * answered in fake_nvml.c (ANY_DEVICE_CALL), from the mig_t this file resolves.
 *
 * A MIG handle is the address of mig_slots[gpu][index], fixed like a GPU handle, so it stays
 * valid across reloads; the MIG device is looked up at call time and a handle whose device is
 * gone answers NVML_ERROR_INVALID_ARGUMENT.
 */
#include "fake_nvml.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#define SMS_PER_SLICE 14 /* A100: 1g has 14 SMs, 7g 98 */
#define MAX_SLICES 8

static struct nvmlDevice_st mig_slots[MAX_GPUS][MAX_MIG_DEVICES];

int mig_enabled(const gpu_t *gpu)
{
    return gpu->has_mig_mode && gpu->mig_current == NVML_DEVICE_MIG_ENABLE;
}

/* 1 and the slot of a MIG handle, 0 for anything else. */
int mig_handle_slot(nvmlDevice_t device, long *gpu_index, long *mig_index)
{
    uintptr_t offset = (uintptr_t)device - (uintptr_t)mig_slots; /* wraps for addresses below */
    if (offset >= sizeof mig_slots)
        return 0;
    long slot = (long)(offset / sizeof mig_slots[0][0]);
    *gpu_index = slot / MAX_MIG_DEVICES;
    *mig_index = slot % MAX_MIG_DEVICES;
    return 1;
}

const mig_t *find_mig(const gpu_t *gpu, unsigned int gpu_instance, unsigned int compute_instance)
{
    for (unsigned int i = 0; i < gpu->n_migs; i++)
        if (gpu->migs[i].gpu_instance == gpu_instance &&
            gpu->migs[i].compute_instance == compute_instance)
            return &gpu->migs[i];
    return NULL;
}

/* nvmlDeviceGetHandleByUUID takes MIG UUIDs too; state read-locked. */
nvmlReturn_t mig_handle_by_uuid(const state_t *state, const char *uuid, nvmlDevice_t *out)
{
    for (unsigned int g = 0; g < state->n_gpus; g++) {
        const gpu_t *gpu = &state->gpus[g];
        for (unsigned int m = 0; mig_enabled(gpu) && m < gpu->n_migs; m++) {
            if (strcasecmp(gpu->migs[m].uuid, uuid) != 0)
                continue;
            if (gpu->lost)
                return NVML_ERROR_GPU_IS_LOST;
            *out = &mig_slots[g][m];
            return NVML_SUCCESS;
        }
    }
    return NVML_ERROR_NOT_FOUND;
}

/* As a real driver names them: "NVIDIA A100-SXM4-40GB MIG 1g.5gb". */
nvmlReturn_t put_mig_name(const gpu_t *gpu, const mig_t *mig, char *out, unsigned int length)
{
    if (!has(gpu, F_NAME))
        return NVML_ERROR_NOT_SUPPORTED;
    char name[TEXT_SIZE + MIG_PROFILE_SIZE + 8];
    snprintf(name, sizeof name, "%s MIG %s", gpu->text[F_NAME], mig->profile);
    return put_text(name, out, length);
}

/* ---------------------------------------------------------------- scenario keys */

static int parse_mig_mode(const char *p, const char *end, gpu_t *gpu, parse_error_t *error)
{
    const char *token;
    unsigned long long modes[2];
    if (gpu->has_mig_mode)
        return fail_parse(error, "duplicate key 'mig_mode' in this [gpu] section");
    for (int i = 0; i < 2; i++) {
        size_t length = next_token(&p, end, &token);
        if (parse_number(token, length, 1, &modes[i]) != 0)
            return fail_parse(error, "mig_mode needs the current and the pending mode, each 0 "
                              "or 1, got '%s'", shown(token, length));
    }
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the value of mig_mode");
    gpu->has_mig_mode = 1;
    gpu->mig_current = (unsigned int)modes[0];
    gpu->mig_pending = (unsigned int)modes[1];
    return 0;
}

/* "1g.10gb", "3g.40gb+me", "1c.3g.40gb": compute slices (if fewer), GPU slices, memory. */
static int parse_profile(const char *token, size_t length, mig_t *mig)
{
    if (length == 0 || length >= sizeof mig->profile)
        return -1;
    memcpy(mig->profile, token, length);
    mig->profile[length] = '\0';
    unsigned int first, second;
    int used = 0;
    if (sscanf(mig->profile, "%1uc.%1ug.%n", &first, &second, &used) == 2 && used > 0) {
        mig->compute_slices = first;
        mig->gpu_slices = second;
    } else if (sscanf(mig->profile, "%1ug.%n", &first, &used) == 1 && used > 0) {
        mig->compute_slices = mig->gpu_slices = first;
    } else {
        return -1;
    }
    if (mig->profile[used] == '\0' || mig->gpu_slices == 0 || mig->gpu_slices > MAX_SLICES ||
        mig->compute_slices == 0 || mig->compute_slices > mig->gpu_slices)
        return -1;
    return 0;
}

/* mig <gpu instance> <compute instance> <profile> <uuid> <memory_total> <memory_used> */
static int parse_mig(const char *p, const char *end, gpu_t *gpu, parse_error_t *error)
{
    if (!mig_enabled(gpu))
        return fail_parse(error, "a mig line needs 'mig_mode 1 <pending>' above it");
    if (gpu->n_migs == MAX_MIG_DEVICES)
        return fail_parse(error, "more than %d MIG devices on one GPU", MAX_MIG_DEVICES);
    mig_t mig = {0};
    const char *token;
    unsigned long long gi, ci;
    size_t length = next_token(&p, end, &token);
    if (parse_number(token, length, 0xFFFFFFFEull, &gi) != 0)
        return fail_parse(error, "mig needs a GPU instance id, got '%s'", shown(token, length));
    length = next_token(&p, end, &token);
    if (parse_number(token, length, 0xFFFFFFFEull, &ci) != 0)
        return fail_parse(error, "mig needs a compute instance id after the GPU instance id, "
                          "got '%s'", shown(token, length));
    if (find_mig(gpu, (unsigned int)gi, (unsigned int)ci))
        return fail_parse(error, "a second mig for GPU instance %llu compute instance %llu",
                          gi, ci);
    mig.gpu_instance = (unsigned int)gi;
    mig.compute_instance = (unsigned int)ci;
    length = next_token(&p, end, &token);
    if (parse_profile(token, length, &mig) != 0)
        return fail_parse(error, "mig needs a profile such as 1g.10gb or 1c.2g.20gb (at most "
                          "%d bytes), got '%s'", MIG_PROFILE_SIZE - 1, shown(token, length));
    length = next_token(&p, end, &token);
    if (length == 0 || length >= sizeof mig.uuid)
        return fail_parse(error, "mig needs a uuid of 1 to %d bytes after the profile",
                          TEXT_SIZE - 1);
    memcpy(mig.uuid, token, length);
    length = next_token(&p, end, &token);
    if (parse_number(token, length, ~0ull, &mig.memory_total) != 0)
        return fail_parse(error, "mig needs memory_total in bytes after the uuid, got '%s'",
                          shown(token, length));
    length = next_token(&p, end, &token);
    if (parse_number(token, length, mig.memory_total, &mig.memory_used) != 0)
        return fail_parse(error, "mig needs memory_used in bytes, at most memory_total, got '%s'",
                          shown(token, length));
    if (!at_end(p, end))
        return fail_parse(error, "unexpected text after the mig device");
    gpu->migs[gpu->n_migs++] = mig;
    return 0;
}

int parse_mig_line(const char *key, size_t key_length, const char *value, const char *end,
                   gpu_t *gpu, parse_error_t *error)
{
    int rc;
    if (token_is(key, key_length, "mig_mode"))
        rc = parse_mig_mode(value, end, gpu, error);
    else if (token_is(key, key_length, "mig"))
        rc = parse_mig(value, end, gpu, error);
    else
        return 0;
    return rc == 0 ? 1 : -1;
}

int check_mig(const gpu_t *gpu, unsigned int index, parse_error_t *error)
{
    for (unsigned int i = 0; i < gpu->n_migs; i++) {
        size_t length = strlen(gpu->text[F_NAME]) + strlen(" MIG ") + strlen(gpu->migs[i].profile);
        if (has(gpu, F_NAME) && length > TEXT_SIZE - 1) {
            error->line = gpu->first_line;
            return fail_parse(error, "GPU %u: the name of MIG device %u ('<name> MIG %s') "
                              "would be %zu bytes, more than %d", index, i, gpu->migs[i].profile,
                              length, TEXT_SIZE - 1);
        }
    }
    for (size_t i = 0; mig_enabled(gpu) && i < gpu->n_procs; i++) {
        if (gpu->procs[i].gpu_instance == NO_INSTANCE) {
            error->line = gpu->first_line;
            return fail_parse(error, "GPU %u is in MIG mode: process %u needs its GPU instance "
                              "and compute instance ids", index, gpu->procs[i].pid);
        }
    }
    return 0;
}

/* ---------------------------------------------------------------- entry points */

nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current_mode,
                                  unsigned int *pending_mode)
{
    DEVICE_CALL(nvmlDeviceGetMigMode, device, {
        if (!current_mode || !pending_mode)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!gpu->has_mig_mode) /* a GPU without MIG, such as a pre-Ampere one */
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            *current_mode = gpu->mig_current;
            *pending_mode = gpu->mig_pending;
        }
    });
}

/* Zero when MIG is not enabled, as the header documents. */
nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    DEVICE_CALL(nvmlDeviceGetMaxMigDeviceCount, device, {
        if (!count)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            *count = mig_enabled(gpu) ? MAX_MIG_DEVICES : 0;
    });
}

nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                 nvmlDevice_t *mig_device)
{
    DEVICE_CALL(nvmlDeviceGetMigDeviceHandleByIndex, device, {
        if (!mig_device || index >= MAX_MIG_DEVICES)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!mig_enabled(gpu))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else if (index >= gpu->n_migs)
            rc = NVML_ERROR_NOT_FOUND;
        else
            *mig_device = &mig_slots[handle_index(device)][index];
    });
}

nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig_device)
{
    ANY_DEVICE_CALL(nvmlDeviceIsMigDeviceHandle, device, {
        if (!is_mig_device)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else
            *is_mig_device = mig != NULL;
    });
}

/* The queries below are for MIG handles only: on a GPU handle they answer NOT_SUPPORTED. */

nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig_device,
                                                          nvmlDevice_t *device)
{
    ANY_DEVICE_CALL(nvmlDeviceGetDeviceHandleFromMigDeviceHandle, mig_device, {
        long gpu_index, mig_index;
        if (!device)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!mig || !mig_handle_slot(mig_device, &gpu_index, &mig_index))
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            *device = gpu_handle((unsigned int)gpu_index);
    });
}

nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    ANY_DEVICE_CALL(nvmlDeviceGetGpuInstanceId, device, {
        if (!id)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!mig)
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            *id = mig->gpu_instance;
    });
}

nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    ANY_DEVICE_CALL(nvmlDeviceGetComputeInstanceId, device, {
        if (!id)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!mig)
            rc = NVML_ERROR_NOT_SUPPORTED;
        else
            *id = mig->compute_instance;
    });
}

/* Engine counts are not in the scenario: SMs follow the compute slices, one copy engine per
 * GPU slice, no shared video engines. */
nvmlReturn_t nvmlDeviceGetAttributes_v2(nvmlDevice_t device, nvmlDeviceAttributes_t *attributes)
{
    ANY_DEVICE_CALL(nvmlDeviceGetAttributes_v2, device, {
        if (!attributes)
            rc = NVML_ERROR_INVALID_ARGUMENT;
        else if (!mig)
            rc = NVML_ERROR_NOT_SUPPORTED;
        else {
            memset(attributes, 0, sizeof *attributes);
            attributes->multiprocessorCount = SMS_PER_SLICE * mig->compute_slices;
            attributes->sharedCopyEngineCount = mig->gpu_slices;
            attributes->gpuInstanceSliceCount = mig->gpu_slices;
            attributes->computeInstanceSliceCount = mig->compute_slices;
            attributes->memorySizeMB = mig->memory_total >> 20;
        }
    });
}
