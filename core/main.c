/*
 * main.c — kokod's command line: run in the foreground, or check the
 * configuration (-t) and exit, nginx-style.
 */
#include "kokoconf.h"

#include <getopt.h>
#include <signal.h>
#include <sys/resource.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <event2/thread.h>

#include "config.h"
#include "kokod.h"
#include "log.h"
#include "util.h"

#ifndef SYSCONFDIR
#define SYSCONFDIR "/usr/local/etc"
#endif

static void usage(FILE *out)
{
    fprintf(out,
            "Usage: kokod [-c FILE] [-t] [-P DIR]... [-l LEVEL]\n"
            "Kokó's daemon: answers customers on every channel from each tenant's knowledge base.\n\n"
            "  -c, --config FILE     configuration (default: $KOKO_CONFIG, ./etc/koko.yaml, " SYSCONFDIR "/koko/koko.yaml)\n"
            "  -t, --test            check the configuration and every plugin it names, then exit 0 or 1\n"
            "  -P, --plugin-dir DIR  search DIR for plugins first (repeatable; also $KOKO_PLUGIN_PATH, ':'-separated)\n"
            "  -l, --log-level LVL   error, warn, info (default) or debug\n"
            "      --syslog          log to syslog instead of stderr\n"
            "  -V, --version         print the version and exit\n"
            "  -h, --help            print this help and exit\n\n"
            "Signals: SIGHUP reloads the configuration; SIGTERM and SIGINT stop gracefully.\n"
            "Control: kokoctl status | reload | plugins | tenants | routes | route | chat | stats\n");
}

static const char *default_config(void)
{
    const char *env = getenv("KOKO_CONFIG");
    if (env && *env)
        return env;
    if (access("etc/koko.yaml", R_OK) == 0)
        return "etc/koko.yaml";
    return SYSCONFDIR "/koko/koko.yaml";
}

int main(int argc, char **argv)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'}, {"test", no_argument, NULL, 't'},
        {"plugin-dir", required_argument, NULL, 'P'}, {"log-level", required_argument, NULL, 'l'},
        {"syslog", no_argument, NULL, 's'}, {"version", no_argument, NULL, 'V'},
        {"help", no_argument, NULL, 'h'}, {0},
    };
    const char *config = NULL;
    int test = 0;
    const char *dirs[64];
    size_t ndirs = 0;
    int c;
    while ((c = getopt_long(argc, argv, "c:tP:l:Vh", opts, NULL)) != -1) {
        switch (c) {
        case 'c': config = optarg; break;
        case 't': test = 1; break;
        case 'P':
            if (ndirs < 32)
                dirs[ndirs++] = optarg;
            break;
        case 'l': {
            int lvl = log_level_parse(optarg);
            if (lvl < 0) {
                fprintf(stderr, "kokod: unknown log level \"%s\" (error, warn, info, debug)\n", optarg);
                return 2;
            }
            log_pin_level((koko_log_level)lvl);
            break;
        }
        case 's': log_use_syslog("kokod"); break;
        case 'V': printf("kokod %s (plugin ABI %d.%d, %s)\n", PACKAGE_VERSION, KOKO_ABI_MAJOR, KOKO_ABI_MINOR,
                         KOKO_ABI_SIGNATURE);
            return 0;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "kokod: unexpected argument \"%s\"\n", argv[optind]);
        usage(stderr);
        return 2;
    }
    if (!config)
        config = default_config();
    char *envpath = getenv("KOKO_PLUGIN_PATH") ? xstrdup(getenv("KOKO_PLUGIN_PATH")) : NULL;
    char *save = NULL;
    for (char *p = envpath ? strtok_r(envpath, ":", &save) : NULL; p && ndirs < 64; p = strtok_r(NULL, ":", &save))
        if (*p)
            dirs[ndirs++] = p;

    signal(SIGPIPE, SIG_IGN);
    /* every waiting conversation may hold a socket to its model: use the hard limit */
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    evthread_use_pthreads();
    int rc = 0;
    diag *d = diag_new();

    if (test) {
        char tmpl[] = "/tmp/kokod-check-XXXXXX";
        char *tmp = mkdtemp(tmpl);
        loader *ld = loader_new(tmp ? tmp : NULL);
        core_config *cfg = config_load(config, dirs, ndirs, ld, d);
        if (cfg) {
            printf("%s: configuration ok (%zu tenant(s), %zu plugin(s))\n", config, cfg->n_tenants, cfg->n_libs);
            config_free(cfg, ld);
        } else {
            for (size_t i = 0; i < diag_count(d); i++)
                fprintf(stderr, "%s\n", diag_get(d, i));
            fprintf(stderr, "%s: configuration has %zu error(s)\n", config, diag_count(d));
            rc = 1;
        }
        loader_free(ld);
        if (tmp)
            rmdir(tmp);
    } else {
        kokod *kd = kokod_new(config, dirs, ndirs, d);
        char err[512];
        if (!kd) {
            for (size_t i = 0; i < diag_count(d); i++)
                log_error("config", "%s", diag_get(d, i));
            log_error("core", "not started: %zu configuration error(s) in %s (check with kokod -t -c %s)",
                      diag_count(d), config, config);
            rc = 1;
        } else if (kokod_listen(kd, err, sizeof err) != 0) {
            log_error("core", "not started: %s", err);
            rc = 1;
        } else {
            kokod_run(kd);
            log_info("core", "stopped");
        }
        kokod_free(kd);
    }
    diag_free(d);
    free(envpath);
    libevent_global_shutdown();
    return rc;
}
