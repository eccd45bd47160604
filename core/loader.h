/*
 * loader.h — finds, checks and dlopens plugin shared objects.
 *
 * A plugin named NAME is the file NAME.so in the first directory of the
 * search path that has it. Before any plugin function is called, the
 * descriptor's version fields, signature, kind and mandatory functions are
 * checked; every mismatch is an error naming the file. Each library is
 * loaded from a content-addressed copy (cache_dir/NAME-HASH.so), so a file
 * replaced on disk is picked up by the next reload instead of dlopen handing
 * back the stale handle, and an operator may overwrite the original while
 * kokod runs. Libraries are shared by generations and reference-counted.
 */
#ifndef CORE_LOADER_H
#define CORE_LOADER_H

#include <stddef.h>
#include "koko/plugin.h"

typedef struct plugin_lib {
    char *name;      /* descriptor name == file base name */
    char *path;      /* the file found in the search path */
    char *copy_path; /* the content-addressed copy that was dlopen'ed */
    char hash[17];   /* FNV-1a 64 of the file's bytes, hex */
    void *handle;
    const koko_plugin *desc;
    int refs;
    struct plugin_lib *next;
} plugin_lib;

typedef struct loader loader;

/* CACHE_DIR holds the content-addressed copies; created if missing. */
loader *loader_new(const char *cache_dir);
/* Set the cache folder if none is set yet (CACHE_DIR NULL at loader_new). */
void loader_set_cache_dir(loader *ld, const char *cache_dir);
/* Unloads every library (callers must have released their references). */
void loader_free(loader *ld);

/*
 * Load plugin NAME from SEARCH (NSEARCH directories). Returns a referenced
 * library, or NULL with a one-line reason in ERR (file missing: lists the
 * available names; not a shared object; no descriptor; ABI mismatch; bad
 * descriptor). An unchanged file already loaded is shared, not reloaded.
 */
plugin_lib *loader_get(loader *ld, const char *const *search, size_t nsearch, const char *name,
                       char *err, size_t errlen);
/* Drop a reference; the last one dlcloses and removes the copy. */
void loader_release(loader *ld, plugin_lib *lib);

/* Check a descriptor without calling plugin code. 0 = usable, else reason in ERR. */
int loader_check_descriptor(const koko_plugin *d, const char *file, char *err, size_t errlen);

/* Comma-separated, sorted names of the plugins present in SEARCH. Caller frees. */
char *loader_available(const char *const *search, size_t nsearch);

const char *loader_kind_name(koko_kind k);

#endif
