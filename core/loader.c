/*
 * loader.c — plugin discovery, descriptor checks and dlopen (see loader.h).
 *
 * The checks follow Varnish's VMOD loader: read the version fields the
 * plugin was built with, refuse anything the host cannot honour, and only
 * then hand the descriptor to the rest of the core.
 */
#include "kokoconf.h"

#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "loader.h"
#include "util.h"

struct loader {
    char *cache_dir;
    plugin_lib *libs;
};

const char *loader_kind_name(koko_kind k)
{
    switch (k) {
    case KOKO_KIND_CHANNEL: return "channel";
    case KOKO_KIND_LLM: return "llm";
    case KOKO_KIND_TOOL: return "tool";
    }
    return "unknown";
}

loader *loader_new(const char *cache_dir)
{
    loader *ld = calloc(1, sizeof *ld);
    if (!ld)
        return NULL;
    if (cache_dir)
        ld->cache_dir = xstrdup(cache_dir);
    return ld;
}

void loader_set_cache_dir(loader *ld, const char *cache_dir)
{
    if (!ld->cache_dir)
        ld->cache_dir = xstrdup(cache_dir);
}

static void lib_unload(plugin_lib *lib)
{
    if (lib->handle)
        dlclose(lib->handle);
    if (lib->copy_path)
        unlink(lib->copy_path);
    free(lib->name);
    free(lib->path);
    free(lib->copy_path);
    free(lib);
}

void loader_free(loader *ld)
{
    if (!ld)
        return;
    plugin_lib *next;
    for (plugin_lib *l = ld->libs; l; l = next) {
        next = l->next;
        lib_unload(l);
    }
    free(ld->cache_dir);
    free(ld);
}

static int valid_plugin_name(const char *s)
{
    if (!s || !*s || strlen(s) > 64)
        return 0;
    for (; *s; s++)
        if (!((*s >= 'a' && *s <= 'z') || (*s >= '0' && *s <= '9') || *s == '_' || *s == '-'))
            return 0;
    return 1;
}

/* Minimal sizes: what ABI 1.0 defined. Larger is fine (newer minor). */
#define DESC_MIN_SIZE (offsetof(koko_plugin, ops) + sizeof(void *))

int loader_check_descriptor(const koko_plugin *d, const char *file, char *err, size_t errlen)
{
    if (d->abi_major != KOKO_ABI_MAJOR) {
        snprintf(err, errlen,
                 "%s: plugin ABI %u.%u is not compatible with kokod's ABI %d.%d "
                 "(major versions differ): rebuild the plugin against this kokod's headers",
                 file, d->abi_major, d->abi_minor, KOKO_ABI_MAJOR, KOKO_ABI_MINOR);
        return -1;
    }
    if (d->abi_minor > KOKO_ABI_MINOR) {
        snprintf(err, errlen,
                 "%s: plugin needs ABI %u.%u but kokod provides %d.%d: upgrade kokod or rebuild "
                 "the plugin against these headers",
                 file, d->abi_major, d->abi_minor, KOKO_ABI_MAJOR, KOKO_ABI_MINOR);
        return -1;
    }
    if (d->size < DESC_MIN_SIZE) {
        snprintf(err, errlen, "%s: plugin descriptor is %u bytes, smaller than ABI %d.0's %zu: corrupt or foreign build",
                 file, d->size, KOKO_ABI_MAJOR, (size_t)DESC_MIN_SIZE);
        return -1;
    }
    if (!d->signature || strcmp(d->signature, KOKO_ABI_SIGNATURE) != 0) {
        snprintf(err, errlen, "%s: plugin build signature \"%s\" differs from kokod's \"%s\": rebuild the plugin",
                 file, d->signature ? d->signature : "(none)", KOKO_ABI_SIGNATURE);
        return -1;
    }
    if (d->kind != KOKO_KIND_CHANNEL && d->kind != KOKO_KIND_LLM && d->kind != KOKO_KIND_TOOL) {
        snprintf(err, errlen, "%s: unknown plugin kind %d (expected channel, llm or tool)", file, (int)d->kind);
        return -1;
    }
    if (!valid_plugin_name(d->name)) {
        snprintf(err, errlen, "%s: invalid plugin name (use 1-64 characters of a-z, 0-9, _ and -)", file);
        return -1;
    }
    if (!d->init || !d->destroy) {
        snprintf(err, errlen, "%s: plugin \"%s\" lacks the mandatory %s function", file, d->name,
                 !d->init ? "init" : "destroy");
        return -1;
    }
    if (!d->ops) {
        snprintf(err, errlen, "%s: plugin \"%s\" has no %s ops table", file, d->name, loader_kind_name(d->kind));
        return -1;
    }
    const char *missing = NULL;
    switch (d->kind) {
    case KOKO_KIND_CHANNEL: {
        const koko_channel_ops *o = d->ops;
        if (!KOKO_OPS_HAS(o, koko_channel_ops, deliver) || !o->deliver)
            missing = "deliver";
        break;
    }
    case KOKO_KIND_LLM: {
        const koko_llm_ops *o = d->ops;
        if (!KOKO_OPS_HAS(o, koko_llm_ops, generate) || !o->generate)
            missing = "generate";
        break;
    }
    case KOKO_KIND_TOOL: {
        const koko_tool_ops *o = d->ops;
        if (!KOKO_OPS_HAS(o, koko_tool_ops, declarations) || !o->declarations)
            missing = "declarations";
        else if (!KOKO_OPS_HAS(o, koko_tool_ops, call) || !o->call)
            missing = "call";
        break;
    }
    }
    if (missing) {
        snprintf(err, errlen, "%s: %s plugin \"%s\" lacks the mandatory %s operation", file,
                 loader_kind_name(d->kind), d->name, missing);
        return -1;
    }
    return 0;
}

static int has_so_suffix(const char *n, size_t *stem)
{
    size_t len = strlen(n);
    if (len <= 3 || strcmp(n + len - 3, ".so") != 0)
        return 0;
    *stem = len - 3;
    return 1;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

char *loader_available(const char *const *search, size_t nsearch)
{
    char **names = NULL;
    size_t n = 0, cap = 0;
    for (size_t i = 0; i < nsearch; i++) {
        DIR *dir = opendir(search[i]);
        if (!dir)
            continue;
        struct dirent *de;
        while ((de = readdir(dir))) {
            size_t stem;
            if (!has_so_suffix(de->d_name, &stem))
                continue;
            char *nm = strndup(de->d_name, stem);
            int dup = 0;
            for (size_t j = 0; j < n && nm; j++)
                dup |= strcmp(names[j], nm) == 0;
            if (!nm || dup) {
                free(nm);
                continue;
            }
            if (n == cap) {
                cap = cap ? cap * 2 : 16;
                char **nn = realloc(names, cap * sizeof *names);
                if (!nn) {
                    free(nm);
                    break;
                }
                names = nn;
            }
            names[n++] = nm;
        }
        closedir(dir);
    }
    if (n)
        qsort(names, n, sizeof *names, cmp_str);
    strbuf sb = {0};
    for (size_t i = 0; i < n; i++) {
        sb_printf(&sb, "%s%s", i ? ", " : "", names[i]);
        free(names[i]);
    }
    free(names);
    if (n == 0)
        sb_printf(&sb, "none");
    return sb_take(&sb);
}

/* Read FILE fully, hash it, and write the content-addressed copy. */
static int copy_hashed(const char *cache_dir, const char *file, const char *name, char hash[17],
                       char **copy_path, char *err, size_t errlen)
{
    size_t len;
    char *data = util_read_file(file, 256u << 20, &len, err, errlen);
    if (!data)
        return -1;
    snprintf(hash, 17, "%016llx", (unsigned long long)util_fnv1a64(data, len));
    if (util_mkdir_p(cache_dir, 0700) != 0) {
        snprintf(err, errlen, "cannot create plugin cache directory %s (%s)", cache_dir, strerror(errno));
        free(data);
        return -1;
    }
    char *dst = util_asprintf("%s/%s-%s.so", cache_dir, name, hash);
    char *tmp = util_asprintf("%s.tmp.%ld", dst, (long)getpid());
    int rc = util_write_file(tmp, data, len, 0700, err, errlen);
    free(data);
    if (rc == 0 && rename(tmp, dst) != 0) {
        snprintf(err, errlen, "cannot write %s (%s)", dst, strerror(errno));
        rc = -1;
    }
    if (rc != 0) {
        unlink(tmp);
        free(dst);
    } else {
        *copy_path = dst;
    }
    free(tmp);
    return rc;
}

plugin_lib *loader_get(loader *ld, const char *const *search, size_t nsearch, const char *name,
                       char *err, size_t errlen)
{
    char *file = NULL;
    for (size_t i = 0; i < nsearch && !file; i++) {
        char *cand = util_asprintf("%s/%s.so", search[i], name);
        if (access(cand, F_OK) == 0)
            file = cand;
        else
            free(cand);
    }
    if (!valid_plugin_name(name) || !file) {
        char *avail = loader_available(search, nsearch);
        snprintf(err, errlen, "unknown plugin \"%s\" (available: %s)", name, avail);
        free(avail);
        free(file);
        return NULL;
    }

    char hash[17], *copy = NULL;
    if (!ld->cache_dir) {
        snprintf(err, errlen, "internal error: no plugin cache folder set");
        free(file);
        return NULL;
    }
    if (copy_hashed(ld->cache_dir, file, name, hash, &copy, err, errlen) != 0) {
        free(file);
        return NULL;
    }
    for (plugin_lib *l = ld->libs; l; l = l->next) {
        if (strcmp(l->name, name) == 0 && strcmp(l->hash, hash) == 0) {
            l->refs++;
            free(file);
            free(copy); /* same content: the copy is the one already loaded */
            return l;
        }
    }

    dlerror();
    void *h = dlopen(copy, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *why = dlerror();
        snprintf(err, errlen, "%s: cannot load plugin: %s", file, why ? why : "unknown dlopen error");
        goto fail;
    }
    const koko_plugin *d = dlsym(h, KOKO_PLUGIN_SYMBOL);
    if (!d) {
        snprintf(err, errlen, "%s: no %s symbol: not a kokod plugin (export the descriptor with KOKO_EXPORT)",
                 file, KOKO_PLUGIN_SYMBOL);
        dlclose(h);
        goto fail;
    }
    if (loader_check_descriptor(d, file, err, errlen) != 0) {
        dlclose(h);
        goto fail;
    }
    if (strcmp(d->name, name) != 0) {
        snprintf(err, errlen, "%s: the file declares plugin \"%s\", not \"%s\": rename the file to %s.so",
                 file, d->name, name, d->name);
        dlclose(h);
        goto fail;
    }
    plugin_lib *lib = calloc(1, sizeof *lib);
    if (!lib) {
        snprintf(err, errlen, "out of memory");
        dlclose(h);
        goto fail;
    }
    lib->name = strdup(name);
    lib->path = file;
    lib->copy_path = copy;
    memcpy(lib->hash, hash, sizeof hash);
    lib->handle = h;
    lib->desc = d;
    lib->refs = 1;
    lib->next = ld->libs;
    ld->libs = lib;
    return lib;

fail:
    unlink(copy);
    free(copy);
    free(file);
    return NULL;
}

void loader_release(loader *ld, plugin_lib *lib)
{
    if (!lib || --lib->refs > 0)
        return;
    for (plugin_lib **pp = &ld->libs; *pp; pp = &(*pp)->next) {
        if (*pp == lib) {
            *pp = lib->next;
            break;
        }
    }
    lib_unload(lib);
}
