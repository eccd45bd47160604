/*
 * curlfn.c — see curlfn.h.
 */
#include "kokoconf.h"

#include <dlfcn.h>
#include <stdio.h>

#define CURLFN_NO_MACROS
#include "curlfn.h"

curlfn curl_fn;
static int loaded;

int curlfn_loaded(void) { return loaded; }

int curlfn_load(char *err, size_t errlen)
{
    if (loaded)
        return 0;
    void *h = dlopen("libcurl.so.4", RTLD_NOW | RTLD_GLOBAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, errlen, "cannot load libcurl.so.4 (%s): install the Debian package libcurl4",
                 why ? why : "unknown error");
        return -1;
    }
    static const struct {
        const char *name;
        size_t off;
    } syms[] = {
#define S(f, n) {"curl_" n, offsetof(curlfn, f)}
        S(global_init, "global_init"), S(multi_init, "multi_init"), S(multi_setopt, "multi_setopt"),
        S(multi_add_handle, "multi_add_handle"), S(multi_remove_handle, "multi_remove_handle"),
        S(multi_assign, "multi_assign"), S(multi_socket_action, "multi_socket_action"),
        S(multi_info_read, "multi_info_read"), S(multi_cleanup, "multi_cleanup"),
        S(multi_strerror, "multi_strerror"), S(easy_setopt, "easy_setopt"), S(easy_getinfo, "easy_getinfo"),
        S(easy_cleanup, "easy_cleanup"), S(easy_strerror, "easy_strerror"), S(slist_append, "slist_append"),
        S(slist_free_all, "slist_free_all"),
#undef S
    };
    curlfn fns;
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++) {
        void *p = dlsym(h, syms[i].name);
        if (!p) {
            snprintf(err, errlen, "libcurl.so.4 lacks %s: libcurl too old (need 7.74 or later)", syms[i].name);
            dlclose(h);
            return -1;
        }
        *(void **)((char *)&fns + syms[i].off) = p;
    }
    if (fns.global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
        snprintf(err, errlen, "curl_global_init failed");
        dlclose(h);
        return -1;
    }
    curl_fn = fns;
    loaded = 1; /* the library stays loaded for the life of the process */
    return 0;
}
