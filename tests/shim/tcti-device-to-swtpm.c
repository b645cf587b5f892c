/*
 * Test-only shim: a libtss2-tcti-device.so.0 that hands every "device" TCTI to
 * swtpm's TCTI, so crates that hard-code the device TCTI (az-cvm-vtpm opens
 * /dev/tpm0) run unmodified against swtpm. Loaded through LD_LIBRARY_PATH by the
 * tests; never shipped. The swtpm configuration comes from ATTESTD_SHIM_SWTPM
 * ("host=127.0.0.1,port=N"); the device path the caller passes is ignored.
 *
 * Build: gcc -shared -fPIC -o libtss2-tcti-device.so.0 tcti-device-to-swtpm.c -ldl
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <tss2/tss2_tcti.h>

static TSS2_TCTI_INFO shim_info;
static TSS2_TCTI_INIT_FUNC swtpm_init;

static TSS2_RC shim_init(TSS2_TCTI_CONTEXT *ctx, size_t *size, const char *conf)
{
    (void)conf;
    const char *swtpm = getenv("ATTESTD_SHIM_SWTPM");
    if (swtpm == NULL) {
        fprintf(stderr, "tcti-device shim: ATTESTD_SHIM_SWTPM is not set\n");
        return TSS2_TCTI_RC_BAD_VALUE;
    }
    return swtpm_init(ctx, size, swtpm);
}

const TSS2_TCTI_INFO *Tss2_Tcti_Info(void)
{
    void *lib = dlopen("libtss2-tcti-swtpm.so.0", RTLD_NOW | RTLD_LOCAL);
    if (lib == NULL) {
        fprintf(stderr, "tcti-device shim: %s\n", dlerror());
        return NULL;
    }
    TSS2_TCTI_INFO_FUNC info = (TSS2_TCTI_INFO_FUNC)dlsym(lib, TSS2_TCTI_INFO_SYMBOL);
    const TSS2_TCTI_INFO *real = info ? info() : NULL;
    if (real == NULL) {
        fprintf(stderr, "tcti-device shim: libtss2-tcti-swtpm has no TCTI info\n");
        return NULL;
    }
    shim_info = *real;
    swtpm_init = real->init;
    shim_info.name = "device";
    shim_info.description = "device TCTI forwarded to swtpm (attestd tests)";
    shim_info.init = shim_init;
    return &shim_info;
}
