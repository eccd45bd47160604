/*
 * curlfn.h — libcurl, loaded on first use.
 *
 * kokod itself only drives transfers that plugins hand it; a daemon whose
 * plugins never make one (the embedded default) should not pay for libcurl
 * and the thirty libraries it pulls in (about 8 MiB of resident memory). The
 * core therefore calls libcurl through this table, filled by curlfn_load()
 * from libcurl.so.4 the first time a transfer is submitted. A plugin that
 * uses libcurl links it itself, so by then it is usually loaded already and
 * dlopen hands back the same library.
 *
 * Include this after <curl/curl.h> in core files that call libcurl: the
 * macros below turn the calls into calls through the table.
 */
#ifndef CORE_CURLFN_H
#define CORE_CURLFN_H

#include <stddef.h>
#include <curl/curl.h>

typedef struct curlfn {
    CURLcode (*global_init)(long flags);
    CURLM *(*multi_init)(void);
    CURLMcode (*multi_setopt)(CURLM *m, CURLMoption opt, ...);
    CURLMcode (*multi_add_handle)(CURLM *m, CURL *e);
    CURLMcode (*multi_remove_handle)(CURLM *m, CURL *e);
    CURLMcode (*multi_assign)(CURLM *m, curl_socket_t s, void *p);
    CURLMcode (*multi_socket_action)(CURLM *m, curl_socket_t s, int ev, int *running);
    CURLMsg *(*multi_info_read)(CURLM *m, int *left);
    CURLMcode (*multi_cleanup)(CURLM *m);
    const char *(*multi_strerror)(CURLMcode c);
    CURLcode (*easy_setopt)(CURL *e, CURLoption opt, ...);
    CURLcode (*easy_getinfo)(CURL *e, CURLINFO info, ...);
    void (*easy_cleanup)(CURL *e);
    const char *(*easy_strerror)(CURLcode c);
    struct curl_slist *(*slist_append)(struct curl_slist *l, const char *s);
    void (*slist_free_all)(struct curl_slist *l);
} curlfn;

extern curlfn curl_fn;

/* Load libcurl and curl_global_init it, once. 0 on success, else a reason in ERR. */
int curlfn_load(char *err, size_t errlen);
/* 1 once curlfn_load has succeeded. */
int curlfn_loaded(void);

#ifndef CURLFN_NO_MACROS
#undef curl_easy_setopt
#undef curl_easy_getinfo
#undef curl_multi_setopt
#define curl_multi_init (*curl_fn.multi_init)
#define curl_multi_setopt (*curl_fn.multi_setopt)
#define curl_multi_add_handle (*curl_fn.multi_add_handle)
#define curl_multi_remove_handle (*curl_fn.multi_remove_handle)
#define curl_multi_assign (*curl_fn.multi_assign)
#define curl_multi_socket_action (*curl_fn.multi_socket_action)
#define curl_multi_info_read (*curl_fn.multi_info_read)
#define curl_multi_cleanup (*curl_fn.multi_cleanup)
#define curl_multi_strerror (*curl_fn.multi_strerror)
#define curl_easy_setopt (*curl_fn.easy_setopt)
#define curl_easy_getinfo (*curl_fn.easy_getinfo)
#define curl_easy_cleanup (*curl_fn.easy_cleanup)
#define curl_easy_strerror (*curl_fn.easy_strerror)
#define curl_slist_append (*curl_fn.slist_append)
#define curl_slist_free_all (*curl_fn.slist_free_all)
#endif

#endif
